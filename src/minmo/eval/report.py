"""Write an evaluation run to disk: ``results.json``, ``report.md`` and PNG plots.

The markdown follows the paper's grouping (ASR, speech translation, classification tasks,
spoken QA, TTS, instruction TTS, full duplex, latency) with one column per system and the
paper's number beside ours: marked "(same set)" when our test set is the paper's, otherwise
shown with the paper's set named, as context rather than a like-for-like comparison.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from minmo.eval import plots
from minmo.eval.latency import PAPER_STAGE_MS, STAGE_LABELS
from minmo.eval.paper import format_paper_cell
from minmo.eval.results import EvalResults, MetricRow

SECTIONS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("Speech recognition", ("asr", "casr")),
    ("Speech-to-text translation", ("s2tt",)),
    ("Language identification", ("lid",)),
    ("Speech emotion / style recognition", ("ser",)),
    ("Audio event detection", ("aed",)),
    ("Speaker analysis", ("sa",)),
    ("Spoken question answering", ("spoken_qa_s2t", "spoken_qa_s2s")),
    ("Text to speech (round trip)", ("tts",)),
    ("Instruction-following speech generation", ("instruct_tts",)),
    ("Full duplex", ("duplex",)),
)
MAX_PROBLEMS_LISTED = 20


def format_value(value: float, unit: str) -> str:
    """Report cell text for a value in ``unit``; ``n/a`` for NaN."""
    if value is None or not math.isfinite(value):
        return "n/a"
    if unit == "F1" or unit == "cos":
        return f"{value:.3f}"
    if unit == "ms":
        return f"{value:.0f} ms"
    return f"{value:.2f}"


def _metric_header(row: MetricRow) -> str:
    unit = {"%": " (%)", "ms": "", "BLEU": "", "F1": "", "cos": " (cos)"}.get(row.unit, "")
    arrow = "↑" if row.higher_is_better else "↓"
    return f"{row.metric}{unit} {arrow}"


TASK_NAMES = {"asr": "ASR", "casr": "contextual ASR", "spoken_qa_s2t": "S2T",
              "spoken_qa_s2s": "S2S"}


def _task_table(rows: list[MetricRow], systems: list[str]) -> list[str]:
    keys = list(dict.fromkeys((r.task, r.dataset, r.metric) for r in rows))
    several = len({r.task for r in rows}) > 1
    lines = [("| Task " if several else "") + "| Test set | Metric | " + " | ".join(systems)
             + " | Paper | N |",
             ("|---" if several else "") + "|---|---|" + "---:|" * len(systems) + "---|---:|"]
    for task, dataset, metric in keys:
        same = [r for r in rows if (r.task, r.dataset, r.metric) == (task, dataset, metric)]
        cells = []
        for system in systems:
            match = [r for r in same if r.system == system]
            cells.append(format_value(match[0].value, match[0].unit) if match else "–")
        count = max(r.count for r in same)
        task_cell = f"| {TASK_NAMES.get(task, task)} " if several else ""
        lines.append(f"{task_cell}| {dataset} | {_metric_header(same[0])} | " + " | ".join(cells)
                     + f" | {format_paper_cell(task, metric, dataset)} | {count} |")
    return lines


def _ms_cell(value: float | None) -> str:
    return "n/a" if value is None or not math.isfinite(value) else f"{value:.1f}"


def _latency_table(results: EvalResults) -> list[str]:
    lines = []
    for system, stages in results.latency.items():
        lines += [f"System **{system}** (ms):", "",
                  "| Stage | p50 | p90 | p95 | mean | N | Paper (NVIDIA L20) |",
                  "|---|---:|---:|---:|---:|---:|---:|"]
        for stage, stats in stages.items():
            paper = f"{PAPER_STAGE_MS[stage]:.0f}" if stage in PAPER_STAGE_MS else "–"
            vals = [_ms_cell(stats.get(key)) for key in ("p50", "p90", "p95", "mean")]
            lines.append(f"| {STAGE_LABELS.get(stage, stage)} | " + " | ".join(vals)
                         + f" | {stats.get('count', 0)} | {paper} |")
        lines.append("")
    return lines


def _text_decoding(info: dict[str, Any]) -> str:
    """How a system's text was decoded, from its ``describe()``."""
    if info.get("beam_size"):
        return (f"by beam search of width {info['beam_size']} (length penalty "
                f"{info['length_penalty']:g})")
    if info.get("transcript_ctc_weight"):
        return f"greedily, transcripts jointly with CTC (weight {info['transcript_ctc_weight']:g})"
    return "greedily"


def render_markdown(results: EvalResults, plot_files: list[Path]) -> str:
    """The ``report.md`` text."""
    systems = results.systems() or ["minmo"]
    lines = [f"# minmo evaluation: `{results.model}` on `{results.suite}`", "",
             f"Created {results.created}.", ""]
    for key, info in results.settings.items():
        if key.startswith("model_info") and isinstance(info, dict):
            system = key[len("model_info["):-1] if "[" in key else "model"
            lines.append(f"Model ({system}): `{info.get('name')}` from `{info.get('source')}`, "
                         f"speech decoder `{info.get('vocoder')}`, text decoded "
                         f"{_text_decoding(info)}"
                         + (f"; {info['quantization']}" if info.get("quantization") else "")
                         + ".")
            if info.get("warning"):
                lines.append(f"\n> **Warning:** {info['warning']}")
            lines.append("")
    plain = {k: v for k, v in results.settings.items()
             if not k.startswith("model_info") and k != "versions"}
    if plain:
        lines.append("Settings: " + ", ".join(f"{k} = `{v}`" for k, v in plain.items()))
        lines.append("")
    if results.settings.get("versions"):
        lines.append("Versions: " + ", ".join(
            f"{k} {v}" for k, v in results.settings["versions"].items()))
        lines.append("")
    lines += ["Units: error rates and accuracies in %, BLEU 0–100, F1 0–1, latencies in ms. "
              "↓ lower is better, ↑ higher is better. The paper column gives MinMo's published "
              "number: *(same set)* when this run used the paper's test set, otherwise the "
              "paper's set is named and the number is context, not a like-for-like comparison. "
              "How each number is computed: `docs/eval.md`.", ""]
    for title, tasks in SECTIONS:
        rows = [r for r in results.rows if r.task in tasks]
        if not rows:
            continue
        lines += [f"## {title}", ""] + _task_table(rows, systems) + [""]
        for row in rows:
            if row.details.get("note"):
                lines += [f"- {row.dataset}, {row.metric}: {row.details['note']}"]
        if any(r.details.get("note") for r in rows):
            lines.append("")
    if results.latency:
        lines += ["## Latency", ""] + _latency_table(results)
    if results.skipped:
        lines += ["## Not scored", "", "| Task | Test set | System | Items | Reason |",
                  "|---|---|---|---:|---|"]
        for s in results.skipped:
            lines.append(f"| {s.task} | {s.dataset} | {s.system} | {s.count} | {s.reason} |")
        lines.append("")
    if results.problems:
        lines += ["## Input problems", "",
                  f"{len(results.problems)} input rows were skipped:", ""]
        lines += [f"- `{p}`" for p in results.problems[:MAX_PROBLEMS_LISTED]]
        if len(results.problems) > MAX_PROBLEMS_LISTED:
            lines.append(f"- … and {len(results.problems) - MAX_PROBLEMS_LISTED} more "
                         "(all in results.json)")
        lines.append("")
    if plot_files:
        lines += ["## Plots", ""] + [f"![{p.stem}]({p.name})" for p in plot_files] + [""]
    return "\n".join(lines)


def write_report(results: EvalResults, out_dir: str | Path, k: int = 10,
                 max_duplex_examples: int = 3) -> dict[str, list[Path]]:
    """Write ``results.json``, the plots and ``report.md`` into ``out_dir``.

    Args:
        results: the run.
        out_dir: created if missing.
        k: duplex tolerance drawn in the timeline plots.
        max_duplex_examples: timeline plots to draw.

    Returns:
        ``{"json": [...], "markdown": [...], "plots": [...]}`` paths written.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    json_path = results.write_json(out / "results.json")
    written: list[Path] = []
    bar = plots.plot_task_bars(results, out / "tasks.png")
    if bar is not None:
        written.append(bar)
    hist = plots.plot_latency_histograms(results, out / "latency.png")
    if hist is not None:
        written.append(hist)
    for example in results.duplex_examples[:max_duplex_examples]:
        written.append(plots.plot_duplex_timeline(
            example, out / f"duplex_{plots.safe_name(example.id)}.png", k=k))
    for row in results.rows:
        name = f"{plots.safe_name(row.task)}_{plots.safe_name(row.dataset)}_{plots.safe_name(row.system)}"
        if row.details.get("matrix"):
            view = "" if row.metric == "accuracy" else "_" + plots.safe_name(
                row.metric.replace(" accuracy", ""))
            path = plots.plot_confusion(row, out / f"confusion_{name}{view}.png")
            if path is not None:
                written.append(path)
        if row.details.get("per_speaker"):
            path = plots.plot_per_speaker(row, out / f"speakers_{name}.png")
            if path is not None:
                written.append(path)
    md_path = out / "report.md"
    md_path.write_text(render_markdown(results, written), encoding="utf-8")
    return {"json": [json_path], "markdown": [md_path], "plots": written}
