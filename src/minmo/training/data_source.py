"""Where the training loop gets its batches: a small protocol plus one implementation.

The loop only needs this from its data (:class:`BatchSource`)::

    for batch, position in source.batches(start=position):   # batch: dict or None
        ...
    source.bad_rows         # keys of the bad rows met so far (unique; unioned over ranks)
    source.skipped          # len(source.bad_rows)

``position`` (:class:`DataPosition`) is the place *after* the batch, so saving it with a
checkpoint and passing it back as ``start`` resumes on the very next batch.

:class:`IndexedBatchSource` implements it over any map-style dataset (``len`` +
``__getitem__``) and a collate function. Each epoch has a *plan*: the list of global batches
(lists of example indices), by default a permutation seeded by ``(seed, epoch)`` cut into
chunks of ``batch_size * world_size``; every rank takes its own contiguous share of each
global batch, so the global batch is the same whatever the number of processes. Rows whose
loading raises one of ``bad_row_errors`` are skipped and counted, never fatal; a rank whose
share is all bad yields ``None`` for that batch (the loop then runs a zero-weight step so
that collective operations stay in step).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Protocol, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

log = logging.getLogger(__name__)

Batch = dict[str, Any]


class SkipRow(Exception):
    """Raised by a dataset's ``__getitem__`` for a row that cannot be used (missing or
    unreadable file, bad labels, ...). The message should name the row and the file."""


@dataclass(frozen=True)
class DataPosition:
    """A place in the data stream.

    Attributes:
        epoch: 0-based epoch.
        index: global batches of this epoch's plan already consumed.
    """

    epoch: int = 0
    index: int = 0

    def to_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "index": self.index}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "DataPosition":
        return cls(epoch=int(d["epoch"]), index=int(d["index"]))


class BatchSource(Protocol):
    """What the training loop needs from its data."""

    @property
    def bad_rows(self) -> set[Any]:
        """Keys (row index, ``file:line``, ...) of the bad rows met so far by this process.
        The loop unions them over ranks, so a row met twice counts once."""
        ...

    @property
    def skipped(self) -> int:
        """``len(bad_rows)``."""
        ...

    def batches(self, start: DataPosition) -> Iterator[tuple[Batch | None, DataPosition]]:
        """Endless stream of ``(batch, position after it)`` from ``start`` on, across epochs.
        ``batch`` is ``None`` when every row of this rank's share was bad."""
        ...


def shuffled_plan(num_examples: int, global_batch: int, seed: int, shuffle: bool = True
                  ) -> Callable[[int], list[list[int]]]:
    """Default epoch plan: a permutation seeded by ``(seed, epoch)`` (no global RNG used),
    cut into global batches of ``global_batch`` examples (the last one may be smaller)."""

    def plan(epoch: int) -> list[list[int]]:
        if shuffle:
            order = np.random.default_rng([seed, epoch]).permutation(num_examples)
        else:
            order = np.arange(num_examples)
        return [order[i:i + global_batch].tolist() for i in range(0, num_examples, global_batch)]

    return plan


class _RankBatches(Dataset):
    """Item ``i`` = this rank's share of global batch ``i``, loaded and collated.

    Returns ``(batch or None, [(row index, error message), ...])``. Runs inside DataLoader
    workers when ``num_workers > 0``.
    """

    def __init__(self, dataset: Any, collate: Callable[[list[Any]], Batch],
                 shares: list[list[int]], bad_row_errors: tuple[type[BaseException], ...]):
        self.dataset = dataset
        self.collate = collate
        self.shares = shares
        self.bad_row_errors = bad_row_errors

    def __len__(self) -> int:
        return len(self.shares)

    def __getitem__(self, i: int) -> tuple[Batch | None, list[tuple[int, str]]]:
        examples, bad = [], []
        for idx in self.shares[i]:
            try:
                examples.append(self.dataset[idx])
            except self.bad_row_errors as exc:
                bad.append((idx, str(exc)))
        return (self.collate(examples) if examples else None), bad


def _identity(x: Any) -> Any:
    return x


class IndexedBatchSource:
    """:class:`BatchSource` over a map-style dataset.

    Args:
        dataset: ``len(dataset)`` and ``dataset[i]`` -> one example (raises one of
            ``bad_row_errors`` for an unusable row).
        collate: list of examples -> batch dict.
        batch_size: examples per process per micro-batch.
        seed: seeds the default epoch plan.
        shuffle: shuffle each epoch (default plan).
        rank, world_size: this process and the number of processes.
        num_workers: DataLoader worker processes (0: load in the training process).
        plan: ``epoch -> list of global batches`` to replace the default plan (e.g. dynamic
            batching by audio seconds); must be deterministic in ``epoch``.
        bad_row_errors: exception types that mark a bad row.
    """

    def __init__(
        self,
        dataset: Any,
        collate: Callable[[list[Any]], Batch],
        batch_size: int,
        seed: int = 0,
        shuffle: bool = True,
        rank: int = 0,
        world_size: int = 1,
        num_workers: int = 0,
        plan: Callable[[int], list[list[int]]] | None = None,
        bad_row_errors: tuple[type[BaseException], ...] = (SkipRow,),
    ):
        if batch_size < 1:
            raise ValueError(f"data.batch_size must be >= 1, got {batch_size}")
        if len(dataset) == 0:
            raise ValueError("the training set is empty: no usable rows in the manifests")
        self.dataset = dataset
        self.collate = collate
        self.batch_size = batch_size
        self.rank = rank
        self.world_size = world_size
        self.num_workers = num_workers
        self.plan = plan or shuffled_plan(len(dataset), batch_size * world_size, seed, shuffle)
        self.bad_row_errors = tuple(bad_row_errors)
        self._bad_rows: set[int] = set()
        self._reported: set[int] = set()

    @property
    def bad_rows(self) -> set[Any]:
        return set(self._bad_rows)

    @property
    def skipped(self) -> int:
        return len(self._bad_rows)

    def rank_share(self, global_batch: Sequence[int]) -> list[int]:
        """This rank's contiguous share of a global batch."""
        parts = np.array_split(np.asarray(global_batch, dtype=np.int64), self.world_size)
        return parts[self.rank].tolist()

    def batches(self, start: DataPosition = DataPosition()) -> Iterator[tuple[Batch | None, DataPosition]]:
        epoch, index = start.epoch, start.index
        while True:
            plan = self.plan(epoch)
            if not plan:
                raise ValueError(f"epoch {epoch} plan has no batches: the training set is empty")
            shares = [self.rank_share(g) for g in plan[index:]]
            loader = DataLoader(
                _RankBatches(self.dataset, self.collate, shares, self.bad_row_errors),
                batch_size=None,
                shuffle=False,
                num_workers=self.num_workers,
                collate_fn=_identity,
                generator=torch.Generator(),  # keeps the global torch RNG untouched
                persistent_workers=False,
            )
            for i, (batch, bad) in enumerate(loader):
                for idx, message in bad:
                    self._bad_rows.add(idx)
                    if idx not in self._reported:
                        self._reported.add(idx)
                        log.warning("skipping bad row %d: %s", idx, message)
                done = index + i + 1
                nxt = DataPosition(epoch + 1, 0) if done >= len(plan) else DataPosition(epoch, done)
                yield batch, nxt
            epoch, index = epoch + 1, 0


class ListDataset:
    """A list of ready examples as a dataset (tests, small in-memory data). ``None`` items
    are bad rows."""

    def __init__(self, examples: Sequence[Any]):
        self.examples = list(examples)

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, i: int) -> Any:
        item = self.examples[i]
        if item is None:
            raise SkipRow(f"row {i} is marked bad")
        return item
