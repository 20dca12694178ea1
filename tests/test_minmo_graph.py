"""The MinMo training graph on the tiny config: splicing, each loss, and `minmo info`."""

import subprocess
import sys

import torch

from minmo.models.builders import minmo_tiny
from minmo.models.minmo import IGNORE


def _batch(model, with_speech=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    tok = model.tokenizer
    prompt = tok.encode("<|im_start|>user\nTranscribe the speech.<|startofspeech|>")
    rest = tok.encode("<|endofspeech|><|im_end|>\n<|im_start|>assistant\n")
    target = tok.encode("seven plus two is nine") + [tok.im_end_id]
    ids = prompt + rest + target
    labels = [IGNORE] * (len(prompt) + len(rest)) + target
    b = 2
    batch = {
        "input_ids": torch.tensor([ids, ids[:-3] + [tok.pad_id] * 3]),
        "labels": torch.tensor([labels, labels[:-3] + [IGNORE] * 3]),
        "input_lens": torch.tensor([len(ids), len(ids) - 3]),
        "speech_pos": torch.tensor([len(prompt)] * b if with_speech else [-1] * b),
        "feats": torch.randn(b, 40, 560, generator=g),
        "feat_lens": torch.tensor([40, 31]),
        "speech_tokens": torch.randint(0, 6561, (b, 50), generator=g),
        "speech_token_lens": torch.tensor([50, 37]),
        "duplex_labels": torch.randint(0, 4, (b, 240), generator=g),
        "assistant_speaking": (torch.rand(b, 240, generator=g) > 0.5).float(),
        "ids": ["a", "b"],
    }
    return batch


def test_every_loss_runs_and_backpropagates():
    torch.manual_seed(0)
    model = minmo_tiny()
    batch = _batch(model)
    out = model(batch, losses=("text", "speech", "duplex"))
    assert torch.isfinite(out.loss)
    assert {"text_loss", "speech_loss", "duplex_loss", "speech_acc", "duplex_acc"} <= set(out.metrics)
    out.loss.backward()
    groups = model.param_groups()
    for g in ("encoder", "input_projector", "output_projector", "voice_lm", "duplex"):
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in groups[g].values()), g


def test_splice_places_speech_at_speech_pos():
    torch.manual_seed(0)
    model = minmo_tiny().eval()
    batch = _batch(model)
    speech, lens = model.encode_speech(batch["feats"], batch["feat_lens"])
    x = model.splice(batch, speech, lens)
    p = int(batch["speech_pos"][1])
    n = int(lens[1])
    torch.testing.assert_close(x.embeds[1, p:p + n], speech[1, :n])
    assert x.labels[1, p:p + n].eq(IGNORE).all()
    assert int(x.mask[1].sum()) == int(batch["input_lens"][1]) + n
    # text after the speech is shifted by n, unchanged
    assert x.ids[1, p + n] == model.tokenizer.eos_speech_id
    # speech frame count follows the encoder + 2x projector arithmetic: (4 queries + T/6 LFR) / 2
    assert int(lens[0]) == (40 + 4 + 1) // 2


def test_text_only_examples_skip_encoder():
    model = minmo_tiny()
    out = model(_batch(model, with_speech=False), losses=("text",))
    assert torch.isfinite(out.loss)


def test_info_7b_counts_match_paper_without_memory():
    res = subprocess.run([sys.executable, "-m", "minmo.cli.main", "info", "minmo-7b"],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    rows = {}
    for line in res.stdout.splitlines():  # module table first; stage rows reuse some names
        if line.strip():
            rows.setdefault(line.split()[0], line.split())
    assert rows["llm"][1] == "7615616512"  # Qwen2.5-7B-Instruct, exact
    paper = {"encoder": 636e6, "input_projector": 170e6, "output_projector": 6e6,
             "voice_lm": 370e6, "duplex": 18e6}
    for name, ref in paper.items():
        assert abs(int(rows[name][1]) / ref - 1) <= 0.10, (name, rows[name])


def test_duplex_class_weights_weigh_the_rare_decisions():
    """``duplex.class_weights`` is the cross-entropy weight of each decision; the stop frames
    (a few among thousands) count more with a larger weight, and a bad list is refused."""
    import dataclasses

    import pytest

    from minmo.config import load_model_config
    from minmo.models.builders import build_model

    cfg = load_model_config("tiny")
    torch.manual_seed(0)
    plain = build_model(cfg).eval()
    batch = _batch(plain)
    weighted = build_model(dataclasses.replace(
        cfg, duplex=dataclasses.replace(cfg.duplex, class_weights=[1.0, 1.0, 50.0, 1.0]))).eval()
    weighted.load_state_dict(plain.state_dict())
    with torch.no_grad():
        base = plain(batch, losses=("duplex",)).loss
        heavy = weighted(batch, losses=("duplex",)).loss
        only_stop = dict(batch, duplex_labels=torch.where(batch["duplex_labels"] == 2, 2, IGNORE))
        stop_loss = plain(only_stop, losses=("duplex",)).loss
    assert not torch.isclose(base, heavy)
    # weighted mean: the heavier the STOP weight, the nearer the loss is to the STOP frames' own
    assert abs(float(heavy - stop_loss)) < abs(float(base - stop_loss))
    with pytest.raises(ValueError, match="class_weights"):
        build_model(dataclasses.replace(cfg, duplex=dataclasses.replace(cfg.duplex, class_weights=[1.0])))


def test_duplex_loss_sees_the_listening_streams_encoder_regime():
    """With ``encoder.stream_chunk`` the duplex stage encodes block-causally (what the
    listening stream gives the predictor); the other losses keep full-context features."""
    import dataclasses

    from minmo.config import load_model_config
    from minmo.models.builders import build_model

    cfg = load_model_config("tiny")
    assert cfg.encoder.stream_chunk == 2
    torch.manual_seed(0)
    full = build_model(dataclasses.replace(
        cfg, encoder=dataclasses.replace(cfg.encoder, stream_chunk=None))).eval()
    chunked = build_model(cfg).eval()
    chunked.load_state_dict(full.state_dict())
    batch = _batch(full)
    with torch.no_grad():
        assert not torch.isclose(full(batch, losses=("duplex",)).loss,
                                 chunked(batch, losses=("duplex",)).loss)
        torch.testing.assert_close(full(batch, losses=("text",)).loss,
                                   chunked(batch, losses=("text",)).loss)
        streamed, _ = chunked.encode_speech(batch["feats"], batch["feat_lens"], streaming=True)
        enc, enc_lens = chunked.encoder(batch["feats"], batch["feat_lens"], chunk_size=2)
        torch.testing.assert_close(streamed, chunked.input_projector(enc, enc_lens)[0])
