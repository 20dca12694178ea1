"""Weight-only int8 for the LLM on the CPU (``--quantize int8``; ``auto``, the default of
``minmo serve``, ``chat``, ``tts --text`` and ``bench``, chooses it on a CPU).

On a CPU one LLM step of a few positions is bound by reading the weights: minmo-small's
SmolLM2-135M reads 513 MiB of float32 per decode step (its 30 layers and the 49,152-row
output layer), and the server runs such steps for every 80 ms of user speech it listens to,
as well as for every reply token. Stored as int8 with one float scale per output row, the
same weights are a quarter of the bytes, and PyTorch's own kernel for that layout
(``torch.ops.aten._weight_int8pack_mm``, the CPU path of gpt-fast's and torchao's int8
weight-only linear) multiplies bfloat16 activations by them directly. Measured on minmo-small
(``docs/benchmarks.md``): a decode step 2.8-3.1 times faster on one thread, and every test
set measured within 2.1 WER points or two items of float.

What is quantized: every ``nn.Linear`` of the LLM (attention and MLP projections of each
layer, and the output layer, which in SmolLM2 shares its weight with the input embedding:
the embedding table stays float32), except LoRA adapters (which a loaded overlay has already
folded into the weights) and layers whose input width is not a multiple of 16, which the
kernel does not handle (it returns wrong numbers or crashes there: checked on torch 2.13).
Before a width is used the kernel is tried on a random layer of that width
(:func:`kernel_problem`): where it is missing from the torch build or its product is wrong,
those layers stay float, and a runtime left with none says so in its warning.
The encoder, projectors, voice LM, flow and vocoder stay as they are: they are small, and
the speech they make depends on them most.

Activations are rounded to bfloat16 at each quantized layer's input and its output is cast
back; scales are ``max |w| / 127`` per output row, rounded up to bfloat16 (symmetric, no
zero point), so every weight is within half a step of its value.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

QUANTIZE_CHOICES = ("auto", "none", "int8")
"""``--quantize`` values: ``none`` (the weights as loaded), ``int8`` (this module), or
``auto`` (:func:`resolve_quantize`: int8 on a CPU, none elsewhere)."""

_K_MULTIPLE = 16  # input widths the int8 kernel computes correctly


def resolve_quantize(choice: str, device: str | torch.device) -> str:
    """``none`` or ``int8`` for ``choice`` on ``device`` (``auto``: int8 on a CPU).

    Raises:
        ValueError: an unknown choice, or int8 asked for on another device.
    """
    if choice not in QUANTIZE_CHOICES:
        raise ValueError(f"unknown quantization '{choice}': use " + ", ".join(QUANTIZE_CHOICES))
    on_cpu = torch.device(device).type == "cpu"
    if choice == "auto":
        return "int8" if on_cpu else "none"
    if choice == "int8" and not on_cpu:
        raise ValueError(f"--quantize int8 is for the CPU, not {device} (on a GPU the model "
                         "runs in bfloat16 instead)")
    return choice


class Int8Linear(nn.Module):
    """A ``nn.Linear`` whose weight is stored as int8 rows times one bfloat16 scale each.

    Args:
        weight: ``(out, in)`` float weight to quantize (``in`` a multiple of 16).
        bias: ``(out,)`` or None (kept in its own dtype).
    """

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None) -> None:
        super().__init__()
        if weight.dim() != 2 or weight.shape[1] % _K_MULTIPLE:
            raise ValueError(f"Int8Linear: weight {tuple(weight.shape)} needs an input width "
                             f"that is a multiple of {_K_MULTIPLE}")
        w = weight.detach().float()
        exact = w.abs().amax(1).clamp(min=torch.finfo(torch.float32).tiny) / 127
        # the kernel takes bfloat16 scales: round each up, so that no weight needs more
        # than 127 steps and every one is within half a step of its value
        scale = exact.to(torch.bfloat16)
        up = torch.nextafter(scale, torch.tensor(float("inf"), dtype=torch.bfloat16))
        scale = torch.where(scale.float() < exact, up, scale)
        self.register_buffer("qweight", (w / scale.float()[:, None]).round().clamp(-127, 127)
                             .to(torch.int8).contiguous())
        self.register_buffer("scale", scale)
        self.register_buffer("bias", None if bias is None else bias.detach().clone())
        self.in_features, self.out_features = weight.shape[1], weight.shape[0]

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> Int8Linear:
        return cls(linear.weight, linear.bias)

    def dequantized(self) -> torch.Tensor:
        """The float32 ``(out, in)`` weight this layer multiplies by."""
        return self.qweight.float() * self.scale.float()[:, None]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, self.in_features).to(torch.bfloat16).contiguous()
        y = torch.ops.aten._weight_int8pack_mm(rows, self.qweight, self.scale)
        y = y.to(x.dtype).reshape(*x.shape[:-1], self.out_features)
        return y if self.bias is None else y + self.bias

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8 weight"


def kernel_problem(in_features: int) -> str | None:
    """Why the int8 kernel cannot be used for layers of this input width on this machine
    (None: it can): it is missing from this torch build, or its product on a random layer
    differs from the float product of the same int8 weights by more than bfloat16 rounding
    explains (as it did for widths that are not multiples of 16, on torch 2.13 / AVX-512)."""
    g = torch.Generator().manual_seed(in_features)
    layer = Int8Linear(torch.randn(64, in_features, generator=g))
    x = torch.randn(4, in_features, generator=g)
    try:
        got = layer(x)
    except (RuntimeError, NotImplementedError) as exc:  # no CPU kernel in this build
        return f"no int8 kernel here: {str(exc).splitlines()[0][:80]}"
    want = x.to(torch.bfloat16).float() @ layer.dequantized().T
    if not (got - want).abs().max() <= 0.02 * want.abs().max():
        return f"the int8 kernel is wrong for width {in_features} here"
    return None


@dataclass
class QuantizeReport:
    """What :func:`quantize_llm` did: layers quantized, float32 bytes before and int8 bytes
    after, and the layers it left alone with the reason."""

    layers: int = 0
    bytes_before: int = 0
    bytes_after: int = 0
    skipped: list[str] = field(default_factory=list)

    def summary(self) -> str:
        return (f"int8 LLM weights: {self.layers} linear layers read "
                f"{self.bytes_after / 2**20:.1f} MiB per step instead of "
                f"{self.bytes_before / 2**20:.1f} MiB"
                + (f" ({len(self.skipped)} left in float)" if self.skipped else ""))


def quantize_llm(llm: nn.Module) -> QuantizeReport:
    """Replace the linear layers of ``llm`` (a MinMo model's LLM slot) in place by
    :class:`Int8Linear` (see the module docstring for which). CPU only.

    Raises:
        ValueError: the LLM's weights are not on the CPU (the kernel is the CPU one; on a
            GPU the LLM runs in bfloat16).
    """
    device = next(llm.parameters()).device
    if device.type != "cpu":
        raise ValueError(f"--quantize int8 is for the CPU; this LLM is on {device} (on a GPU "
                         "the model runs in bfloat16 instead)")
    report = QuantizeReport()
    checked: dict[int, str | None] = {}
    for name, module in list(llm.named_modules()):
        for child_name, child in list(module.named_children()):
            if type(child) is not nn.Linear:
                continue
            full = f"{name}.{child_name}" if name else child_name
            if "lora_" in full:
                continue
            if child.in_features % _K_MULTIPLE:
                report.skipped.append(f"{full} (input width {child.in_features})")
                continue
            if child.in_features not in checked:
                checked[child.in_features] = kernel_problem(child.in_features)
            if checked[child.in_features] is not None:
                report.skipped.append(f"{full} ({checked[child.in_features]})")
                continue
            setattr(module, child_name, Int8Linear.from_linear(child))
            report.layers += 1
            report.bytes_before += child.weight.numel() * child.weight.element_size()
            report.bytes_after += child.weight.numel() + child.out_features * 2
    return report
