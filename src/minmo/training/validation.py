"""Validation during training: the stage's losses and metrics on ``data.valid``.

Every ``valid_every`` steps (and after the last step) the loop calls :func:`evaluate`: the
model in eval mode (no dropout) under ``torch.no_grad``, over the first
``valid_max_batches`` global batches of the validation manifests in file order (no
shuffling). Rank ``r`` of ``R`` runs global batches ``r, r+R, ...``; the per-batch mean
loss and metrics are summed over ranks and divided by the number of batches, so the result
is the same for any number of processes. Under several processes every rank runs the same
number of forward passes (FSDP gathers parameters collectively): a rank with fewer batches,
or with a batch whose rows are all bad, repeats a batch it already has with weight 0.

Each pass starts from the same seed, so stages that draw at random (the speech stages' crops
and flow-matching noise) are scored on the same draws every time. A validation pass must not
disturb training: it saves and restores every RNG (python, numpy, torch, CUDA) around itself, uses its own DataLoader, and puts the modules back in
train mode, so a run with validation trains exactly like one without it and resumes
bit-exactly.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ContextManager, Iterator

import torch
from torch import nn
from torch.utils.data import DataLoader

from minmo.config import TrainConfig
from minmo.training import checkpointing as ckpt
from minmo.training.distributed import DistInfo, all_reduce_sum
from minmo.training.errors import TrainingError
from minmo.training.stages import Stage, batch_size_of

log = logging.getLogger(__name__)

VALID_SEED = 20250110
"""Seed of every validation pass (speech stages crop and draw flow noise at random)."""

PREFIX = "valid_"
"""Prefix of the validation keys in ``metrics.jsonl`` (``valid_loss``, ``valid_text_acc``,
``valid_batches``, ...)."""


@dataclass
class ValidSet:
    """This rank's share of the validation batches.

    Attributes:
        dataset: map-style dataset (``dataset[(index, epoch)]`` -> example).
        collate: list of examples -> batch dict.
        shares: this rank's global batches (lists of dataset indices), in order.
        rounds: forward passes every rank runs (``ceil(global batches / world size)``).
        num_workers: DataLoader workers.
    """

    dataset: Any
    collate: Callable[[list[Any]], dict[str, Any]]
    shares: list[list[int]]
    rounds: int
    num_workers: int = 0

    def batches(self) -> Iterator[dict[str, Any]]:
        """This rank's batches, loaded and collated in order."""
        if not self.shares:
            return iter(())
        loader = DataLoader(self.dataset, batch_sampler=[[(i, 0) for i in b] for b in self.shares],
                            collate_fn=self.collate, num_workers=self.num_workers,
                            generator=torch.Generator())
        return iter(loader)


def check_valid_config(cfg: TrainConfig) -> None:
    """Fail fast (before the model is built) on a negative ``valid_every`` or a missing
    ``data.valid`` manifest.

    Raises:
        TrainingError: naming the key or file and the fix.
    """
    if cfg.valid_every < 0:
        raise TrainingError(f"valid_every must be >= 0 (0: validate only at the end), got "
                            f"{cfg.valid_every}")
    if not cfg.data.valid:
        return
    from minmo.data.manifest import expand_manifest_paths

    for path in expand_manifest_paths(cfg.data.valid):
        if not Path(path).is_file():
            raise TrainingError(f"{path}: manifest file not found (data.valid); fix the path "
                                "or leave data.valid empty")


def build_valid_set(cfg: TrainConfig, stage: Stage, model: nn.Module, info: DistInfo
                    ) -> ValidSet | None:
    """The validation batches of ``cfg.data.valid`` for this rank, or ``None`` when there
    are no validation manifests (or the stage brings its own data, which has no validation
    hook: a warning says so).

    Raises:
        TrainingError: a validation manifest is missing or has no usable row of the stage's
            tasks; ``valid_every`` is negative.
    """
    check_valid_config(cfg)
    if not cfg.data.valid:
        return None
    if stage.build_data is not None:
        if stage.build_valid_data is None:
            if info.is_main:
                log.warning("stage '%s' brings its own data and has no validation hook: "
                            "data.valid is not used", stage.name)
            return None
        examples, collate = stage.build_valid_data(cfg)
        bs = cfg.data.batch_size
        return _share([list(range(i, min(i + bs, len(examples)))) for i in range(0, len(examples), bs)],
                      _Indexed(examples), collate, cfg, info)
    from minmo.data.loader import build_loader
    from minmo.training.manifest_data import drop_rows_without_speech_tokens, stage_tasks

    tasks = stage_tasks(cfg)
    model_cfg = getattr(model, "cfg", None)
    system_prompt = getattr(model_cfg, "system_prompt", "You are a helpful assistant.")
    try:
        loader = build_loader(cfg.data, cfg.data.valid, model.frontend, model.tokenizer,
                              system_prompt=system_prompt, seed=cfg.seed, rank=0,
                              world_size=1, train=False, tasks=tasks)
        loader = drop_rows_without_speech_tokens(loader, cfg.stage, cfg.data.valid,
                                                 key="data.valid")
    except ValueError as exc:
        where = f" for stage '{cfg.stage}' (tasks {', '.join(tasks)})" if tasks else ""
        raise TrainingError(f"data.valid: {exc}{where}") from None
    if info.is_main:
        for bad in loader.dataset.bad:
            log.warning("validation: skipping bad row %s", bad)
    return _share(loader.sampler.global_batches(0), loader.dataset, loader.collate, cfg, info)


class _Indexed:
    """A list of ready examples addressed like the loaders' datasets (``(index, epoch)``)."""

    def __init__(self, examples: list[Any]):
        self.examples = examples

    def __getitem__(self, key: tuple[int, int]) -> Any:
        return self.examples[key[0]]


def _share(plan: list[list[int]], dataset: Any, collate: Callable[[list[Any]], dict[str, Any]],
           cfg: TrainConfig, info: DistInfo) -> ValidSet:
    """The first ``valid_max_batches`` global batches of ``plan``; this rank's share."""
    if cfg.valid_max_batches > 0:
        plan = plan[:cfg.valid_max_batches]
    world = info.world_size
    if info.is_main:
        log.info("validation: %d batches of %d rows from %d manifest(s)", len(plan),
                 sum(len(b) for b in plan), len(cfg.data.valid))
    return ValidSet(dataset, collate, plan[info.rank::world],
                    rounds=math.ceil(len(plan) / world), num_workers=cfg.data.num_workers)


def should_validate(cfg: TrainConfig, step: int) -> bool:
    """Validate after ``step``: every ``valid_every`` steps and after the last step."""
    return step == cfg.optim.max_steps or (cfg.valid_every > 0 and step % cfg.valid_every == 0)


def evaluate(model: nn.Module, stage: Stage, valid: ValidSet, info: DistInfo,
             autocast: Callable[[], ContextManager], fallback: dict[str, Any] | None,
             to_device: Callable[[Any, torch.device], Any],
             reported: set[str] | None = None) -> dict[str, float]:
    """One validation pass (collective under several processes).

    Args:
        model: the model to call (the unwrapped module under DDP; under FSDP the sharded
            module itself).
        stage: gives the losses (``model(batch, losses=stage.losses)``).
        valid: this rank's batches.
        info: process group info.
        autocast: the training autocast context (bf16 on CUDA).
        fallback: a batch on the device to run with weight 0 when this rank has no usable
            batch of its own in a round (a training batch); only needed with several
            processes.
        to_device: moves a batch to ``info.device``.
        reported: ids of bad validation rows already warned about (updated).

    Returns:
        ``{"valid_loss", "valid_<metric>", "valid_batches", "valid_examples",
        "valid_seconds"}``, equal on every rank (but ``valid_seconds``); ``valid_loss`` is
        ``nan`` when no batch had a usable row.
    """
    t0 = time.perf_counter()
    was_training = model.training
    rng = ckpt.capture_rng()
    reported = set() if reported is None else reported
    loss_sum, batches, examples = 0.0, 0, 0
    metric_sums: dict[str, float] = {}
    metric_counts: dict[str, int] = {}
    model.eval()
    ckpt.seed_everything(VALID_SEED)  # the same random crops / noise draws on every pass
    losses = stage.valid_losses or stage.losses
    try:
        with torch.no_grad():
            stream = valid.batches()
            rounds = valid.rounds if info.distributed else len(valid.shares)
            last_good = fallback
            for _ in range(rounds):
                batch = next(stream, None)
                for item in (batch or {}).get("skipped", []):
                    row_id = item.split(": ", 1)[0]
                    if row_id not in reported:
                        reported.add(row_id)
                        log.warning("validation: skipping bad row (id %s)", item)
                usable = batch is not None and batch_size_of(batch) > 0
                if usable:
                    batch = last_good = to_device(batch, info.device)
                elif not info.distributed:
                    continue
                elif last_good is None:
                    raise TrainingError("validation: this process has no usable batch to keep "
                                        "in step with the others; fix the bad data.valid rows "
                                        "reported above")
                with autocast():
                    out = model(batch if usable else last_good, losses=losses)
                if not usable:
                    continue
                loss_sum += float(out.loss.detach())
                batches += 1
                examples += batch_size_of(batch)
                for k, v in out.metrics.items():
                    metric_sums[k] = metric_sums.get(k, 0.0) + float(v)
                    metric_counts[k] = metric_counts.get(k, 0) + 1
    finally:
        model.train(was_training)
        ckpt.restore_rng(rng)
    out = _reduce(loss_sum, batches, examples, metric_sums, metric_counts, info)
    out[f"{PREFIX}seconds"] = time.perf_counter() - t0
    return out


def _reduce(loss_sum: float, batches: int, examples: int, metric_sums: dict[str, float],
            metric_counts: dict[str, int], info: DistInfo) -> dict[str, float]:
    """Sum over ranks and average per batch."""
    names = sorted(metric_sums)
    if info.distributed:
        import torch.distributed as dist

        gathered: list[Any] = [None] * info.world_size
        dist.all_gather_object(gathered, names)
        names = sorted({n for ns in gathered for n in ns})
    values = [loss_sum, float(batches), float(examples)]
    values += [metric_sums.get(n, 0.0) for n in names]
    values += [float(metric_counts.get(n, 0)) for n in names]
    red = all_reduce_sum(values, info)
    k = len(names)
    out = {f"{PREFIX}loss": red[0] / red[1] if red[1] else math.nan}
    out.update({f"{PREFIX}{n}": red[3 + i] / red[3 + k + i]
                for i, n in enumerate(names) if red[3 + k + i]})
    out[f"{PREFIX}batches"] = int(red[1])
    out[f"{PREFIX}examples"] = int(red[2])
    return out
