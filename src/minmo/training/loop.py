"""The one training loop: every stage, one process or many, fresh or resumed.

``train(cfg)`` does, in order: start the process group (under torchrun); build the model
(seeded, identical on every rank); load ``cfg.init`` weights; apply the stage's freeze
matrix; resume from the latest checkpoint in ``output_dir`` (or ``cfg.resume``); wrap the
model (FSDP2/DDP); build AdamW + warmup-cosine over the trainable parameters; then run
optimizer steps until ``optim.max_steps`` (or until the run has trained ``max_minutes`` of wall
clock, counted over resumed invocations: then it checkpoints and stops), each over
``optim.grad_accum`` micro-batches, with
bf16 autocast on CUDA, gradient clipping, a JSONL metrics line every ``log_every`` steps and
an atomic checkpoint every ``save_every`` steps and at the end. With ``data.valid``
manifests, a validation pass (``training/validation.py``) runs every ``valid_every`` steps
and after the last step; its ``valid_*`` values join that step's metrics line.

Resuming restores model, optimizer, scheduler, every RNG and the data position, so a run
killed after a checkpoint and resumed ends with the same parameters as an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import nn

from minmo import library_versions
from minmo.checkpoints import CheckpointError, check_keys
from minmo.config import ConfigError, TrainConfig, load_model_config
from minmo.training import checkpointing as ckpt
from minmo.training import speech_stages  # noqa: F401  (registers speech_tokenizer, flow, vocoder)
from minmo.training.data_source import BatchSource, DataPosition
from minmo.training.distributed import (
    DistInfo,
    all_reduce_sum,
    barrier,
    broadcast_object,
    gather_model_state,
    gather_optimizer_state,
    gradient_sync,
    init_distributed,
    load_optimizer_state,
    shutdown_distributed,
    unwrap_model,
    wrap_model,
)
from minmo.training.errors import TrainingError
from minmo.training.optim import build_adamw, build_scheduler
from minmo.training.stages import (Stage, StepContext, StepOutput, apply_stage, get_stage, null_context,
                                   with_aux_losses)
from minmo.training.validation import build_valid_set, check_valid_config, evaluate, should_validate

log = logging.getLogger(__name__)

METRICS_FILE = "metrics.jsonl"
KILL_ENV = "MINMO_DEBUG_KILL_AT_STEP"
"""Debug/test hook: ``MINMO_DEBUG_KILL_AT_STEP=N`` SIGKILLs the process right after the
checkpoint of step ``N`` is written (simulates a crash for the resume test)."""


@dataclass
class TrainResult:
    """Summary of a finished :func:`train` call (identical on every rank).

    Attributes:
        steps: optimizer steps done in total (including those before a resume).
        final_loss: loss of the last step (``nan`` if no step ran).
        skipped_rows: bad data rows skipped (unique, all ranks).
        seconds: wall time of this call.
        output_dir: run directory.
        resumed_from: checkpoint resumed from, if any.
        losses: loss of every step run by this call, in order.
        valid: the last validation pass of this call (``valid_loss``, ``valid_<metric>``,
            ...); empty without ``data.valid``.
    """

    steps: int
    final_loss: float
    skipped_rows: int
    seconds: float
    output_dir: Path
    resumed_from: Path | None = None
    losses: list[float] = field(default_factory=list)
    valid: dict[str, float] = field(default_factory=dict)

    def summary(self) -> str:
        """One line for the console."""
        valid = f"valid_loss={self.valid['valid_loss']:.4f} " if "valid_loss" in self.valid else ""
        return (f"done: steps={self.steps} final_loss={self.final_loss:.4f} {valid}"
                f"skipped_rows={self.skipped_rows} time={self.seconds:.1f}s "
                f"output={self.output_dir}")


# --------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------


def to_device(batch: Any, device: torch.device) -> Any:
    """Move every tensor in a (nested) batch to ``device``."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)) and batch and isinstance(batch[0], torch.Tensor):
        return type(batch)(to_device(v, device) for v in batch)
    return batch


def use_bf16(precision: str, device: torch.device) -> bool:
    """bf16 autocast on CUDA for ``auto``/``bf16``; CPU always trains in fp32."""
    return device.type == "cuda" and precision in ("auto", "bf16")


class MetricsLog:
    """Append-only JSONL metrics (rank 0). On resume, lines past the resumed step (written
    after the last checkpoint of a crashed run) are dropped first."""

    def __init__(self, path: Path, resume_step: int | None):
        self.path = path
        if resume_step is not None and path.is_file():
            kept = [line for line in path.read_text().splitlines()
                    if _record_step(line) is not None and _record_step(line) <= resume_step]
            path.write_text("".join(line + "\n" for line in kept))
        elif resume_step is None and path.is_file():
            path.unlink()

    def write(self, record: dict[str, Any]) -> None:
        with self.path.open("a") as fh:
            fh.write(json.dumps(record) + "\n")


def _record_step(line: str) -> int | None:
    """The ``step`` of one metrics line; ``None`` for a blank or torn line."""
    try:
        return int(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        return None


def _progress(cfg: TrainConfig, info: DistInfo, start: int) -> Any:
    from tqdm.auto import tqdm

    enabled = cfg.progress and info.is_main and sys.stderr.isatty()
    return tqdm(total=cfg.optim.max_steps, initial=start, disable=not enabled,
                desc=cfg.stage, unit="step", dynamic_ncols=True)


# --------------------------------------------------------------------------------------
# Building blocks of train()
# --------------------------------------------------------------------------------------


def build_stage_model(cfg: TrainConfig, stage: Stage) -> tuple[nn.Module, Any]:
    """The model of ``stage`` (MinMo from ``cfg.model`` unless the stage brings its own).

    Returns:
        (model, resolved model config or ``None``).
    """
    if stage.build_model is not None:
        return stage.build_model(cfg), None
    from minmo.checkpoints.overlay import package_dir, package_model_config
    from minmo.models.builders import build_model

    package = package_dir(cfg.init) if cfg.init else None
    if package is not None:  # the package's own model, whatever `model` says
        model_cfg = package_model_config(package)
        log.info("model: %s's model.yaml (init is that package; model=%s is not used)",
                 package, cfg.model)
    else:
        model_cfg = load_model_config(cfg.model)
    return build_model(model_cfg), model_cfg


def _frozen_groups(model: nn.Module, stage: Stage) -> list[str]:
    """The model's parameter groups that ``stage`` does not train."""
    return [g for g, params in model.param_groups().items() if params and g not in stage.trains]


def _copy_in(model: nn.Module, tensors: dict[str, torch.Tensor], source: Path
             ) -> dict[str, torch.Tensor]:
    """Copy ``tensors`` (any subset of the model's, names checked) into ``model``; returns
    those that differ from what it held."""
    targets = model.state_dict(keep_vars=True)
    check_keys({k: v.shape for k, v in targets.items()}, {k: v.shape for k, v in tensors.items()},
               str(source), allow_missing=True)
    changed = {}
    with torch.no_grad():
        for k, v in tensors.items():
            v = v.to(dtype=targets[k].dtype)
            if not torch.equal(targets[k].detach().cpu(), v):
                changed[k] = v
            targets[k].copy_(v)
    return changed


def _lora_scaling(model: nn.Module) -> float | None:
    """``alpha / r`` of a MinMo's LLM adapters; ``None`` for a model without an LLM."""
    lora = getattr(getattr(model, "llm", None), "lora_cfg", None)
    return lora.alpha / lora.r if lora is not None else None


def load_init_weights(model: nn.Module, path: str) -> dict[str, torch.Tensor]:
    """Load ``cfg.init`` (a previous stage's checkpoint or run directory, a ``.safetensors``
    file, or a model package such as ``minmo-small``: :func:`ckpt.init_tensors`) into
    ``model``; it may hold any subset of the model's tensors. LoRA tensors in it make the
    model add its adapters first (kept frozen unless the stage trains them).

    Returns:
        The loaded tensors that differ from what the model was built with: the weights this
        run *carries* from earlier stages (written to every checkpoint, so that the next
        stage's ``init`` gets them too).
    """
    source, tensors = ckpt.init_tensors(path, _lora_scaling(model))
    carried: dict[str, torch.Tensor] = {}
    rest = dict(tensors)
    if any("lora_" in k for k in tensors) and hasattr(model, "enable_lora"):
        # plain names of the weights the adapters wrap (a package's base weights) load
        # before the adapters rename them (``q_proj.weight`` -> ``q_proj.base_layer.weight``)
        plain = model.state_dict()
        carried.update(_copy_in(model, {k: rest.pop(k) for k in list(rest) if k in plain},
                                source))
        model.enable_lora()
    carried.update(_copy_in(model, rest, source))
    log.info("init: loaded %d tensors from %s (%d differ from the built model)", len(tensors),
             source, len(carried))
    return carried


def find_resume(cfg: TrainConfig, info: DistInfo) -> Path | None:
    """The checkpoint to resume from: ``cfg.resume`` when it is a path, the latest in
    ``output_dir`` when ``auto``, none when ``never``. Rank 0 decides for all."""
    found: Path | None = None
    if info.is_main:
        ckpt.remove_temporaries(cfg.output_dir)
        if cfg.resume == "auto":
            found = ckpt.latest_checkpoint(cfg.output_dir)
        elif cfg.resume == "never":
            existing = ckpt.latest_checkpoint(cfg.output_dir)
            if existing is not None:
                raise TrainingError(f"{cfg.output_dir}: already holds checkpoints (latest "
                                    f"{existing.name}) and resume=never; use resume=auto to "
                                    "continue, or another output_dir to start over")
        else:
            found = ckpt.resolve_checkpoint(cfg.resume)
    found = broadcast_object(str(found) if found else None, info)
    return Path(found) if found else None


def build_optimizers(stage: Stage, model: nn.Module, cfg: TrainConfig
                     ) -> tuple[dict[str, torch.optim.Optimizer], dict[str, Any]]:
    """Optimizers (the stage's own, or one AdamW ``"main"``) and a warmup-cosine scheduler
    for each."""
    if stage.build_optimizers is not None:
        optimizers = stage.build_optimizers(model, cfg.optim)
    else:
        optimizers = {"main": build_adamw(model.parameters(), cfg.optim)}
    schedulers = {name: build_scheduler(opt, cfg.optim) for name, opt in optimizers.items()}
    return optimizers, schedulers


def build_data(stage: Stage, cfg: TrainConfig, model: nn.Module, info: DistInfo) -> BatchSource:
    """The stage's own data, or the manifest data of ``cfg.data`` collated for ``model``."""
    if stage.build_data is not None:
        return stage.build_data(cfg, model, info.rank, info.world_size)
    from minmo.training.manifest_data import build_manifest_source

    return build_manifest_source(cfg, model, info.rank, info.world_size)


def micro_batches(stream: Iterator[tuple[Any, DataPosition]], count: int, info: DistInfo,
                  last_good: list[Any]) -> tuple[list[tuple[Any, float]], DataPosition]:
    """Take ``count`` micro-batches; a ``None`` batch (all rows bad) becomes a zero-weight
    placeholder (the previous good batch) so every rank runs the same collectives. Alone, a
    ``None`` batch is simply skipped, unless a whole epoch passes without a good one.

    Raises:
        TrainingError: every row is bad (no good batch for a whole epoch).
    """
    out: list[tuple[Any, float]] = []
    position = DataPosition()
    bad_since: int | None = None  # epoch of the first of the bad batches in a row
    while len(out) < count:
        batch, position = next(stream)
        if batch is not None:
            last_good[:] = [batch]
            out.append((batch, 1.0))
            bad_since = None
        elif not info.distributed:
            bad_since = position.epoch if bad_since is None else bad_since
            if position.epoch > bad_since + 1:
                raise TrainingError("no usable row in a whole epoch: every row is bad; fix the "
                                    "manifest rows reported above")
        else:
            if not last_good:
                raise TrainingError("every row of this process's first batch is bad; fix the "
                                    "manifest rows reported above")
            out.append((last_good[0], 0.0))
    return out, position


def save_checkpoint(cfg: TrainConfig, info: DistInfo, model: nn.Module, raw: nn.Module,
                    optimizers: dict[str, torch.optim.Optimizer], schedulers: dict[str, Any],
                    step: int, position: DataPosition, extra_state: dict[str, Any],
                    configs: dict[str, Any], carried: dict[str, torch.Tensor]) -> Path | None:
    """Gather everything (collective) and write one checkpoint on rank 0; prune old ones.
    ``carried``: frozen tensors this run took from ``init`` (written alongside)."""
    trainable = gather_model_state(model, trainable_only=True)
    full = gather_model_state(model, trainable_only=False) if cfg.save_full_weights else None
    llm = getattr(raw, "llm", None)
    if full and getattr(llm, "lora_enabled", False):
        full = ckpt.merge_lora(full, _lora_scaling(raw))
    optim_states = {name: gather_optimizer_state(model, opt) for name, opt in optimizers.items()}
    rng = [ckpt.capture_rng()]
    if info.distributed:
        import torch.distributed as dist

        rng = [None] * info.world_size
        dist.all_gather_object(rng, ckpt.capture_rng())
    path = None
    if info.is_main:
        payload = ckpt.CheckpointPayload(
            step=step, position=position, trainable=trainable, full=full,
            optimizers=optim_states,
            schedulers={name: s.state_dict() for name, s in schedulers.items()},
            rng=rng, state={**extra_state, "world_size": info.world_size,
                            "versions": library_versions()}, configs=configs,
            carried=carried or None,
        )
        path = ckpt.write_checkpoint(cfg.output_dir, payload, lora_writer=_lora_writer(raw, info, trainable, carried))
        ckpt.prune_checkpoints(cfg.output_dir, cfg.keep_last)
        log.info("saved checkpoint %s", path)
    barrier(info)
    return path


def _lora_writer(raw: nn.Module, info: DistInfo, trainable: dict[str, torch.Tensor],
                 carried: dict[str, torch.Tensor]) -> Any:
    """A function writing the LLM's LoRA adapters in peft layout (``LLM.save_lora``), or
    ``None`` without LoRA.

    Unsharded models write their own tensors. Under FSDP the module holds only shards, so
    ``save_lora`` gets the gathered tensors: the trained ones (``trainable``) or, when the
    stage keeps LoRA frozen, those taken from ``init`` (``carried``); peft key =
    ``base_model.model.`` + the name inside the transformers model with the adapter name
    (``.default``) removed (``save_lora`` checks them against ``lora_keys()``)."""
    llm = getattr(raw, "llm", None)
    if llm is None or not getattr(llm, "lora_enabled", False):
        return None
    if info.mode != "fsdp":
        return llm.save_lora
    prefix = "llm.model."
    adapters = {"base_model.model." + name[len(prefix):].replace(".default.", "."): tensor
                for name, tensor in {**carried, **trainable}.items()
                if name.startswith(prefix) and "lora_" in name}

    def write(directory: Path) -> None:
        try:
            llm.save_lora(directory, tensors=adapters)
        except KeyError as exc:
            raise CheckpointError(f"{exc.args[0]} (the gathered state lacks LoRA tensors that "
                                  "are neither trained in this stage nor taken from init)"
                                  ) from None

    return write


def _debug_kill(step: int) -> None:
    target = os.environ.get(KILL_ENV)
    if target and int(target) == step:
        log.warning("%s=%s: killing this process now", KILL_ENV, target)
        logging.shutdown()
        os.kill(os.getpid(), signal.SIGKILL)


# --------------------------------------------------------------------------------------
# train()
# --------------------------------------------------------------------------------------


def train(cfg: TrainConfig, model: nn.Module | None = None, source: BatchSource | None = None,
          model_config: Any = None) -> TrainResult:
    """Run (or resume) one training stage.

    Args:
        cfg: the training config.
        model: an already built model (tests); default: built from ``cfg.model``/the stage.
            It must be identical on every rank.
        source: batches (tests); default: the stage's data or ``cfg.data`` manifests.
        model_config: the resolved model config to store in checkpoints with ``model``.

    Returns:
        :class:`TrainResult` (also printed as one summary line by the CLI).

    Raises:
        TrainingError, ConfigError, CheckpointError: with a message naming file and fix.
    """
    t0 = time.perf_counter()
    info = init_distributed(cfg.distributed)
    try:
        return _train(cfg, info, model, source, model_config, t0)
    finally:
        shutdown_distributed(info)


def _train(cfg: TrainConfig, info: DistInfo, model: nn.Module | None,
           source: BatchSource | None, model_cfg: Any, t0: float) -> TrainResult:
    stage = _checked_stage(cfg, needs_manifests=source is None)
    cfg = _full_weights_resolved(cfg, info)
    out_dir = Path(cfg.output_dir)
    if info.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)

    ckpt.seed_everything(cfg.seed)  # same initial weights on every rank
    if model is None:
        model, model_cfg = build_stage_model(cfg, stage)
        if not cfg.init and stage.build_model is None and info.is_main:
            log.warning("init is not set: every part starts from random weights, and the "
                        "parts this stage freezes (%s) stay so; start from a model package "
                        "(init=minmo-small), a converted checkpoint (minmo convert) or an "
                        "earlier stage's run", ", ".join(_frozen_groups(model, stage)))
    carried = _prepare_model(model, stage, cfg)
    resume = _resume_checkpoint(cfg, info, stage, model)

    model.train()
    wrapped = wrap_model(model, info)
    raw = unwrap_model(wrapped)
    if info.distributed and info.is_main:
        log.info("distributed: %s over %d processes (%s)", info.mode, info.world_size,
                 "nccl" if info.device.type == "cuda" else "gloo")
    optimizers, schedulers = build_optimizers(stage, raw, cfg)
    step, position = _restore_training_state(resume, wrapped, optimizers, schedulers, cfg, info)

    if source is None:
        source = build_data(stage, cfg, raw, info)
    valid_set = build_valid_set(cfg, stage, raw, info)
    valid: dict[str, float] = {}
    valid_reported: set[str] = set()
    configs: dict[str, Any] = {"config.yaml": cfg}
    if model_cfg is not None:
        configs["model.yaml"] = model_cfg
    metrics = MetricsLog(out_dir / METRICS_FILE, resume.step if resume else None) \
        if info.is_main else None

    bf16 = use_bf16(cfg.precision, info.device)
    if cfg.precision == "bf16" and not bf16 and info.is_main:
        log.warning("precision bf16 asked, but no CUDA device: training in fp32 on CPU")

    def autocast() -> Any:
        return torch.autocast("cuda", dtype=torch.bfloat16) if bf16 else null_context()

    def accumulate(is_last: bool) -> Any:
        return gradient_sync(wrapped, info, is_last)

    stream = source.batches(position)
    last_good: list[Any] = []
    losses: list[float] = []
    final_loss = float(resume.state.get("loss", math.nan)) if resume else math.nan
    prior_bad = set(resume.state.get("bad_rows", [])) if resume else set()
    throughput = _Throughput()
    checked_keys = False
    bar = _progress(cfg, info, step)
    spent = float(resume.state.get("train_seconds", 0.0)) if resume else 0.0  # earlier invocations
    loop_start = time.perf_counter()
    deadline = loop_start + 60 * cfg.max_minutes - spent if cfg.max_minutes > 0 else None
    # a resumed run whose budget earlier invocations spent does nothing (a fresh run always steps)
    out_of_time = resume is not None and deadline is not None and _past(deadline, info)
    while step < cfg.optim.max_steps and not out_of_time:
        micro, position = micro_batches(stream, cfg.optim.grad_accum, info, last_good)
        micro = [(to_device(b, info.device), w) for b, w in micro]
        if not checked_keys:
            _check_batch_keys(stage, micro[0][0])
            checked_keys = True
        ctx = StepContext(wrapped, raw, stage, micro, optimizers, schedulers,
                          cfg.optim.grad_clip, autocast, accumulate, step)
        lr = next(iter(optimizers.values())).param_groups[0]["lr"]  # used by this step
        out: StepOutput = stage.step(ctx)
        step += 1
        out_of_time = deadline is not None and _past(deadline, info)
        last_step = step == cfg.optim.max_steps or out_of_time
        loss, metric_means, examples = _reduce_step(out, info)
        final_loss = loss
        losses.append(loss)
        throughput.add(examples)
        validate = valid_set is not None and (should_validate(cfg, step) or out_of_time)
        if validate:
            valid = evaluate(raw, stage, valid_set, info, autocast, micro[0][0], to_device,
                             valid_reported)
            throughput.exclude(valid["valid_seconds"])  # examples_per_s counts training only
        bar.update(1)
        bar.set_postfix(loss=f"{loss:.4f}", **({"valid_loss": f"{valid['valid_loss']:.4f}"}
                                               if valid else {}))
        log_now = step % max(1, cfg.log_every) == 0 or last_step or validate
        save_now = step % max(1, cfg.save_every) == 0 or last_step
        # one gather of the bad rows for the line and the checkpoint of a step (collective)
        bad = _global_bad_rows(source, info, prior_bad) if log_now or save_now else set()
        if log_now:
            record = {"step": step, "loss": loss, "lr": lr,
                      **out.grad_norms, **metric_means,
                      "examples_per_s": throughput.rate(), "skipped_rows": len(bad),
                      "epoch": position.epoch, "skipped_update": out.skipped_update,
                      **(valid if validate else {})}
            if metrics is not None:
                metrics.write(record)
                if bar.disable:  # no progress bar (a log file, a batch job): one line instead
                    log.info("%s", _step_line(record, cfg.optim.max_steps))
        if save_now:
            extra = {"stage": stage.name, "loss": loss, "skipped_rows": len(bad),
                     "bad_rows": sorted(bad), "train_seconds": spent + time.perf_counter() - loop_start}
            save_checkpoint(cfg, info, wrapped, raw, optimizers, schedulers, step, position,
                            extra, configs, carried)
            _debug_kill(step)
    bar.close()
    if out_of_time and info.is_main:
        log.info("max_minutes=%g of training spent at step %d: checkpoint saved, stopping "
                 "(raise max_minutes and run again to continue)", cfg.max_minutes, step)
    return TrainResult(steps=step, final_loss=final_loss,
                       skipped_rows=len(_global_bad_rows(source, info, prior_bad)),
                       seconds=time.perf_counter() - t0, output_dir=out_dir,
                       resumed_from=resume.path if resume else None, losses=losses, valid=valid)


def _full_weights_resolved(cfg: TrainConfig, info: DistInfo) -> TrainConfig:
    """``save_full_weights: null`` made true or false: true when ``init`` is a model package
    (the run is then a model ``minmo chat/serve --model`` load, with the package's speech
    output), false otherwise."""
    if cfg.save_full_weights is not None:
        return cfg
    from minmo.checkpoints.overlay import package_dir

    full = bool(cfg.init) and package_dir(cfg.init) is not None
    if full and info.is_main:
        log.info("init is a model package: every checkpoint holds the whole model "
                 "(save_full_weights), so the run is a model for minmo chat/serve --model")
    return dataclasses.replace(cfg, save_full_weights=full)


def _step_line(record: dict[str, Any], max_steps: int) -> str:
    """``step 40/100 loss 0.9459 lr 1.58e-04 2.49 ex/s`` (+ validation loss, skipped rows)."""
    line = (f"step {record['step']}/{max_steps} loss {record['loss']:.4f} lr {record['lr']:.2e} "
            f"{record['examples_per_s']:.2f} ex/s")
    if "valid_loss" in record:
        line += f" valid_loss {record['valid_loss']:.4f}"
    return line + (f" skipped_rows {record['skipped_rows']}" if record["skipped_rows"] else "")


def _checked_stage(cfg: TrainConfig, needs_manifests: bool) -> Stage:
    """The stage ``cfg`` names (with its auxiliary losses), after the checks that need no
    model: stage name, step counts, manifests (when the stage reads ``cfg.data``) and the
    validation settings."""
    try:
        stage = with_aux_losses(get_stage(cfg.stage), cfg.aux_losses)
    except KeyError as exc:
        raise ConfigError(f"stage: {exc.args[0]}") from None
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    if cfg.optim.grad_accum < 1 or cfg.optim.max_steps < 1:
        raise ConfigError("optim.grad_accum and optim.max_steps must be >= 1")
    if stage.build_data is None and needs_manifests:
        from minmo.training.manifest_data import check_manifests

        check_manifests(cfg)
    check_valid_config(cfg)
    return stage


def _prepare_model(model: nn.Module, stage: Stage, cfg: TrainConfig) -> dict[str, torch.Tensor]:
    """Load ``cfg.init``, apply the stage's freeze matrix and its own preparation.

    Returns:
        The frozen tensors taken from ``init`` (:func:`load_init_weights`), which every
        checkpoint of this run carries on to the next stage.
    """
    carried = load_init_weights(model, cfg.init) if cfg.init else {}
    try:
        trainable_names = set(apply_stage(model, stage))
    except ValueError as exc:
        raise ConfigError(f"stage '{stage.name}': {exc}") from None
    if stage.prepare is not None:
        stage.prepare(model, cfg)
    return {k: v for k, v in carried.items() if k not in trainable_names}


def _resume_checkpoint(cfg: TrainConfig, info: DistInfo, stage: Stage,
                       model: nn.Module) -> ckpt.ResumeState | None:
    """The checkpoint this run resumes from (:func:`find_resume`), its trainable tensors
    loaded into the (not yet wrapped) ``model``; ``None`` for a fresh run."""
    resume_path = find_resume(cfg, info)
    if resume_path is None:
        return None
    resume = ckpt.read_checkpoint(resume_path)
    saved_stage = resume.state.get("stage")
    if saved_stage not in (None, stage.name):
        raise CheckpointError(f"{resume.path}: written by stage '{saved_stage}', this run is "
                              f"'{stage.name}'; use init= to start a new stage from it, or "
                              "another output_dir")
    ckpt.load_trainable(model, resume.trainable, str(resume.path / ckpt.TRAINABLE_FILE))
    return resume


def _restore_training_state(resume: ckpt.ResumeState | None, wrapped: nn.Module,
                            optimizers: dict[str, torch.optim.Optimizer],
                            schedulers: dict[str, Any], cfg: TrainConfig,
                            info: DistInfo) -> tuple[int, DataPosition]:
    """Optimizer and scheduler states, this rank's RNG and the data position of ``resume``;
    a fresh run seeds each rank apart instead.

    Returns:
        (optimizer steps done, where the data stream continues).
    """
    if resume is None:
        ckpt.seed_everything(cfg.seed + info.rank)
        return 0, DataPosition()
    for name, opt in optimizers.items():
        if name not in resume.optimizers:
            raise CheckpointError(f"{resume.path / ckpt.OPTIMIZER_FILE}: no state for "
                                  f"optimizer '{name}'")
        load_optimizer_state(wrapped, opt, resume.optimizers[name])
    for name, sched in schedulers.items():
        sched.load_state_dict(resume.schedulers[name])
    if info.rank < len(resume.rng):
        ckpt.restore_rng(resume.rng[info.rank])
    else:
        log.warning("resuming with more processes than saved; RNG of rank %d reseeded",
                    info.rank)
        ckpt.seed_everything(cfg.seed + info.rank + 7919 * resume.step)
    log.info("resumed from %s at step %d (epoch %d, batch %d)", resume.path, resume.step,
             resume.position.epoch, resume.position.index)
    return resume.step, resume.position


class _Throughput:
    """Training examples per second since the last metrics line, with validation passes
    left out of the time."""

    def __init__(self) -> None:
        self.examples, self.since = 0.0, time.perf_counter()

    def add(self, examples: float) -> None:
        self.examples += examples

    def exclude(self, seconds: float) -> None:
        self.since += seconds

    def rate(self) -> float:
        """The rate since the last call (or since this meter was made); starts a new window."""
        now = time.perf_counter()
        rate = self.examples / max(now - self.since, 1e-9)
        self.examples, self.since = 0.0, now
        return rate


def _past(deadline: float, info: DistInfo) -> bool:
    """Whether any process has passed ``deadline`` (all processes agree, so they stop at the
    same step)."""
    late = float(time.perf_counter() >= deadline)
    return (all_reduce_sum([late], info)[0] if info.distributed else late) > 0


def _check_batch_keys(stage: Stage, batch: dict[str, Any]) -> None:
    missing = [k for k in stage.needs if k not in batch]
    if missing:
        raise TrainingError(f"stage '{stage.name}' needs {missing} in every batch, the data has "
                            f"none: add them to the manifest rows (e.g. speech_tokens via "
                            f"`minmo tokenize MANIFEST`; duplex rows: the labels .npz)")


def _reduce_step(out: StepOutput, info: DistInfo) -> tuple[float, dict[str, float], float]:
    """Average loss and metrics over ranks, weighted by real micro-batches; total examples."""
    names = sorted(out.metrics)
    if info.distributed:
        import torch.distributed as dist

        all_names: list[Any] = [None] * info.world_size
        dist.all_gather_object(all_names, names)
        names = sorted({n for ns in all_names for n in ns})
    w = float(out.weight)
    loss_part = out.loss * w if w else 0.0
    values = [loss_part, w, float(out.examples)]
    values += [out.metrics.get(n, 0.0) * w for n in names]
    values += [w if n in out.metrics else 0.0 for n in names]
    red = all_reduce_sum(values, info)
    total_w = red[1]
    loss = red[0] / total_w if total_w else math.nan
    k = len(names)
    metric_means = {n: red[3 + i] / red[3 + k + i] for i, n in enumerate(names) if red[3 + k + i]}
    return loss, metric_means, red[2]


def _global_bad_rows(source: BatchSource, info: DistInfo, prior: set[str]) -> set[str]:
    """Keys of the unique bad rows met by all ranks, plus those of the run before a resume
    (``prior``). Collective under several processes."""
    keys = {str(k) for k in source.bad_rows}
    if info.distributed:
        import torch.distributed as dist

        gathered: list[Any] = [None] * info.world_size
        dist.all_gather_object(gathered, keys)
        keys = set().union(*gathered)
    return keys | prior

