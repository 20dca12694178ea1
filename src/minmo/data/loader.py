"""The training data loader: dataset + dynamic batch sampler + collate, multi-worker, with a
resumable position and a count of skipped rows.

Typical use (training loop)::

    loader = build_loader(train_cfg.data, train_cfg.data.train, frontend, tokenizer,
                          system_prompt=model_cfg.system_prompt, seed=train_cfg.seed,
                          rank=rank, world_size=world)
    loader.load_state_dict(ckpt["data"])          # optional: resume
    for batch in loader:                           # one epoch; call again for the next
        if not batch["ids"]:                       # every row of this batch was bad
            continue
        ...
        ckpt["data"] = loader.state_dict()         # position after the batches consumed
    print(loader.summary())
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any, Iterable, Iterator

from torch.utils.data import DataLoader

from minmo.data.collate import Collator
from minmo.data.dataset import ManifestDataset
from minmo.data.sampler import DynamicBatchSampler


class ResumableLoader:
    """Iterates one epoch per ``for`` loop and remembers how many batches were consumed.

    ``state_dict()`` counts batches handed to the caller (not the ones prefetched by
    workers), so a checkpoint taken after batch ``k`` resumes exactly at batch ``k + 1``.
    """

    def __init__(self, dataset: ManifestDataset, sampler: DynamicBatchSampler,
                 collate: Collator, num_workers: int = 0, pin_memory: bool = False,
                 prefetch_factor: int | None = None):
        self.dataset = dataset
        self.sampler = sampler
        self.collate = collate
        kwargs: dict[str, Any] = {}
        if num_workers > 0:
            kwargs["prefetch_factor"] = prefetch_factor or 4
            kwargs["persistent_workers"] = False
        self.loader = DataLoader(dataset, batch_sampler=sampler, collate_fn=collate,
                                 num_workers=num_workers, pin_memory=pin_memory, **kwargs)
        self._epoch = sampler.epoch
        self._position = sampler.start_batch
        self.skipped: Counter = Counter()
        self.skipped_examples: list[str] = []

    def __len__(self) -> int:
        return len(self.sampler)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        self._epoch, self._position = self.sampler.epoch, self.sampler.start_batch
        for batch in self.loader:
            self._position += 1
            for item in batch["skipped"]:
                parts = item.split(": ", 2)
                self.skipped[parts[1] if len(parts) > 2 else "unknown"] += 1
                if len(self.skipped_examples) < 1000:
                    self.skipped_examples.append(item)
            yield batch
        self.sampler.set_epoch(self._epoch + 1)
        self._epoch, self._position = self.sampler.epoch, 0

    def state_dict(self) -> dict[str, int]:
        """``{"epoch", "batch", "seed", "num_replicas"}``: where to resume."""
        return {"epoch": self._epoch, "batch": self._position, "seed": self.sampler.seed,
                "num_replicas": self.sampler.num_replicas}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Start the next iteration at ``state`` (see
        :meth:`DynamicBatchSampler.load_state_dict`)."""
        self.sampler.load_state_dict(state)
        self._epoch, self._position = self.sampler.epoch, self.sampler.start_batch

    def summary(self) -> dict[str, Any]:
        """Rows used, rows rejected when reading manifests, rows skipped while loading."""
        return {
            "rows": len(self.dataset),
            "bad_rows": len(self.dataset.bad),
            "bad_rows_by_kind": self.dataset.bad_counts(),
            "skipped_at_load": sum(self.skipped.values()),
            "skipped_by_kind": dict(self.skipped),
        }

    def format_summary(self) -> str:
        """One line for logs."""
        s = self.summary()
        kinds = {**s["bad_rows_by_kind"]}
        for k, v in s["skipped_by_kind"].items():
            kinds[k] = kinds.get(k, 0) + v
        detail = ", ".join(f"{k} {v}" for k, v in sorted(kinds.items()))
        return (f"data: {s['rows']} rows used, {s['bad_rows'] + s['skipped_at_load']} skipped"
                + (f" ({detail})" if detail else ""))


def build_loader(
    data_cfg: Any,
    manifests: Iterable[str | Path],
    frontend: Any,
    tokenizer: Any,
    system_prompt: str = "You are a helpful assistant.",
    seed: int = 0,
    rank: int = 0,
    world_size: int = 1,
    train: bool = True,
    tasks: Iterable[str] | None = None,
    load_target_audio: bool = False,
    sample_rate: int = 16000,
) -> ResumableLoader:
    """Build the loader from a :class:`minmo.config.DataConfig`.

    Args:
        data_cfg: ``batch_size``, ``max_batch_seconds``, ``num_workers``, ``shuffle``,
            ``max_audio_seconds``, ``max_text_tokens``, ``augment`` (training only).
        manifests: jsonl files or directories (``data_cfg.train`` / ``.valid``).
        frontend: feature front end (``build_frontend(model_cfg.frontend)``).
        tokenizer: the LLM's text tokenizer.
        system_prompt: ChatML system text.
        seed: shuffling and paraphrase seed.
        rank / world_size: distributed position (each rank gets its own batches).
        train: shuffle (if ``data_cfg.shuffle``), pad ranks and augment (``data_cfg.augment``);
            ``False``: fixed order, clean audio.
        tasks: keep only these tasks.
        load_target_audio: add ``target_wave`` to batches.
        sample_rate: input audio rate.
    """
    manifests = list(manifests)
    augment = getattr(data_cfg, "augment", None) if train else None
    dataset = ManifestDataset(manifests, sample_rate=sample_rate, tasks=tasks,
                              max_audio_seconds=data_cfg.max_audio_seconds or None,
                              load_target_audio=load_target_audio,
                              augment=augment, augment_seed=seed)
    if len(dataset) == 0:
        raise ValueError(f"no usable rows in {list(map(str, manifests))} "
                         f"({len(dataset.bad)} bad rows; run `minmo data check` on them)")
    sampler = DynamicBatchSampler(
        dataset.lengths(), batch_size=data_cfg.batch_size,
        max_batch_seconds=data_cfg.max_batch_seconds,
        shuffle=train and data_cfg.shuffle, seed=seed, num_replicas=world_size, rank=rank,
        drop_last=False)
    collate = Collator(frontend, tokenizer, system_prompt=system_prompt, seed=seed,
                       max_text_tokens=data_cfg.max_text_tokens or None)
    return ResumableLoader(dataset, sampler, collate, num_workers=data_cfg.num_workers)
