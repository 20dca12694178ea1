"""``minmo eval``: read a suite, run a model (and an optional baseline) over it, collect rows.

Suites (``--suite``, with ``--data`` pointing at the files):

================== ==========================================================================
``synth-test``     the synthetic corpus's held-out test split: ``<data>/test/*.jsonl``
                   (``minmo data synth --out <data>``); default ``--data data/synth``
``manifest``       any project manifest file or directory (``--split`` filters rows)
``librispeech``    a LibriSpeech test directory (e.g. ``LibriSpeech/test-clean``)
``fleurs``         a Fleurs ``<lang>/test.tsv``; ``--target-data`` (target TSV) for BLEU,
                   ``--fleurs-task asr|s2tt|lid``
``seed-tts``       a Seed-TTS-eval ``meta.lst``
``llama-questions`` a Llama-Questions-style jsonl; scored as S2T and as S2S
================== ==========================================================================

``--limit N`` keeps the first N items (file order) of every task of the suite.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from minmo import library_versions
from minmo.eval import readers
from minmo.eval.adapters import TranscriberJudge
from minmo.eval.latency import aggregate_latencies
from minmo.eval.normalize import canonical_language
from minmo.eval.readers import EvalItem, ReadResult
from minmo.eval.results import EvalResults
from minmo.eval.tasks import EVALUATORS, GroupContext

SUITES = ("synth-test", "manifest", "librispeech", "fleurs", "seed-tts", "llama-questions")
TASK_ORDER = ("asr", "casr", "s2tt", "lid", "ser", "aed", "sa", "s2t_chat", "s2s_chat", "tts",
              "instruct_tts", "duplex")
DEFAULT_SYNTH_DIR = "data/synth"


@dataclass
class SuiteSpec:
    """Where a suite's files are and how to read them."""

    name: str
    data: str | None = None
    target_data: str | None = None
    split: str | None = None
    fleurs_task: str = "asr"


def read_suite(spec: SuiteSpec) -> ReadResult:
    """Read the items of a suite.

    Raises:
        ValueError: unknown suite, or a suite that needs ``--data`` without it.
        FileNotFoundError: the data path does not exist (the message says what to pass).
    """
    if spec.name not in SUITES:
        raise ValueError(f"unknown suite {spec.name!r}; choose one of: {', '.join(SUITES)}")
    if spec.name == "synth-test":
        root = Path(spec.data or DEFAULT_SYNTH_DIR)
        test_dir = root / "test"
        if not test_dir.is_dir():
            raise FileNotFoundError(
                f"{test_dir}: no test split of the synthetic corpus here; build one with "
                f"'minmo data synth --out {root} --hours H' or pass --data <corpus dir>"
            )
        return readers.read_project_manifest(test_dir, split="test", dataset="synth")
    if not spec.data:
        raise ValueError(f"suite {spec.name!r} needs --data (see 'minmo eval --help')")
    if spec.name == "manifest":
        path = Path(spec.data)
        return readers.read_project_manifest(path, split=spec.split,
                                             dataset=path.stem if path.is_file() else path.name)
    if spec.name == "librispeech":
        return readers.read_librispeech(spec.data)
    if spec.name == "fleurs":
        return readers.read_fleurs(spec.data, target_tsv=spec.target_data, task=spec.fleurs_task)
    if spec.name == "seed-tts":
        return readers.read_seed_tts(spec.data)
    result = readers.read_qa_jsonl(spec.data, dataset=qa_dataset_name(Path(spec.data)))
    spoken = [replace(item, task="s2s_chat") for item in result.items]
    return ReadResult(result.items + spoken, result.problems)


def qa_dataset_name(path: Path) -> str:
    """The report name of a Llama-Questions-style file: ``llama-questions`` (the paper's set,
    whose published number is then shown as *same set*) only when the file or its folder is
    named for it (``llama_questions.jsonl``, ``llama-questions/test.jsonl``); any other file
    in that layout is named by its stem, so a set of one's own is never reported as the
    paper's."""
    for name in (path.stem, path.parent.name):
        if "llama" in name.lower() and "question" in name.lower():
            return "llama-questions"
    return path.stem


def make_groups(items: Iterable[EvalItem], limit: int | None = None,
                tasks: Sequence[str] | None = None) -> list[tuple[str, str, list[EvalItem]]]:
    """Group items by (task, test set) in :data:`TASK_ORDER`, keeping file order.

    ``limit`` keeps the first N items of each (task, set as read); ``tasks`` keeps only those
    task names. Language-dependent tasks are then split when a set mixes languages: ASR/CASR/
    TTS by language (``synth/de``), translation by language pair (``synth/de->en``).
    """
    groups: dict[tuple[str, str], list[EvalItem]] = {}
    for item in items:
        if tasks and item.task not in tasks:
            continue
        members = groups.setdefault((item.task, item.dataset), [])
        if limit is None or len(members) < limit:
            members.append(item)
    split: dict[tuple[str, str], list[EvalItem]] = {}
    for (task, dataset), members in groups.items():
        languages = {m.language for m in members}
        for m in members:
            name = dataset
            if task in ("asr", "casr", "tts") and len(languages) > 1:
                name = f"{dataset}/{m.language or 'unknown'}"
            elif task == "s2tt":
                pairs = {(x.language, canonical_language(x.extra.get("target_language")))
                         for x in members}
                if len(pairs) > 1:
                    name = f"{dataset}/{m.language}->"\
                           f"{canonical_language(m.extra.get('target_language'))}"
            split.setdefault((task, name), []).append(m)
    order = {t: n for n, t in enumerate(TASK_ORDER)}
    keys = sorted(split, key=lambda k: (order.get(k[0], len(order)), k[1]))
    return [(task, name, split[(task, name)]) for task, name in keys]


@dataclass
class RunSettings:
    """Knobs of one run (all recorded in ``results.json``)."""

    limit: int | None = None
    tasks: list[str] | None = None
    k: int = 10
    sample_rate: int = 16000
    asr_judge: str = "self"
    max_duplex_examples: int = 3
    show_progress: bool = True


@dataclass
class SystemUnderTest:
    """A model and the name its rows carry (``minmo``, ``cascade``)."""

    name: str
    model: Any
    judge: TranscriberJudge | None = None


@dataclass
class RunOutput:
    """The results and the per-item predictions of a run."""

    results: EvalResults
    predictions: list[dict[str, Any]] = field(default_factory=list)


def run_evaluation(
    systems: Sequence[SystemUnderTest],
    read: ReadResult,
    model_label: str,
    suite_label: str,
    settings: RunSettings,
) -> RunOutput:
    """Evaluate every system on every (task, test set) group of ``read``.

    Returns:
        :class:`RunOutput` whose results hold the rows of all systems, the skipped groups
        with reasons, the input problems and model failures, latency statistics per system
        and duplex timeline examples of the first system.
    """
    groups = make_groups(read.items, settings.limit, settings.tasks)
    results = EvalResults(
        model=model_label, suite=suite_label,
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        settings={"limit": settings.limit, "tasks": settings.tasks or "all", "k": settings.k,
                  "asr_judge": settings.asr_judge, "sample_rate": settings.sample_rate,
                  "systems": [s.name for s in systems], "torch_threads": torch.get_num_threads(),
                  "versions": library_versions()},
        problems=list(read.problems),
    )
    for system in systems:
        describe = getattr(system.model, "describe", None)
        if describe is not None:
            results.settings[f"model_info[{system.name}]"] = describe()
    predictions: list[dict[str, Any]] = []
    total = sum(len(members) for _, _, members in groups) * len(systems)
    bar = tqdm(total=total, desc="eval", unit="item", disable=not settings.show_progress)
    for system in systems:
        latency_records: list[dict[str, float]] = []
        for task, dataset, members in groups:
            evaluator = EVALUATORS.get(task)
            bar.set_postfix_str(f"{system.name} {task} {dataset}")
            if evaluator is None:
                results.problems.append(f"task {task!r} ({dataset}): no evaluator, skipped")
                bar.update(len(members))
                continue
            ctx = GroupContext(task, dataset, members, system.model, system.name, system.judge,
                               settings.k, settings.sample_rate, settings.max_duplex_examples,
                               bar.update)
            started, before = time.perf_counter(), bar.n
            outcome = evaluator(ctx)
            bar.update(max(0, before + len(members) - bar.n))  # items it did not call on
            for row in outcome.rows:
                row.details.setdefault("seconds", round(time.perf_counter() - started, 3))
            results.rows += outcome.rows
            results.skipped += outcome.skipped
            results.problems += outcome.problems
            latency_records += outcome.latency_records
            if system is systems[0]:
                results.duplex_examples += outcome.duplex_examples
            predictions += [{"system": system.name, "task": task, "dataset": dataset, **p}
                            for p in outcome.predictions]
        if latency_records:
            stats = aggregate_latencies(latency_records)
            results.latency[system.name] = {k: v.as_dict() for k, v in stats.items()}
            samples: dict[str, list[float]] = {}
            for record in latency_records:
                for stage, value in record.items():
                    if value is not None:
                        samples.setdefault(stage, []).append(float(value))
            results.latency_samples[system.name] = samples
    bar.close()
    return RunOutput(results, predictions)


def write_predictions(path: str | Path, predictions: Sequence[dict[str, Any]]) -> Path:
    """Per-item outputs as jsonl (``predictions.jsonl`` beside the report)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as fh:
        for p in predictions:
            fh.write(json.dumps(p, ensure_ascii=False, default=str) + "\n")
    return path
