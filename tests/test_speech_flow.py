"""Chunk-aware flow matching: streaming == offline for every mask, lookahead and chunk
semantics, bounded caches, training signal, CosyVoice 2 parameter count."""

import pytest
import torch

from minmo.config import FlowConfig, load_model_config
from minmo.models.flow import ChunkFlowMatching
from minmo.modules.flow_blocks import MASK_MODES, chunk_attention_bias


@pytest.fixture(scope="module")
def flow():
    torch.manual_seed(0)
    return ChunkFlowMatching(FlowConfig(n_timesteps=4)).eval()


def stream(model, tokens, spk, mode, step_tokens=15, prompt_mel=None):
    """Feed ``tokens`` chunk by chunk (with lookahead) and return the concatenated mel."""
    state = model.init_state(tokens.shape[0], spk, mode)
    total, pos, outs = tokens.shape[1], 0, []
    while pos < total:
        end = pos + step_tokens if mode == "full_causal" else model.chunk_end(pos, mode)
        final = end + model.lookahead > total
        end = total if final else end
        cond = None if prompt_mel is None else prompt_mel[:, :, 2 * pos: 2 * end]
        mel, state = model.step(tokens[:, pos:end], state, future=None if final else tokens[:, end:end + 3],
                                final=final, cond=cond)
        outs.append(mel)
        pos = end
    return torch.cat(outs, dim=2), state


@pytest.mark.parametrize("mode", ["full_causal", "chunk", "chunk2"])
def test_streaming_equals_offline(flow, mode):
    torch.manual_seed(1)
    tokens = torch.randint(0, 6561, (2, 50))
    spk = torch.randn(2, 192)
    offline = flow.synthesize(tokens, spk, mask_mode=mode)
    streamed, state = stream(flow, tokens, spk, mode, step_tokens=7)
    assert streamed.shape == offline.shape == (2, 80, 100)
    assert state.num_tokens == 50
    torch.testing.assert_close(streamed, offline, atol=1e-4, rtol=1e-4)


def test_non_causal_streams_as_one_final_step(flow):
    tokens = torch.randint(0, 6561, (1, 20))
    spk = torch.randn(1, 192)
    state = flow.init_state(1, spk, "non_causal")
    with pytest.raises(ValueError, match="non_causal"):
        flow.step(tokens[:, :10], state, future=tokens[:, 10:13])
    mel, _ = flow.step(tokens, state, final=True)
    torch.testing.assert_close(mel, flow.synthesize(tokens, spk, mask_mode="non_causal"), atol=1e-5, rtol=1e-5)


def test_prompt_condition_streams_like_offline(flow):
    torch.manual_seed(2)
    prompt, tokens = torch.randint(0, 6561, (1, 8)), torch.randint(0, 6561, (1, 30))
    prompt_mel = torch.randn(1, 80, 16) - 4
    spk = torch.randn(1, 192)
    offline = flow.synthesize(tokens, spk, prompt_tokens=prompt, prompt_mel=prompt_mel)
    without = flow.synthesize(tokens, spk)
    cond = torch.cat([prompt_mel, torch.zeros(1, 80, 60)], dim=2)
    streamed, _ = stream(flow, torch.cat([prompt, tokens], 1), spk, "chunk", prompt_mel=cond)
    torch.testing.assert_close(streamed[:, :, 16:], offline, atol=1e-4, rtol=1e-4)
    assert (offline - without).abs().max() > 1e-3  # the prompt is actually used
    with pytest.raises(ValueError, match="at least 16 frames for 8 prompt tokens, got 15 frames"):
        flow.synthesize(tokens, spk, prompt_tokens=prompt, prompt_mel=prompt_mel[:, :, :15])


def test_lookahead_and_chunk_boundaries(flow):
    torch.manual_seed(3)
    tokens = torch.randint(0, 6561, (1, 45))
    spk = torch.randn(1, 192)
    base = flow.synthesize(tokens, spk, mask_mode="chunk")
    beyond, inside = tokens.clone(), tokens.clone()
    beyond[0, 15:] = (beyond[0, 15:] + 1) % 6561  # after the first chunk's lookahead
    inside[0, 13] = (inside[0, 13] + 1) % 6561  # inside the lookahead of chunk 0 (tokens 0..11)
    # first chunk = 12 tokens = 24 frames: unaffected beyond lookahead, affected within it
    assert torch.equal(flow.synthesize(beyond, spk, mask_mode="chunk")[:, :, :24], base[:, :, :24])
    assert (flow.synthesize(inside, spk, mask_mode="chunk")[:, :, :24] - base[:, :, :24]).abs().max() > 1e-4
    # the non-causal mask lets the future in everywhere
    nc = flow.synthesize(tokens, spk, mask_mode="non_causal")
    assert (flow.synthesize(beyond, spk, mask_mode="non_causal")[:, :, :24] - nc[:, :, :24]).abs().max() > 1e-4


def test_mask_shapes():
    # chunk of 15 tokens with lookahead offset 3: token chunks [0, 12), [12, 27), ...
    bias = chunk_attention_bias(0, 30, 0, 30, chunk=15, offset=3, ratio=1)
    allowed = bias == 0
    assert allowed[0, :12].all() and not allowed[0, 12:].any()
    assert allowed[12, :27].all() and not allowed[12, 27:].any()
    assert allowed[11, :12].all() and not allowed[11, 12]
    causal = chunk_attention_bias(0, 6, 0, 6, chunk=1, offset=3, ratio=2) == 0  # frames, 2 per token
    assert causal[0, 1] and not causal[1, 2] and causal[3, 2]
    left = chunk_attention_bias(0, 60, 0, 60, chunk=15, offset=3, ratio=1, left_chunks=1) == 0
    assert not left[27, 11] and left[27, 12] and left[27, 41]


def test_left_chunks_bound_the_cache_and_match_offline():
    torch.manual_seed(4)
    model = ChunkFlowMatching(FlowConfig(n_timesteps=3, decoder_left_chunks=1)).eval()
    tokens = torch.randint(0, 6561, (1, 80))
    spk = torch.randn(1, 192)
    streamed, state = stream(model, tokens, spk, "chunk")
    torch.testing.assert_close(streamed, model.synthesize(tokens, spk, mask_mode="chunk"), atol=1e-4, rtol=1e-4)
    cached = state.estimator[0].kvs[0].shape[2]
    assert cached <= 2 * 2 * 15  # at most the current and one left chunk of frames


def test_step_rejects_misaligned_chunks(flow):
    tokens = torch.randint(0, 6561, (1, 30))
    state = flow.init_state(1, torch.randn(1, 192), "chunk")
    with pytest.raises(ValueError, match="chunk boundary"):
        flow.step(tokens[:, :10], state, future=tokens[:, 10:13])
    with pytest.raises(ValueError, match="lookahead"):
        flow.step(tokens[:, :12], state)


def _toy_batch(batch=4, length=20, seed=0):
    gen = torch.Generator().manual_seed(seed)
    codebook = torch.randn(16, 80, generator=gen) - 4
    tokens = torch.randint(0, 16, (batch, length), generator=gen)
    mel = codebook[tokens].repeat_interleave(2, dim=1).transpose(1, 2)
    return {
        "speech_tokens": tokens, "speech_token_lens": torch.tensor([length, length - 3, length, length - 7][:batch]),
        "mel": mel, "mel_lens": torch.full((batch,), 2 * length), "spk_emb": torch.randn(batch, 192, generator=gen),
    }


def _train(model, batch, steps=25) -> dict[str, float]:
    """``steps`` AdamW steps on one batch; the last step's metrics."""
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    for _ in range(steps):
        loss, metrics = model.compute_loss(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return metrics


def test_flow_loss_decreases():
    torch.manual_seed(5)
    model = ChunkFlowMatching(FlowConfig())
    batch = _toy_batch()

    def eval_loss():
        with torch.random.fork_rng():
            torch.manual_seed(123)
            return sum(float(model.compute_loss(batch, mask_mode=m)[0].detach()) for m in MASK_MODES)

    before = eval_loss()
    metrics = _train(model, batch)
    assert set(metrics) == {"flow_loss", "mask_mode"}
    after = eval_loss()
    print(f"flow loss before {before:.3f} after {after:.3f}")
    assert after < 0.6 * before, (before, after)


def test_prior_loss_teaches_the_encoder_the_mel():
    """With ``prior_loss_weight`` the loss adds the masked MSE of mu against the mel, and a
    few steps pull mu towards the mel; without it mu is unconstrained (no such metric)."""
    batch = _toy_batch()
    torch.manual_seed(5)
    plain = ChunkFlowMatching(FlowConfig())
    loss, metrics = plain.compute_loss(batch, mask_mode="chunk")
    assert "prior_loss" not in metrics and float(loss.detach()) == pytest.approx(metrics["flow_loss"])

    torch.manual_seed(5)
    model = ChunkFlowMatching(FlowConfig(prior_loss_weight=0.5))
    loss, metrics = model.compute_loss(batch, mask_mode="chunk")
    assert float(loss.detach()) == pytest.approx(metrics["flow_loss"] + 0.5 * metrics["prior_loss"], rel=1e-5)
    tokens, lens = batch["speech_tokens"], batch["speech_token_lens"]

    def mu_error() -> float:
        with torch.no_grad():
            mu = model.encode(tokens, lens, "non_causal")
        frames = mu.shape[2]
        mask = (torch.arange(frames)[None, :] < (2 * lens)[:, None]).unsqueeze(1)
        return float(((mu - batch["mel"][:, :, :frames]) ** 2 * mask).sum() / (mask.sum() * 80))

    before = mu_error()
    _train(model, batch)
    after = mu_error()
    print(f"mu-mel MSE before {before:.3f} after {after:.3f}")
    assert after < 0.5 * before, (before, after)


def test_cosyvoice2_shapes_match_public_parameter_count():
    cfg = load_model_config("minmo-7b").flow
    with torch.device("meta"):
        model = ChunkFlowMatching(cfg)
    n = sum(p.numel() for p in model.parameters())
    # CosyVoice 2 flow.pt (CausalMaskedDiffWithXvec at cosyvoice2.yaml shapes): 112,549,360
    assert abs(n - 112_549_360) / 112_549_360 < 0.10
    names = {k for k, _ in model.named_parameters()}
    for key in ("encoder.encoders.5.self_attn.pos_bias_u", "encoder.up_encoders.3.feed_forward.w_2.weight",
                "decoder.estimator.mid_blocks.11.1.3.attn1.to_q.weight",
                "decoder.estimator.up_blocks.0.0.block1.block.2.weight", "spk_embed_affine_layer.weight"):
        assert key in names


def test_padded_batch_matches_single_examples(flow):
    torch.manual_seed(6)
    a, b = torch.randint(0, 6561, (1, 30)), torch.randint(0, 6561, (1, 21))
    spk = torch.randn(2, 192)
    batch = torch.cat([a, torch.nn.functional.pad(b, (0, 9), value=-1)])
    mel = flow.synthesize(batch, spk, token_lens=torch.tensor([30, 21]))
    torch.testing.assert_close(mel[:1], flow.synthesize(a, spk[:1]), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(mel[1:, :, :42], flow.synthesize(b, spk[1:]), atol=1e-4, rtol=1e-4)
    assert mel[1, :, 42:].abs().max() == 0
