"""CUDA-graph replay cache: per-signature recordings, input copies, unaliased results, LRU
eviction. CPU runs use ``emulate_graph``, which has a CUDA graph's buffer semantics (a replay
recomputes from the recorded input buffers into the recorded output buffers)."""

import warnings

import pytest
import torch

from minmo.config import FlowConfig, HiFTConfig
from minmo.modules.cuda_graphs import CudaGraphCache, emulate_graph
from minmo.inference.token2wav import Token2Wav
from minmo.models.flow import ChunkFlowMatching
from minmo.models.vocoder import HiFTVocoder


def affine(x: torch.Tensor, pair: list, scale: float) -> dict:
    return {"y": x * scale + pair[0], "z": (pair[1] - x.sum(), None)}


def test_replays_follow_new_inputs_and_results_do_not_alias():
    graphed = CudaGraphCache(affine, graph_factory=emulate_graph)
    x1, x2 = torch.arange(4.0), torch.full((4,), 10.0)
    b = [torch.ones(4), torch.tensor(3.0)]
    with torch.no_grad():
        r1 = graphed(x1, b, 2.0)
        r2 = graphed(x2, b, 2.0)  # same signature: a replay of the first recording
    assert graphed.recorded == 1 and len(graphed) == 1
    torch.testing.assert_close(r1["y"], x1 * 2 + 1)  # not overwritten by the second replay
    torch.testing.assert_close(r2["y"], x2 * 2 + 1)
    torch.testing.assert_close(r2["z"][0], torch.tensor(3.0 - 40.0))
    assert r2["z"][1] is None


def test_a_new_shape_or_value_records_again_until_the_budget_then_runs_eagerly():
    graphed = CudaGraphCache(affine, max_graphs=2, graph_factory=emulate_graph)
    b = [torch.zeros(()), torch.zeros(())]
    with torch.no_grad():
        graphed(torch.ones(3), b, 1.0)
        graphed(torch.ones(3), b, 2.0)  # another non-tensor argument: another recording
        torch.testing.assert_close(graphed(torch.ones(5), b, 1.0)["y"], torch.ones(5))  # over budget: eager
        assert graphed.recorded == 2 and len(graphed) == 2
        torch.testing.assert_close(graphed(2 * torch.ones(3), b, 1.0)["y"], 2 * torch.ones(3))  # replayed
        assert graphed.recorded == 2


def test_recordings_of_a_growing_argument_share_doubling_input_buffers():
    graphed = CudaGraphCache(affine, max_graphs=100, graph_factory=emulate_graph)
    b = [torch.zeros(()), torch.zeros(())]
    with torch.no_grad():
        for n in range(1, 101):  # like a cache that grows chunk by chunk
            x = torch.arange(float(n))
            torch.testing.assert_close(graphed(x, b, 1.0)["y"], x)
    assert graphed.recorded == 100
    # one buffer per size class 1, 2, 4, ..., 128 floats (plus the two scalars), not 1+2+...+100
    assert graphed.input_bytes() <= 4 * (255 + 2)


def test_off_cuda_without_a_factory_the_function_is_called_directly():
    graphed = CudaGraphCache(affine)
    out = graphed(torch.ones(2), [torch.zeros(2), torch.zeros(())], 3.0)
    assert graphed.recorded == 0 and len(graphed) == 0
    torch.testing.assert_close(out["y"], torch.full((2,), 3.0))


def test_token2wav_through_graph_replays_equals_the_plain_stream():
    torch.manual_seed(0)
    flow = ChunkFlowMatching(FlowConfig(n_timesteps=3)).eval()
    voc = HiFTVocoder(HiFTConfig()).eval()
    t2w = Token2Wav(flow, voc)
    tokens = torch.randint(0, 6561, (1, 52))
    spk = torch.randn(1, 192)
    plain = t2w.stream(tokens, spk)
    flow.use_cuda_graphs(graph_factory=emulate_graph)
    voc.use_cuda_graphs(graph_factory=emulate_graph)
    first = t2w.stream(tokens, spk)
    recorded = flow._graphed_solve.recorded
    assert recorded == 4  # chunks of 12, 15, 15 tokens and the final 10: four solve shapes
    second = t2w.stream(tokens.flip(1), spk)  # another stream of the same length: replays only
    assert flow._graphed_solve.recorded == recorded
    torch.testing.assert_close(first, plain, rtol=0, atol=0)
    torch.testing.assert_close(second, t2w.stream(tokens.flip(1), spk), rtol=0, atol=0)
    flow.use_cuda_graphs(False)
    voc.use_cuda_graphs(False)
    torch.testing.assert_close(second, t2w.stream(tokens.flip(1), spk), rtol=0, atol=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="records real CUDA graphs (GPU only)")
def test_real_cuda_graphs_stream_the_same_audio_as_eager():
    torch.manual_seed(0)
    flow = ChunkFlowMatching(FlowConfig(n_timesteps=3)).eval().cuda()
    voc = HiFTVocoder(HiFTConfig()).eval().cuda()
    t2w = Token2Wav(flow, voc)
    tokens = torch.randint(0, 6561, (1, 52), device="cuda")
    spk = torch.randn(1, 192, device="cuda")
    plain = t2w.stream(tokens, spk)
    flow.use_cuda_graphs()
    voc.use_cuda_graphs()
    graphed = [t2w.stream(tokens, spk) for _ in range(2)]  # records, then replays
    assert flow._graphed_solve.recorded == 4 and len(voc._graphed[1]) > 0
    for audio in graphed:
        torch.testing.assert_close(audio, plain, rtol=1e-4, atol=1e-5)


def test_a_recording_failure_falls_back_to_eager_calls_with_a_warning():
    def cannot_record(fn, args, warmup):
        raise RuntimeError("operation not permitted when stream is capturing")

    graphed = CudaGraphCache(affine, graph_factory=cannot_record)
    b = [torch.zeros(()), torch.zeros(())]
    with torch.no_grad(), pytest.warns(UserWarning, match="running it eagerly"):
        out = graphed(torch.ones(2), b, 2.0)
    torch.testing.assert_close(out["y"], torch.full((2,), 2.0))
    assert "not permitted" in graphed.failed
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no second warning, no second try
        torch.testing.assert_close(graphed(torch.ones(3), b, 1.0)["y"], torch.ones(3))
    assert graphed.recorded == 0
