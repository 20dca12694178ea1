"""Weight-only int8 LLM (``--quantize int8``, ``minmo.inference.quantize``): the kernel
multiplies by exactly the dequantized weight, only the LLM's eligible layers are replaced,
and a quantized runtime runs the same pipeline close to the float one."""

import numpy as np
import pytest
import torch
from torch import nn

from minmo.cli import QUANTIZE_CHOICES as CLI_CHOICES
from minmo.inference import pipeline as P
from minmo.inference.kv import KVStream, batched_forward
from minmo.inference.loading import load_runtime
from minmo.inference.quantize import (QUANTIZE_CHOICES, Int8Linear, quantize_llm,
                                      resolve_quantize)


@pytest.mark.parametrize("out_features,in_features,bias", [(576, 576, False), (192, 576, True),
                                                          (7, 64, False), (1536, 48, True)])
def test_int8_linear_multiplies_by_its_dequantized_weight(out_features, in_features, bias):
    g = torch.Generator().manual_seed(out_features + in_features)
    linear = nn.Linear(in_features, out_features, bias=bias)
    with torch.no_grad():
        linear.weight.copy_(torch.randn(out_features, in_features, generator=g) * 0.05)
        linear.weight[0, 0] = 3.0  # an outlier sets its row's scale, not the others'
    q = Int8Linear.from_linear(linear)
    assert q.qweight.dtype == torch.int8 and q.qweight.abs().max() <= 127
    # rounding to int8 rows moves each weight by at most half a step of its row's scale
    step = q.scale.float()[:, None]
    assert (step >= linear.weight.abs().amax(1, keepdim=True) / 127).all()
    assert (step <= linear.weight.abs().amax(1, keepdim=True) / 127 * (1 + 2 ** -7)).all()
    assert ((q.dequantized() - linear.weight).abs() <= step * (0.5 + 1e-5)).all()
    x = torch.randn(2, 3, in_features, generator=g)
    ref = x.bfloat16().float() @ q.dequantized().T + (linear.bias if bias else 0)
    got = q(x)
    assert got.shape == (2, 3, out_features) and got.dtype == torch.float32
    # bfloat16 accumulation and output: a few parts in a thousand of the largest output
    assert (got - ref).abs().max() <= 1e-2 * ref.abs().max()
    # outputs of the rows without the outlier stay close to the float layer's
    exact = linear(x).detach()[..., 1:]
    assert (got[..., 1:] - exact).abs().max() <= 0.02 * exact.abs().max()


def test_only_eligible_linear_layers_are_replaced():
    model = nn.Sequential(nn.Linear(32, 8), nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    model.add_module("lora_A", nn.ModuleDict({"default": nn.Linear(16, 2)}))
    report = quantize_llm(model)
    assert [type(m).__name__ for m in model] == ["Int8Linear", "Linear", "ReLU", "Int8Linear",
                                                 "ModuleDict"]
    assert type(model.lora_A["default"]) is nn.Linear  # adapters are left alone
    assert report.layers == 2 and report.skipped == ["1 (input width 8)"]
    assert report.bytes_before == (32 * 8 + 16 * 4) * 4
    assert report.bytes_after == 32 * 8 + 16 * 4 + (8 + 4) * 2


def test_a_quantized_runtime_runs_the_pipeline_close_to_the_float_one():
    rng = np.random.default_rng(0)
    wave = (0.1 * rng.standard_normal(16000)).astype(np.float32)
    ref = load_runtime("tiny", seed=0, vocoder="placeholder")
    rt = load_runtime("tiny", seed=0, vocoder="placeholder", quantize="int8")
    assert "int8 LLM weights" in rt.info.quantization and ref.info.quantization is None
    assert rt.info.to_dict()["quantization"] == rt.info.quantization
    layers = [m for m in rt.model.llm.modules() if isinstance(m, Int8Linear)]
    per_layer = 7  # q, k, v, o, gate, up, down
    assert len(layers) == per_layer * rt.model.cfg.llm.num_layers + 1  # + the output layer
    assert not any(isinstance(m, Int8Linear) for m in rt.model.voice_lm.modules())
    speech = ref.encode_speech(wave)
    assert torch.equal(speech, rt.encode_speech(wave))  # the encoder is not quantized
    prompt = P._speech_prompt(ref, ref.model.cfg.system_prompt, speech, "Transcribe the speech.")
    with torch.inference_mode():
        a = batched_forward(ref.llm_body, [KVStream()], [prompt])[0]
        b = batched_forward(rt.llm_body, [KVStream()], [prompt])[0]
    assert 0 < ((b - a).norm() / a.norm()).item() < 0.05
    reply = P.reply(rt, wave, P.new_session(rt, P.SessionConfig(generation=P.GenerationConfig(
        max_text_tokens=4, max_speech_tokens=30, transcribe_max_tokens=4))))
    assert reply.transcript is not None and reply.wave.size > 0


def test_quantize_settings_are_checked():
    assert CLI_CHOICES == QUANTIZE_CHOICES
    assert resolve_quantize("auto", "cpu") == "int8" and resolve_quantize("auto", "cuda:0") == "none"
    assert resolve_quantize("none", "cpu") == "none" and resolve_quantize("int8", "cpu") == "int8"
    with pytest.raises(ValueError, match="unknown quantization 'int4'"):
        load_runtime("tiny", quantize="int4")
    with pytest.raises(ValueError, match="for the CPU"):
        load_runtime("tiny", device="meta", quantize="int8")
    with pytest.raises(ValueError, match="multiple of 16"):
        Int8Linear(torch.zeros(4, 24))


def test_a_kernel_that_is_missing_or_wrong_leaves_the_layers_float(monkeypatch):
    import minmo.inference.quantize as Q

    assert Q.kernel_problem(64) is None  # this machine's kernel is right
    real = torch.ops.aten._weight_int8pack_mm

    class Ops:  # torch.ops.aten with the int8 kernel replaced
        def __init__(self, kernel):
            self._weight_int8pack_mm = kernel

    def wrong(x, w, s):
        return real(x, w, s) * 1.5

    def missing(x, w, s):
        raise NotImplementedError("Could not run 'aten::_weight_int8pack_mm' with arguments")

    for kernel, reason in ((wrong, "is wrong for width 32"), (missing, "no int8 kernel here")):
        monkeypatch.setattr(torch.ops, "aten", Ops(kernel))
        model = nn.Sequential(nn.Linear(32, 8), nn.Linear(8, 16))
        report = quantize_llm(model)
        assert report.layers == 0 and [type(m) for m in model] == [nn.Linear, nn.Linear]
        assert reason in report.skipped[0] and "input width 8" in report.skipped[1]
    # and a runtime asked for int8 then says so, running float
    rt = load_runtime("tiny", seed=0, vocoder="placeholder", quantize="int8")
    assert rt.info.quantization is None and "int8 LLM weights unavailable here" in rt.info.warning
    assert not any(isinstance(m, Int8Linear) for m in rt.model.modules())
