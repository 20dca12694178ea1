"""Streaming token2wav: per-session state, 15-token chunks, equality with the offline chunk-mode
pass, smooth joins, constant work per chunk."""

import pytest
import torch

from minmo.config import FlowConfig, HiFTConfig
from minmo.inference.token2wav import Token2Wav
from minmo.models.flow import ChunkFlowMatching
from minmo.models.vocoder import HiFTVocoder


@pytest.fixture(scope="module")
def parts():
    torch.manual_seed(0)
    return ChunkFlowMatching(FlowConfig(n_timesteps=4)).eval(), HiFTVocoder(HiFTConfig()).eval()


def run_stream(t2w, tokens, spk, chunk=15, **init):
    state = t2w.init_state(spk, **init)
    outs = []
    for i in range(0, tokens.shape[1], chunk):
        audio, state = t2w.step(tokens[:, i:i + chunk], state)
        outs.append(audio)
    audio, state = t2w.step(tokens[:, :0], state, final=True)
    outs.append(audio)
    assert state.finished
    return outs


@pytest.mark.parametrize("mode", ["chunk", "chunk2", "full_causal", "non_causal"])
def test_streaming_equals_offline_chunk_mode(parts, mode):
    flow, voc = parts
    rf = voc.receptive_field()
    t2w = Token2Wav(flow, voc, mask_mode=mode, vocoder_stream=(rf, rf, 0))
    torch.manual_seed(1)
    tokens, spk = torch.randint(0, 6561, (2, 47)), torch.randn(2, 192)
    offline, mel = t2w.synthesize(tokens, spk)
    assert offline.shape == (2, 47 * 960) and mel.shape == (2, 80, 94)
    streamed = torch.cat(run_stream(t2w, tokens, spk), dim=1)
    torch.testing.assert_close(streamed, offline, atol=1e-5, rtol=0)


def test_prompt_is_condition_not_voice(parts):
    flow, voc = parts
    rf = voc.receptive_field()
    t2w = Token2Wav(flow, voc, vocoder_stream=(rf, rf, 0))
    torch.manual_seed(2)
    tokens, spk = torch.randint(0, 6561, (1, 33)), torch.randn(1, 192)
    prompt, prompt_mel = torch.randint(0, 6561, (1, 7)), torch.randn(1, 80, 14) - 4
    offline, _ = t2w.synthesize(tokens, spk, prompt_tokens=prompt, prompt_mel=prompt_mel)
    streamed = torch.cat(run_stream(t2w, tokens, spk, prompt_tokens=prompt, prompt_mel=prompt_mel), dim=1)
    assert streamed.shape == offline.shape == (1, 33 * 960)
    torch.testing.assert_close(streamed, offline, atol=1e-5, rtol=0)


def test_first_audio_after_first_15_tokens_and_smooth_joins(parts):
    flow, voc = parts
    t2w = Token2Wav(flow, voc)  # default vocoder streaming: 8 context, 8 lookahead, 1 cross-fade
    torch.manual_seed(3)
    tokens, spk = torch.randint(0, 6561, (1, 60)), torch.randn(1, 192)
    state = t2w.init_state(spk)
    audio, state = t2w.step(tokens[:, :14], state)
    assert audio.shape[1] == 0  # 14 tokens: the first chunk (12 + 3 lookahead) is not complete
    audio, state = t2w.step(tokens[:, 14:15], state)
    lookahead = voc.cfg.stream_lookahead_frames
    assert audio.shape[1] == (24 - lookahead) * 480  # 12 tokens decoded, lookahead frames held back
    outs = [audio] + run_stream_rest(t2w, tokens[:, 15:], state)
    streamed = torch.cat(outs, dim=1)
    offline, _ = t2w.synthesize(tokens, spk)
    rms = offline.pow(2).mean().sqrt()
    assert streamed.shape == offline.shape
    assert (streamed - offline).abs().max() < 0.05 * rms
    joins = torch.tensor([o.shape[1] for o in outs[:-1]]).cumsum(0)
    joins = joins[(joins > 0) & (joins < streamed.shape[1])]
    steps = (offline[0, 1:] - offline[0, :-1]).abs()
    assert (streamed[0, joins] - streamed[0, joins - 1]).abs().max() <= steps.max()


def run_stream_rest(t2w, tokens, state):
    outs = []
    for i in range(0, tokens.shape[1], 15):
        audio, state = t2w.step(tokens[:, i:i + 15], state)
        outs.append(audio)
    audio, state = t2w.step(tokens[:, :0], state, final=True)
    return outs + [audio]


def test_state_is_not_mutated_and_sessions_are_independent(parts):
    flow, voc = parts
    t2w = Token2Wav(flow, voc)
    torch.manual_seed(4)
    tokens = torch.randint(0, 6561, (1, 30))
    spk = torch.randn(1, 192)
    state = t2w.init_state(spk)
    a1, s1 = t2w.step(tokens, state)
    a2, s2 = t2w.step(tokens, state)  # replay from the same state gives the same audio
    torch.testing.assert_close(a1, a2)
    assert state.flow.num_tokens == 0 and s1.flow.num_tokens == 27
    with pytest.raises(ValueError, match="finished"):
        _, fin = t2w.step(tokens[:, :0], s1, final=True)
        t2w.step(tokens, fin)


def test_flow_state_size_does_not_depend_on_position_with_left_chunks():
    torch.manual_seed(5)
    flow = ChunkFlowMatching(FlowConfig(n_timesteps=2, decoder_left_chunks=1)).eval()
    t2w = Token2Wav(flow, HiFTVocoder(HiFTConfig()).eval())
    tokens, state = torch.randint(0, 6561, (1, 150)), t2w.init_state(torch.randn(1, 192))
    sizes = []
    for i in range(0, 150, 15):
        _, state = t2w.step(tokens[:, i:i + 15], state)
        sizes.append(state.flow.estimator[0].kvs[0].shape[2])
    assert max(sizes[3:]) == min(sizes[3:]) <= 60


def test_kernel_count_counts_launches_not_views():
    """`bench token2wav --count-kernels`: an op that writes memory counts once; views, the
    `_unsafe_view` after a 3-D matmul and eval-mode dropout launch nothing."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_token2wav.py"
    spec = importlib.util.spec_from_file_location("bench_token2wav", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    x, w = torch.randn(2, 5, 8), torch.randn(4, 8)
    drop = torch.nn.Dropout(0.1).eval()

    def count(fn):
        with torch.no_grad(), bench.KernelCount() as k:
            fn()
        return k.count

    assert count(lambda: torch.nn.functional.linear(x, w)) == 1  # mm (+ _unsafe_view)
    assert count(lambda: x.transpose(1, 2).reshape(2, 40)) == 1  # the copy, not the view
    assert count(lambda: drop(x)) == 0
    assert count(lambda: x.add_(1.0)) == 1
    assert count(lambda: torch.nn.functional.layer_norm(x, (8,)) + x) == 2
