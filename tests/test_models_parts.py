"""Unit tests of the MinMo parts the lead owns: projectors, LLM wrapper, voice LM, duplex."""

import torch

from minmo.config import DuplexConfig, LLMConfig, ProjectorConfig, VoiceLMConfig, load_model_config
from minmo.models.duplex import Decision, DuplexPredictor, pool_labels
from minmo.models.llm import build_llm, load_tokenizer
from minmo.models.projector import InputProjector, OutputProjector
from minmo.models.voice_lm import IGNORE, VoiceTokenLM


def test_input_projector_streaming_equals_offline():
    torch.manual_seed(0)
    proj = InputProjector(ProjectorConfig(d_model=32, num_heads=4, ffn_dim=64), in_dim=24, out_dim=16).eval()
    for total in (9, 10):
        x = torch.randn(1, total, 24)
        offline, lens = proj(x, torch.tensor([total]))
        assert offline.shape == (1, (total + 1) // 2, 16) and int(lens[0]) == (total + 1) // 2
        state = proj.init_state(1)
        outs = []
        for chunk in (x[:, :3], x[:, 3:4], x[:, 4:8], x[:, 8:]):
            y, state = proj.step(chunk, state)
            outs.append(y)
        y, state = proj.flush(state)
        outs.append(y)
        torch.testing.assert_close(torch.cat(outs, 1), offline, atol=1e-5, rtol=1e-5)


def test_input_projector_padding_does_not_leak():
    torch.manual_seed(0)
    proj = InputProjector(ProjectorConfig(d_model=32, num_heads=4, ffn_dim=64), in_dim=8, out_dim=8).eval()
    x = torch.randn(2, 12, 8)
    x[1, 7:] = 100.0  # garbage in the padded tail of example 1
    out, lens = proj(x, torch.tensor([12, 7]))
    alone, _ = proj(x[1:, :7], torch.tensor([7]))
    torch.testing.assert_close(out[1, : lens[1]], alone[0], atol=1e-5, rtol=1e-5)


def test_tokenizer_has_chatml_and_speech_tokens():
    tok = load_tokenizer(LLMConfig())
    ids = tok.encode("<|im_start|>user\nhello<|startofspeech|><|endofspeech|><|im_end|>")
    assert ids[0] == tok.im_start_id and tok.sos_speech_id in ids and tok.eos_speech_id in ids
    assert tok.decode(tok.encode("What is five plus two?")) == "What is five plus two?"
    assert len(tok) == load_model_config("tiny").llm.vocab_size


def test_lora_adapters_save_load_roundtrip(tmp_path):
    torch.manual_seed(0)
    llm = build_llm(LLMConfig(), vocab_size=1024).eval()
    base = {k: v.clone() for k, v in llm.state_dict().items()}
    llm.enable_lora()
    lora = llm.lora_parameters()
    assert lora and all("lora_" in n for n in lora)
    for p in lora.values():
        torch.nn.init.normal_(p)
    # the key check needs no tensors (no FSDP gather) and names what peft saves
    assert llm.lora_keys() == set(llm.lora_state_dict()) and len(llm.lora_keys()) == len(lora)
    llm.save_lora(tmp_path / "adapter")
    assert (tmp_path / "adapter" / "adapter_model.safetensors").is_file()
    emb = torch.randn(1, 5, 64)
    before = llm(emb).hidden
    torch.manual_seed(1)
    other = build_llm(LLMConfig(), vocab_size=1024).eval()
    other.load_state_dict(base)
    other.load_lora(tmp_path / "adapter")
    torch.testing.assert_close(other(emb).hidden, before)


def test_voice_lm_sequence_layout_5_15():
    lm = VoiceTokenLM(VoiceLMConfig())
    sem = torch.randn(12, 64)
    speech = torch.arange(40)
    x, t = lm.build_sequence(sem, speech)
    assert x.shape == (12 + 40 + 2, 64) and t.shape == (54,)
    # [SOS] s1..s5 a1..a15 -> s5 predicts a1, a15 predicts FILL
    assert t[0] == IGNORE and t[1:5].eq(IGNORE).all() and t[5] == 0
    assert t[6:20].tolist() == list(range(1, 15)) and t[20] == lm.fill_id
    # second group, then tail: 2 remaining vectors, TASK predicts a31, ..., a40 predicts EOS
    assert t[25] == 15 and t[40] == lm.fill_id
    assert t[41:43].eq(IGNORE).all() and t[43] == 30 and t[-1] == lm.eos_id
    # speech shorter than a full group: everything goes to the tail
    x2, t2 = lm.build_sequence(sem, torch.arange(7))
    assert (t2 != IGNORE).sum() == 8 and t2[-1] == lm.eos_id


def test_voice_lm_streaming_push_follows_schedule():
    torch.manual_seed(0)
    lm = VoiceTokenLM(VoiceLMConfig()).eval()
    state = lm.init_state()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        toks, state = lm.push(torch.randn(5, 64), state, generator=g)
        assert toks == []  # a group is fed only once more text follows it
        toks, state = lm.push(torch.randn(3, 64), state, generator=g)
        assert len(toks) == 15 and all(0 <= t < 6561 for t in toks)
        toks, state = lm.push(torch.randn(0, 64), state, text_done=True, generator=g, max_tail_tokens=20)
        assert 0 <= len(toks) <= 20 and state.finished


def test_voice_lm_cached_step_equals_full_forward():
    torch.manual_seed(0)
    lm = VoiceTokenLM(VoiceLMConfig()).eval()
    x = torch.randn(1, 9, 64)
    with torch.no_grad():
        full = lm.decoder(lm.body(inputs_embeds=x).last_hidden_state[:, -1])
        state = lm.init_state()
        _, state = lm.step(x[:, :4], state)
        last, state = lm.step(x[:, 4:], state)
    torch.testing.assert_close(last, full.float(), atol=1e-5, rtol=1e-5)


def test_duplex_streaming_equals_offline_and_label_pooling():
    torch.manual_seed(0)
    pred = DuplexPredictor(DuplexConfig(), llm_dim=32).eval()
    h = torch.randn(1, 7, 32)
    flags = torch.tensor([[0, 0, 0, 1, 1, 1, 0]])
    offline = pred(h, flags, torch.tensor([7]))
    state = pred.init_state(1)
    outs = []
    for s, e in ((0, 1), (1, 4), (4, 7)):
        y, state = pred.step(h[:, s:e], flags[:, s:e], state)
        outs.append(y)
    torch.testing.assert_close(torch.cat(outs, 1), offline, atol=1e-5, rtol=1e-5)
    grid = torch.tensor([0] * 10 + [1] + [0] * 5 + [3] * 8 + [2] + [3] * 3)
    starts, ends = torch.tensor([-1, 0, 12, 24]), torch.tensor([0, 12, 24, 36])
    assert pool_labels(grid, starts, ends).tolist() == [IGNORE, Decision.RESPOND, Decision.CONTINUE, Decision.STOP]


def test_heads_on_the_llm_read_a_lower_precision_llm_in_their_own_dtype():
    """minmo-small trains with its frozen LLM in bfloat16 and these heads in float32: the
    output projector and the duplex predictor take bf16 hidden states (a dtype error before)."""
    torch.manual_seed(0)
    hidden = torch.randn(2, 5, 32)
    proj = OutputProjector(32, 16)
    got = proj(hidden.bfloat16(), hidden.bfloat16())
    assert got.dtype == torch.float32
    assert torch.allclose(got, proj(hidden, hidden), atol=0.05)
    pred = DuplexPredictor(DuplexConfig(), llm_dim=32).eval()
    speaking, lengths = torch.zeros(2, 5, dtype=torch.long), torch.tensor([5, 3])
    logits = pred(hidden.bfloat16(), speaking, lengths)
    assert logits.dtype == torch.float32
    assert torch.allclose(logits, pred(hidden, speaking, lengths), atol=0.05)
