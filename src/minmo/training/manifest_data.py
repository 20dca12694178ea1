"""The default training data: ``cfg.data.train`` manifests through ``minmo.data``'s loader,
adapted to the loop's :class:`~minmo.training.data_source.BatchSource` protocol.

``minmo.data.loader.build_loader`` gives a resumable, multi-worker loader (manifest dataset,
length-bucketed batch sampler, ChatML collate). Rank ``r`` of ``R`` takes global batches
``r, r+R, ...``, so one optimizer step of ``R`` processes sees the same examples as one
process with ``grad_accum = R``.

Bad rows never stop training: schema and header problems are dropped when the manifests
are read, file problems when a row is loaded; each is logged once (file, line or id, why,
fix) and counted. In the speech stages a row without ``speech_tokens`` is such a bad row too
(dropped when the manifests are read; the warning names ``minmo tokenize``). A missing manifest file or an empty training set is a
:class:`~minmo.training.errors.TrainingError`.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import nn

from minmo.config import ConfigError, TrainConfig
from minmo.data.manifest import SPEECH_OUTPUT_TASKS, TASKS
from minmo.training.data_source import Batch, DataPosition
from minmo.training.errors import TrainingError

log = logging.getLogger(__name__)

S2T_TASKS = ("asr", "s2tt", "lid", "casr", "ser", "aed", "sa", "s2t_chat", "s2s_chat")
STAGE_TASKS: dict[str, tuple[str, ...]] = {
    "s2t_ctc": ("asr",),
    "s2t_prealign": S2T_TASKS,
    "s2t_fullalign": S2T_TASKS,
    "s2t_sft": S2T_TASKS,
    "t2s_projector": ("tts", "instruct_tts"),
    "t2s_full": ("tts", "instruct_tts"),
    "s2s": ("s2s_chat",),
    "s2s_dpo": ("s2s_chat", "tts", "instruct_tts"),
    "duplex": ("duplex",),
}
"""Manifest tasks each MinMo stage trains on; rows of other tasks are left out (not bad)."""

TOKEN_FIELDS = ("speech_tokens", "rejected_speech_tokens")
"""Row fields of speech tokens; a stage's ``Stage.needs`` says which its loss reads."""


def token_fields(stage: str) -> tuple[str, ...]:
    """The fields of :data:`TOKEN_FIELDS` that ``stage``'s loss reads (``()``: none, or an
    unregistered stage): ``speech_tokens`` for the speech stages, and
    ``rejected_speech_tokens`` too for a preference stage (``s2s_dpo``)."""
    from minmo.training.stages import STAGES

    needs = STAGES[stage].needs if stage in STAGES else ()
    return tuple(k for k in TOKEN_FIELDS if k in needs)


def stage_tasks(cfg: TrainConfig) -> tuple[str, ...] | None:
    """The manifest tasks ``cfg`` trains on: ``data.tasks`` when set (e.g. ``s2s`` on
    ``s2s_chat`` with ``tts`` rows mixed in, so the voice LM keeps reading text aloud),
    else the stage's own (:data:`STAGE_TASKS`; None: every task).

    Raises:
        ConfigError: ``data.tasks`` names an unknown task, or one whose rows the stage's
            loss cannot read (a speech stage needs tasks with speech output).
    """
    if not cfg.data.tasks:
        return STAGE_TASKS.get(cfg.stage)
    unknown = sorted(set(cfg.data.tasks) - set(TASKS))
    if unknown:
        raise ConfigError(f"data.tasks: unknown task(s) {unknown} (tasks: {', '.join(TASKS)})")
    if token_fields(cfg.stage):
        allowed = SPEECH_OUTPUT_TASKS
    else:
        allowed = frozenset(STAGE_TASKS.get(cfg.stage, TASKS))
    wrong = sorted(set(cfg.data.tasks) - allowed)
    if wrong:
        raise ConfigError(f"data.tasks: stage '{cfg.stage}' cannot train on {wrong} "
                          f"(its loss reads tasks {', '.join(sorted(allowed))})")
    return tuple(cfg.data.tasks)


FIX_HINT = "fix or remove the row (`minmo data check MANIFEST` lists every bad row)"
MISSING_SPEECH_TOKENS = "missing_speech_tokens"
"""Bad-row kind of a speech-stage row without ``speech_tokens`` (its message holds the fix)."""


class LoaderBatchSource:
    """:class:`BatchSource` over a ``minmo.data.loader.ResumableLoader``.

    Args:
        loader: the resumable loader (one epoch per iteration).
    """

    def __init__(self, loader: Any):
        self.loader = loader
        self._bad: set[str] = set()
        for bad in loader.dataset.bad:
            key = f"{bad.source}:{bad.line}"
            self._bad.add(key)
            if bad.kind == MISSING_SPEECH_TOKENS:
                log.warning("skipping bad row %s", bad)
            else:
                log.warning("skipping bad row %s: %s", bad, FIX_HINT)

    @property
    def bad_rows(self) -> set[str]:
        return set(self._bad)

    @property
    def skipped(self) -> int:
        return len(self._bad)

    def _note_skipped(self, batch: Batch) -> None:
        for item in batch.get("skipped", []):
            row_id = item.split(": ", 1)[0]
            if row_id not in self._bad:
                self._bad.add(row_id)
                log.warning("skipping bad row (id %s): %s", item, FIX_HINT)

    def batches(self, start: DataPosition = DataPosition()) -> Iterator[tuple[Batch | None, DataPosition]]:
        self.loader.load_state_dict({"epoch": start.epoch, "batch": start.index})
        while True:
            epoch_iter = iter(self.loader)
            empty_epoch = True
            while True:
                # The DataLoader draws its worker seed from the global torch RNG when an
                # epoch's iterator starts; fork it so data loading never moves the training
                # RNG (a resumed run starts an iterator mid-epoch, a straight run does not).
                with torch.random.fork_rng(devices=[]):
                    batch = next(epoch_iter, None)
                if batch is None:
                    break
                empty_epoch = False
                self._note_skipped(batch)
                state = self.loader.state_dict()
                position = DataPosition(int(state["epoch"]), int(state["batch"]))
                yield (batch if batch["ids"] else None), position
            if empty_epoch and start.index == 0:
                raise TrainingError("an epoch produced no batches: the training set is empty")
            start = DataPosition()


def check_manifests(cfg: TrainConfig) -> None:
    """Fail fast (before building the model) when ``data.train`` is empty or names a
    manifest that does not exist.

    Raises:
        TrainingError: naming the missing file and the fix.
    """
    from minmo.data.manifest import expand_manifest_paths

    if not cfg.data.train:
        raise TrainingError("data.train is empty: list the training manifests (.jsonl files "
                            "or directories) in the config or as data.train=[path.jsonl]")
    for path in expand_manifest_paths(cfg.data.train):
        if not Path(path).is_file():
            raise TrainingError(f"{path}: manifest file not found (data.train); fix the path "
                                "or create it with `minmo data synth --out DIR`")


def drop_rows_without_speech_tokens(loader: Any, stage: str, manifests: list[str],
                                    key: str = "data.train") -> Any:
    """In a speech stage, move the rows without the token fields its loss reads
    (:func:`token_fields`: ``speech_tokens``, and ``rejected_speech_tokens`` in ``s2s_dpo``)
    from ``loader.dataset.rows`` to its bad rows (kind
    :data:`MISSING_SPEECH_TOKENS`, message naming ``minmo tokenize`` and the manifest) and
    rebuild the batch sampler with the same settings over the rows left.

    Args:
        loader: a ``ResumableLoader`` that has not been iterated yet.
        stage: the stage name; other stages return ``loader`` unchanged.
        manifests: the manifests it reads (for the error message).
        key: the config key of ``manifests``.

    Returns:
        ``loader`` itself when every row has speech tokens, else a new loader.

    Raises:
        TrainingError: no row has speech tokens.
    """
    from minmo.data.loader import ResumableLoader
    from minmo.data.manifest import BadRow
    from minmo.data.sampler import DynamicBatchSampler

    dataset = loader.dataset
    fields = token_fields(stage)
    pairs = "rejected_speech_tokens" in fields

    def usable(row: Any) -> bool:
        return all(getattr(row, key) for key in fields)

    if not fields or all(map(usable, dataset.rows)):
        return loader
    kept = [row for row in dataset.rows if usable(row)]
    fill = ("make preference rows with `scripts/judged_speech_targets.py --pairs`" if pairs
            else "fill them with `minmo tokenize MANIFEST`")
    wanted = "'speech_tokens' and 'rejected_speech_tokens'" if pairs else "'speech_tokens'"
    if not kept:
        raise TrainingError(f"stage '{stage}' trains on speech tokens, but no row of "
                            f"{', '.join(map(str, manifests))} ({key}) has {wanted}: {fill}")
    for row in dataset.rows:
        if not usable(row):
            source, _, line = str(row.meta.get("_source", "?:0")).rpartition(":")
            fix = fill if pairs else f"fill them with `minmo tokenize {source}`"
            dataset.bad.append(BadRow(
                source, int(line or 0), row.id, MISSING_SPEECH_TOKENS,
                f"stage '{stage}' trains on {wanted} and this row lacks them: {fix} or remove "
                "the row"))
    dataset.rows = kept
    old = loader.sampler
    sampler = DynamicBatchSampler(
        dataset.lengths(), batch_size=old.batch_size, max_batch_seconds=old.max_batch_seconds,
        max_batch_size=old.max_batch_size, shuffle=old.shuffle, seed=old.seed,
        bucket_size=old.bucket_size, num_replicas=old.num_replicas, rank=old.rank,
        drop_last=old.drop_last)
    return ResumableLoader(dataset, sampler, loader.collate,
                           num_workers=loader.loader.num_workers)


def build_manifest_source(cfg: TrainConfig, model: nn.Module, rank: int, world_size: int
                          ) -> LoaderBatchSource:
    """The loader of ``cfg.data.train`` for ``model`` (its front end, tokenizer and system
    prompt), keeping the tasks of ``cfg.stage``.

    Raises:
        TrainingError: no manifests configured, a manifest file missing, or no usable row.
    """
    from minmo.data.loader import build_loader

    check_manifests(cfg)
    model_cfg = getattr(model, "cfg", None)
    system_prompt = getattr(model_cfg, "system_prompt", "You are a helpful assistant.")
    tasks = stage_tasks(cfg)
    try:
        loader = build_loader(cfg.data, cfg.data.train, model.frontend, model.tokenizer,
                              system_prompt=system_prompt, seed=cfg.seed, rank=rank,
                              world_size=world_size, train=True, tasks=tasks)
    except ValueError as exc:
        where = f" for stage '{cfg.stage}' (tasks {', '.join(tasks)})" if tasks else ""
        raise TrainingError(f"{exc}{where}") from None
    loader = drop_rows_without_speech_tokens(loader, cfg.stage, cfg.data.train)
    source = LoaderBatchSource(loader)
    if rank == 0:
        log.info("data: %d rows from %d manifest(s), %d bad rows skipped",
                 len(loader.dataset), len(cfg.data.train), source.skipped)
    return source
