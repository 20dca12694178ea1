"""Map-style dataset over manifests: a row -> waveform(s) and labels, bad rows skipped.

Rows that fail the schema (or, with ``check_files=True``, the file checks) are dropped when
the dataset is built and listed in :attr:`ManifestDataset.bad`. A row that fails later, while
its audio is read in a worker, comes back as a :class:`SkippedExample`; the collate drops it
and reports it in ``batch["skipped"]``. Nothing raises on one bad row.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np
from torch.utils.data import Dataset

from minmo.audio.io import AudioError, audio_info, load_audio
from minmo.config import AugmentConfig
from minmo.data.augment import augment_wave, augments_task, check_augment_config, clip_rng
from minmo.data.manifest import (TASKS, BadRow, ManifestRow, RowError, check_row_files,
                                 read_manifests)


@dataclass
class Example:
    """One loaded example (what the collate receives).

    Attributes:
        row: the manifest row.
        wave: ``(N,)`` float32 input speech at the dataset rate (duplex: channel 0, the
            user), or ``None`` for text-input tasks.
        target_wave: ``(M,)`` float32 assistant speech at ``target_sample_rate`` when the
            dataset loads it, else ``None``.
        duplex_labels: ``(T10,)`` int64 per-10-ms decisions (duplex rows), else ``None``.
        assistant_speaking: ``(T10,)`` float32 flags (duplex rows), else ``None``.
        epoch: epoch the sampler drew it in (seeds the instruction paraphrase).
    """

    row: ManifestRow
    wave: np.ndarray | None
    target_wave: np.ndarray | None = None
    duplex_labels: np.ndarray | None = None
    assistant_speaking: np.ndarray | None = None
    epoch: int = 0


@dataclass
class SkippedExample:
    """A row that could not be loaded: its id, the bad-row kind and the message."""

    id: str
    kind: str
    message: str

    def __str__(self) -> str:
        return f"{self.id}: {self.kind}: {self.message}"


class ManifestDataset(Dataset):
    """Examples of one or more jsonl manifests.

    Args:
        manifests: manifest files or directories.
        sample_rate: rate of the returned input waveforms.
        tasks: keep only these tasks (``None``: all).
        max_audio_seconds: rows with longer input audio are skipped (kind ``too_long``).
        check_files: open every audio header when building (slower, catches missing or
            unreadable files and wrong rates up front).
        expected_sample_rate: with ``check_files``, flag audio at other rates.
        load_target_audio: also load ``target_audio`` (assistant speech).
        target_sample_rate: rate of the returned target waveforms.
        augment: input speech of the tasks it covers goes through
            :func:`minmo.data.augment.augment_wave` (``None`` or ``prob`` 0: clean).
        augment_seed: with the row id and the epoch, seeds each clip's acoustics.
    """

    def __init__(
        self,
        manifests: Iterable[str | Path],
        sample_rate: int = 16000,
        tasks: Iterable[str] | None = None,
        max_audio_seconds: float | None = None,
        check_files: bool = False,
        expected_sample_rate: int | None = None,
        load_target_audio: bool = False,
        target_sample_rate: int = 24000,
        augment: AugmentConfig | None = None,
        augment_seed: int = 0,
    ):
        manifests = list(manifests)
        if not manifests:
            raise ValueError("ManifestDataset needs at least one manifest (data.train is empty?)")
        scan = read_manifests(manifests, check_files=check_files,
                              expected_sample_rate=expected_sample_rate)
        wanted = set(tasks) if tasks is not None else set(TASKS)
        self.sample_rate = sample_rate
        self.target_sample_rate = target_sample_rate
        self.load_target_audio = load_target_audio
        if augment is not None:
            check_augment_config(augment)
        self.augment = augment
        self.augment_seed = augment_seed
        self.bad: list[BadRow] = list(scan.bad)
        self.rows: list[ManifestRow] = []
        for row in scan.rows:
            if row.task not in wanted:
                continue
            if row.audio is not None and row.duration is None:
                try:  # the sampler needs a length for every row
                    row.duration = audio_info(row.audio).duration - row.offset
                except AudioError as exc:
                    kind = "missing_file" if "not found" in str(exc) else "unreadable_audio"
                    self._reject(row, kind, str(exc))
                    continue
            if max_audio_seconds and (row.duration or 0.0) > max_audio_seconds:
                self._reject(row, "too_long", f"{row.duration:.1f}s of audio > "
                             f"max_audio_seconds {max_audio_seconds}")
                continue
            self.rows.append(row)

    def _reject(self, row: ManifestRow, kind: str, message: str) -> None:
        source, _, line = str(row.meta.get("_source", "?:0")).rpartition(":")
        self.bad.append(BadRow(source, int(line or 0), row.id, kind, message))

    def __len__(self) -> int:
        return len(self.rows)

    def lengths(self) -> np.ndarray:
        """``(len,)`` float seconds per row used for batching: input + target audio (text-only
        rows without target audio count 0.5 s)."""
        out = np.empty(len(self.rows), dtype=np.float64)
        for i, row in enumerate(self.rows):
            secs = (row.duration or 0.0) + (row.target_duration or 0.0)
            out[i] = secs if secs > 0 else 0.5
        return out

    def bad_counts(self) -> dict[str, int]:
        """Rows rejected when building, per kind."""
        return dict(Counter(b.kind for b in self.bad))

    def __getitem__(self, key: int | tuple[int, int]) -> Example | SkippedExample:
        index, epoch = (key if isinstance(key, tuple) else (key, 0))
        row = self.rows[index]
        try:
            return self._load(row, epoch)
        except RowError as exc:
            return SkippedExample(row.id, exc.kind, str(exc))
        except AudioError as exc:
            kind = "missing_file" if "not found" in str(exc) else "unreadable_audio"
            return SkippedExample(row.id, kind, str(exc))
        except (OSError, ValueError, KeyError) as exc:
            return SkippedExample(row.id, "unreadable_audio", f"{type(exc).__name__}: {exc}")

    def _load(self, row: ManifestRow, epoch: int) -> Example:
        wave = None
        if row.has_speech_input:
            if row.sample_rate is not None:
                rate = audio_info(row.audio).sample_rate
                if rate != row.sample_rate:
                    raise RowError("wrong_sample_rate", f"{row.audio}: {rate} Hz, row says "
                                   f"{row.sample_rate} Hz")
            channel = 0 if row.task == "duplex" and row.channel is None else row.channel
            wave = load_audio(row.audio, self.sample_rate, offset=row.offset,
                              duration=row.duration, channel=channel)
            if wave.size == 0:
                raise RowError("unreadable_audio", f"{row.audio}: no samples in the window")
            if augments_task(self.augment, row.task):
                rng = clip_rng(self.augment_seed, row.id, epoch)
                wave, _ = augment_wave(wave, self.sample_rate, self.augment, rng)
        target_wave = None
        if self.load_target_audio and row.target_audio is not None:
            target_wave = load_audio(row.target_audio, self.target_sample_rate)
        labels = speaking = None
        if row.task == "duplex":
            if row.labels is None or not Path(row.labels).is_file():
                raise RowError("missing_file", f"{row.labels}: duplex label file not found")
            try:
                with np.load(row.labels) as npz:
                    labels = npz["labels"].astype(np.int64)
                    speaking = npz["assistant_speaking"].astype(np.float32)
            except Exception as exc:
                raise RowError("bad_labels", f"{row.labels}: {exc}") from None
        return Example(row=row, wave=wave, target_wave=target_wave, duplex_labels=labels,
                       assistant_speaking=speaking, epoch=epoch)

    def validate_all(self) -> list[SkippedExample]:
        """Check every row's files now (header level); returns the failures without
        removing them. Used by tests and ``minmo data check``."""
        failures = []
        for row in self.rows:
            try:
                check_row_files(row)
            except RowError as exc:
                failures.append(SkippedExample(row.id, exc.kind, str(exc)))
        return failures
