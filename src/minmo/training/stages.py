"""Training stages: which parameter groups train, which losses apply, and how one optimizer
step runs.

A :class:`Stage` is a small recipe. The seven MinMo alignment stages only name groups and
losses and use the default step (:func:`standard_step`: gradient accumulation over the
micro-batches, clipping, one AdamW step). Stages that need more (the speech-generation
stages ``tokenizer``, ``flow`` and ``vocoder``, the last with a GAN step that alternates a
discriminator and a generator optimizer) bring their own hooks:

- ``build_model(train_cfg) -> nn.Module``: a model other than MinMo (it must offer
  ``param_groups() -> {group: {name: Parameter}}`` and ``forward(batch, losses=...)``);
- ``build_data(train_cfg, model, rank, world_size) -> BatchSource``: its own data;
- ``build_optimizers(model, optim_cfg) -> {name: Optimizer}``: e.g. ``{"generator": ...,
  "discriminator": ...}`` (each gets its own warmup+cosine scheduler, and all are saved in
  checkpoints by name);
- ``step(ctx: StepContext) -> StepOutput``: the update itself; use
  ``ctx.accumulate(is_last)``, ``ctx.autocast()`` and ``ctx.clip_and_step(name)``;
- ``prepare(model, train_cfg)``: runs once the ``init`` weights are loaded and before a
  resumed checkpoint's, e.g. ``s2s_dpo`` freezing its reference (so a resumed run compares
  against the same weights as a fresh one).

Register a new stage with :func:`register_stage`; ``minmo train`` then accepts its name.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Callable, ContextManager, Iterator

import torch
from torch import nn

from minmo.config import ConfigError, OptimConfig, TrainConfig

GROUPS = ("encoder", "input_projector", "llm", "llm_lora", "output_projector", "voice_lm",
          "duplex")
"""Parameter groups of a MinMo model (``MinMo.param_groups()``)."""


@dataclass
class StepOutput:
    """Result of one optimizer step on this process.

    Attributes:
        loss: mean loss over the real micro-batches of this process (``nan`` if none).
        metrics: per-loss metrics, averaged like ``loss``.
        grad_norms: ``{"grad_norm": x}`` (or one entry per optimizer, e.g.
            ``{"grad_norm_generator": ...}``), before clipping.
        examples: examples processed by this process.
        weight: number of real (non-placeholder) micro-batches; used to average across ranks.
        skipped_update: True when a non-finite gradient made the step skip the update.
    """

    loss: float
    metrics: dict[str, float] = field(default_factory=dict)
    grad_norms: dict[str, float] = field(default_factory=dict)
    examples: int = 0
    weight: int = 0
    skipped_update: bool = False


@dataclass
class StepContext:
    """Everything a step function may use.

    Attributes:
        model: the model to call (possibly wrapped by DDP or sharded by FSDP).
        raw_model: the underlying model (``param_groups()``, helpers).
        stage: the running stage.
        micro_batches: ``[(batch, weight)]``; ``weight`` is 1.0, or 0.0 for a placeholder
            (this rank had no usable rows: run it anyway, multiplied by 0, so collective
            operations stay in step).
        optimizers, schedulers: by name (default: ``"main"``).
        grad_clip: max global grad norm (``<= 0``: no clipping, the norm is still reported).
        autocast: returns the mixed-precision context (bf16 on CUDA, no-op on CPU).
        accumulate: ``accumulate(is_last)`` is the context in which to run forward+backward
            of one micro-batch: gradient synchronisation across processes happens only when
            ``is_last``.
        step: index of this optimizer step (0-based).
    """

    model: nn.Module
    raw_model: nn.Module
    stage: "Stage"
    micro_batches: list[tuple[dict[str, Any], float]]
    optimizers: dict[str, torch.optim.Optimizer]
    schedulers: dict[str, Any]
    grad_clip: float
    autocast: Callable[[], ContextManager]
    accumulate: Callable[[bool], ContextManager]
    step: int = 0

    def clip_and_step(self, name: str = "main") -> tuple[float, bool]:
        """Clip the gradients of optimizer ``name``'s parameters, step it and its scheduler,
        and clear its gradients. A non-finite gradient norm skips the update (gradients are
        dropped, the scheduler still advances).

        Returns:
            (grad norm before clipping, whether the update was applied).
        """
        opt = self.optimizers[name]
        params = [p for g in opt.param_groups for p in g["params"]]
        max_norm = self.grad_clip if self.grad_clip > 0 else math.inf
        norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
        if hasattr(norm, "full_tensor"):  # DTensor under FSDP2
            norm = norm.full_tensor()
        norm_value = float(norm)
        applied = math.isfinite(norm_value)
        if applied:
            opt.step()
        opt.zero_grad(set_to_none=True)
        if name in self.schedulers:
            self.schedulers[name].step()
        return norm_value, applied


def _real_weight(micro_batches: list[tuple[dict[str, Any], float]]) -> int:
    return sum(1 for _b, w in micro_batches if w > 0)


def batch_size_of(batch: dict[str, Any]) -> int:
    """Number of examples in a batch dict (``ids`` list, else the first tensor's dim 0)."""
    if "ids" in batch:
        return len(batch["ids"])
    for value in batch.values():
        if isinstance(value, torch.Tensor) and value.ndim > 0:
            return int(value.shape[0])
    return 0


def accumulate_losses(ctx: StepContext, losses: tuple[str, ...]) -> tuple[float, dict[str, float], int]:
    """Forward + backward of every micro-batch of ``ctx`` with ``losses`` (gradients
    accumulate; sync on the last). Each micro-batch's loss is divided by the number of real
    micro-batches, so the gradient is that of their mean loss.

    Returns:
        Mean loss and metrics over the real micro-batches (``nan`` / ``{}`` when none) and
        the number of examples.
    """
    n_real = _real_weight(ctx.micro_batches)
    scale = 1.0 / max(1, n_real)
    loss_sum, metric_sums, examples = 0.0, {}, 0
    last = len(ctx.micro_batches) - 1
    for i, (batch, weight) in enumerate(ctx.micro_batches):
        with ctx.accumulate(i == last):
            with ctx.autocast():
                out = ctx.model(batch, losses=losses)
            (out.loss * (weight * scale)).backward()
        if weight > 0:
            loss_sum += float(out.loss.detach())
            for k, v in out.metrics.items():
                metric_sums[k] = metric_sums.get(k, 0.0) + float(v)
            examples += batch_size_of(batch)
    if not n_real:
        return math.nan, {}, examples
    return loss_sum / n_real, {k: v / n_real for k, v in metric_sums.items()}, examples


def standard_step(ctx: StepContext) -> StepOutput:
    """Gradient accumulation over ``ctx.micro_batches`` with the stage's losses
    (:func:`accumulate_losses`), then clip and one step of optimizer ``"main"``."""
    loss, metrics, examples = accumulate_losses(ctx, ctx.stage.losses)
    norm, applied = ctx.clip_and_step("main")
    return StepOutput(loss=loss, metrics=metrics, grad_norms={"grad_norm": norm}, examples=examples,
                      weight=_real_weight(ctx.micro_batches), skipped_update=not applied)


@dataclass(frozen=True)
class Stage:
    """One training stage.

    Attributes:
        name: config name (``stage:`` in the train YAML).
        trains: parameter groups that train; every other parameter is frozen.
        losses: loss names passed to ``model(batch, losses=...)``.
        description: one line for docs and ``minmo info``.
        needs: batch keys the stage's losses read (checked on the first batch).
        step: the optimizer-step function (default :func:`standard_step`).
        build_model, build_data, build_optimizers: optional hooks (see module docstring);
            ``None`` uses the loop's defaults (MinMo, the manifest data, one AdamW).
        build_valid_data: for a stage with its own ``build_data``: ``cfg -> (examples,
            collate)`` over ``data.valid`` (``None``: such a stage does not validate).
        valid_losses: losses of the validation pass (default: ``losses``).
        prepare: optional ``(model, cfg) -> None`` run after ``init`` is loaded, before a
            resumed checkpoint is (see module docstring).
    """

    name: str
    trains: tuple[str, ...]
    losses: tuple[str, ...]
    description: str = ""
    needs: tuple[str, ...] = ()
    step: Callable[[StepContext], StepOutput] = standard_step
    build_model: Callable[[TrainConfig], nn.Module] | None = None
    build_data: Callable[..., Any] | None = None
    build_optimizers: Callable[[nn.Module, OptimConfig], dict[str, torch.optim.Optimizer]] | None = None
    build_valid_data: Callable[[TrainConfig], tuple[list[Any], Callable[[list[Any]], Any]]] | None = None
    valid_losses: tuple[str, ...] = ()
    prepare: Callable[[nn.Module, TrainConfig], None] | None = None

    @property
    def uses_lora(self) -> bool:
        """True when the stage trains the LLM's LoRA adapters."""
        return "llm_lora" in self.trains


STAGES: dict[str, Stage] = {}


def register_stage(stage: Stage, replace: bool = False) -> Stage:
    """Add ``stage`` to the table :func:`get_stage` reads.

    Raises:
        ValueError: a stage of that name exists and ``replace`` is False.
    """
    if stage.name in STAGES and not replace:
        raise ValueError(f"stage '{stage.name}' is already registered")
    STAGES[stage.name] = stage
    return stage


def get_stage(name: str) -> Stage:
    """The registered stage ``name``.

    Raises:
        KeyError: unknown name; the message lists the known stages.
    """
    if name not in STAGES:
        raise KeyError(f"unknown stage '{name}' (known stages: {', '.join(STAGES)})")
    return STAGES[name]


def stage_options(cfg: TrainConfig, known: set[str] | dict[str, Any]) -> dict[str, Any]:
    """``cfg.stage_options``, checked against the keys the stage ``known`` reads.

    Raises:
        ConfigError: an unknown key (the message lists the known ones).
    """
    unknown = set(cfg.stage_options) - set(known)
    if unknown:
        raise ConfigError(f"stage_options: unknown key(s) {sorted(unknown)} for stage "
                          f"'{cfg.stage}' (known: {sorted(known) or 'none'})")
    return cfg.stage_options


DPO_OPTIONS = {"beta": 0.1, "sft_weight": 0.0}
"""``stage_options`` of ``s2s_dpo`` and their defaults: the DPO temperature ``beta`` and the
weight of a cross-entropy term on the preferred speech."""


def prepare_speech_preference(model: nn.Module, cfg: TrainConfig) -> None:
    """``s2s_dpo``: check its ``stage_options`` and freeze the model's output projector and
    voice LM as the DPO reference (``MinMo.set_speech_reference``): the weights the stage
    starts from (``init``, or the model handed to ``train``), never a resumed checkpoint's.

    Raises:
        ConfigError: an unknown option, ``beta <= 0`` or ``sft_weight < 0``.
    """
    opts = {**DPO_OPTIONS, **stage_options(cfg, DPO_OPTIONS)}
    try:
        beta, sft_weight = float(opts["beta"]), float(opts["sft_weight"])
    except (TypeError, ValueError):
        raise ConfigError(f"stage_options: beta and sft_weight must be numbers, got "
                          f"{opts['beta']!r} and {opts['sft_weight']!r}") from None
    if not beta > 0 or not sft_weight >= 0:
        raise ConfigError(f"stage_options: beta must be > 0 and sft_weight >= 0, got {beta} and "
                          f"{sft_weight}")
    model.set_speech_reference(beta, sft_weight)


for _stage in (
    Stage("s2t_ctc", ("input_projector",), ("ctc",),
          "speech-to-text CTC alignment (an aid before pre-alignment, not in the paper): the "
          "input projector learns to put each spoken token's own LLM embedding where it is "
          "said; no LLM runs"),
    Stage("s2t_prealign", ("input_projector",), ("text",),
          "speech-to-text pre-alignment: only the input projector trains"),
    Stage("s2t_fullalign", ("encoder", "input_projector"), ("text",),
          "speech-to-text full alignment: voice encoder + input projector"),
    Stage("s2t_sft", ("input_projector", "llm_lora"), ("text",),
          "speech-to-text instruction tuning: LoRA on the LLM + input projector"),
    Stage("t2s_projector", ("output_projector",), ("speech",),
          "text-to-speech alignment, first step: only the output projector",
          needs=("speech_tokens",)),
    Stage("t2s_full", ("output_projector", "voice_lm"), ("speech",),
          "text-to-speech alignment: output projector + voice token LM",
          needs=("speech_tokens",)),
    Stage("s2s", ("output_projector", "voice_lm"), ("speech",),
          "speech-to-speech alignment: output projector + voice token LM",
          needs=("speech_tokens",)),
    Stage("s2s_dpo", ("output_projector", "voice_lm"), ("speech_dpo",),
          "speech-output preference tuning (CosyVoice 2's DPO with an ASR reward): output "
          "projector + voice token LM on preferred / rejected speech of the same reply",
          needs=("speech_tokens", "rejected_speech_tokens"), prepare=prepare_speech_preference),
    Stage("duplex", ("duplex",), ("duplex",),
          "duplex interaction alignment: only the duplex predictor",
          needs=("duplex_labels",)),
):
    register_stage(_stage)


AUX_LOSSES = {"ctc": "input_projector"}
"""Losses a config may add to a stage's own (``aux_losses``), each with the group it trains."""


def with_aux_losses(stage: Stage, aux: list[str]) -> Stage:
    """``stage`` with ``aux`` added to its losses (``TrainConfig.aux_losses``), e.g. the CTC
    term of ``s2t_ctc`` kept beside the text loss of ``s2t_sft``, on the batch's asr rows.

    Raises:
        ValueError: an unknown auxiliary loss, or one whose group the stage does not train.
    """
    for name in aux:
        if name not in AUX_LOSSES:
            raise ValueError(f"aux_losses: unknown loss '{name}' (known: {', '.join(AUX_LOSSES)})")
        if AUX_LOSSES[name] not in stage.trains or stage.build_model is not None:
            raise ValueError(f"aux_losses: '{name}' trains {AUX_LOSSES[name]}, which stage "
                             f"'{stage.name}' does not train")
    extra = tuple(n for n in aux if n not in stage.losses)
    return dataclasses.replace(stage, losses=stage.losses + extra) if extra else stage


def apply_stage(model: nn.Module, stage: Stage) -> dict[str, nn.Parameter]:
    """Set ``requires_grad`` exactly: the parameters of ``stage.trains`` train, everything
    else is frozen. LoRA adapters are injected first (``model.enable_lora()``) when the stage
    trains ``llm_lora``; otherwise none are added.

    Returns:
        ``{parameter name: parameter}`` of the trainable parameters, names as in
        ``model.named_parameters()``.

    Raises:
        ValueError: the stage names a group the model does not have, or the groups are empty.
    """
    if stage.uses_lora:
        model.enable_lora()
    groups = model.param_groups()
    unknown = [g for g in stage.trains if g not in groups]
    if unknown:
        raise ValueError(f"stage '{stage.name}' trains {unknown}, which the model does not "
                         f"have (its groups: {', '.join(groups)})")
    for p in model.parameters():
        p.requires_grad_(False)
    chosen = {id(p) for g in stage.trains for p in groups[g].values()}
    for p in model.parameters():
        if id(p) in chosen:
            p.requires_grad_(True)
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    if not trainable:
        raise ValueError(f"stage '{stage.name}' trains {list(stage.trains)}, but these groups "
                         "hold no parameters in this model")
    return trainable


@contextlib.contextmanager
def null_context(*_args: Any, **_kwargs: Any) -> Iterator[None]:
    """A context that does nothing (autocast off, no gradient-sync control)."""
    yield
