"""Batch sampler: length bucketing, dynamic batch size by total seconds, distributed split,
exact resume.

Each epoch's batch list is a pure function of ``(seed, epoch, lengths, settings)``:

1. shuffle the indices (seeded by ``seed + epoch``), cut them into buckets of
   ``bucket_size`` examples and sort each bucket by length (similar lengths share a batch,
   so padding stays small);
2. fill batches greedily: with ``max_batch_seconds > 0`` a batch grows while
   ``longest_length * count <= max_batch_seconds`` (the padded cost), capped by
   ``max_batch_size`` (an example longer than the budget gets a batch of its own);
   otherwise ``batch_size`` examples per batch;
3. shuffle the batch order, make the count divisible by ``num_replicas`` (drop the tail with
   ``drop_last``, else repeat leading batches) and give rank ``r`` batches ``r, r+R, ...``.

Yielded items are ``(index, epoch)`` pairs, which :class:`~minmo.data.dataset.ManifestDataset`
accepts (the epoch seeds the instruction paraphrase). ``load_state_dict({"epoch": e,
"batch": b})`` makes the next iteration start at this rank's batch ``b`` of epoch ``e``.
"""

from __future__ import annotations

from typing import Iterator, Sequence

import numpy as np
from torch.utils.data import Sampler


class DynamicBatchSampler(Sampler[list[tuple[int, int]]]):
    """See the module docstring.

    Args:
        lengths: seconds (or any length unit) per example.
        batch_size: examples per batch when ``max_batch_seconds <= 0``.
        max_batch_seconds: > 0: dynamic batches bounded by padded total seconds.
        max_batch_size: cap on examples per dynamic batch (``None``: no cap).
        shuffle: shuffle and bucket (``False``: dataset order, no sorting).
        seed: base seed.
        bucket_size: examples per sorting bucket.
        num_replicas: number of processes (distributed world size).
        rank: this process's rank.
        drop_last: drop batches that do not divide evenly among replicas.
    """

    def __init__(
        self,
        lengths: Sequence[float],
        batch_size: int = 8,
        max_batch_seconds: float = 0.0,
        max_batch_size: int | None = None,
        shuffle: bool = True,
        seed: int = 0,
        bucket_size: int = 1000,
        num_replicas: int = 1,
        rank: int = 0,
        drop_last: bool = False,
    ):
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} outside [0, num_replicas={num_replicas})")
        if max_batch_seconds <= 0 and batch_size < 1:
            raise ValueError("batch_size must be >= 1 (or set max_batch_seconds > 0)")
        self.lengths = np.asarray(lengths, dtype=np.float64)
        self.batch_size = batch_size
        self.max_batch_seconds = max_batch_seconds
        self.max_batch_size = max_batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.bucket_size = max(1, bucket_size)
        self.num_replicas = num_replicas
        self.rank = rank
        self.drop_last = drop_last
        self.epoch = 0
        self.start_batch = 0
        self._cache: tuple[int, list[list[int]]] | None = None

    # ---- batch construction -----------------------------------------------------------

    def _fill(self, order: np.ndarray) -> list[list[int]]:
        batches: list[list[int]] = []
        cur: list[int] = []
        longest = 0.0
        for idx in order.tolist():
            length = float(self.lengths[idx])
            if self.max_batch_seconds > 0:
                new_longest = max(longest, length)
                too_big = cur and (new_longest * (len(cur) + 1) > self.max_batch_seconds or (
                    self.max_batch_size is not None and len(cur) >= self.max_batch_size))
            else:
                new_longest = longest
                too_big = len(cur) >= self.batch_size
            if too_big:
                batches.append(cur)
                cur, new_longest = [], length
            cur.append(idx)
            longest = new_longest
        if cur:
            batches.append(cur)
        return batches

    def global_batches(self, epoch: int) -> list[list[int]]:
        """All batches of ``epoch`` (every rank's), in order, before the rank split."""
        n = self.lengths.size
        if not self.shuffle:
            return self._fill(np.arange(n))
        rng = np.random.default_rng([self.seed, epoch])
        perm = rng.permutation(n)
        batches: list[list[int]] = []
        for start in range(0, n, self.bucket_size):
            bucket = perm[start:start + self.bucket_size]
            bucket = bucket[np.argsort(self.lengths[bucket], kind="stable")]
            batches.extend(self._fill(bucket))
        order = rng.permutation(len(batches))
        return [batches[i] for i in order]

    def rank_batches(self, epoch: int) -> list[list[int]]:
        """This rank's batches of ``epoch``."""
        if self._cache is not None and self._cache[0] == epoch:
            return self._cache[1]
        batches = self.global_batches(epoch)
        R = self.num_replicas
        if R > 1 and batches:
            if self.drop_last:
                batches = batches[: len(batches) // R * R]
            elif len(batches) % R:
                pad = R - len(batches) % R
                batches = batches + [batches[i % len(batches)] for i in range(pad)]
        mine = batches[self.rank::R]
        self._cache = (epoch, mine)
        return mine

    # ---- Sampler API ------------------------------------------------------------------

    def set_epoch(self, epoch: int) -> None:
        """Start ``epoch`` from its first batch."""
        self.epoch = epoch
        self.start_batch = 0

    def __len__(self) -> int:
        return len(self.rank_batches(self.epoch))

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        epoch, start = self.epoch, self.start_batch
        self.start_batch = 0  # resume offsets apply once
        for batch in self.rank_batches(epoch)[start:]:
            yield [(i, epoch) for i in batch]

    def state_dict(self) -> dict[str, int]:
        """Where the next iteration starts (see :meth:`load_state_dict`)."""
        return {"epoch": self.epoch, "batch": self.start_batch, "seed": self.seed,
                "num_replicas": self.num_replicas}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Resume at this rank's batch ``state["batch"]`` of epoch ``state["epoch"]``.

        Raises:
            ValueError: the state was saved with another seed or world size (the batch
                lists would differ, so the position would be meaningless).
        """
        for key, mine in (("seed", self.seed), ("num_replicas", self.num_replicas)):
            if key in state and state[key] != mine:
                raise ValueError(f"sampler state has {key}={state[key]}, this run {mine}: "
                                 "resume with the same seed and number of processes")
        self.epoch = int(state["epoch"])
        self.start_batch = int(state["batch"])
