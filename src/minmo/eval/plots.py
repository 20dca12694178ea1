"""PNG plots of an evaluation run (matplotlib, Agg backend: no display needed).

* ``tasks.png``: one panel per task, a bar per (test set, metric) and system, the paper's
  number as a marker (filled: same test set; hollow: a different set, for context).
* ``latency.png``: a histogram per latency stage with p50/p95 and the paper's budget.
* ``duplex_<id>.png``: a dialogue's timeline: who speaks when, true vs predicted decisions.
* ``confusion_<task>_<set>.png``: row-normalised confusion matrix with counts.
* ``speakers_<set>.png``: error rate per speaker.
"""

from __future__ import annotations

import math
import re
import textwrap
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from minmo.eval.latency import PAPER_STAGE_MS, STAGE_LABELS  # noqa: E402
from minmo.eval.paper import paper_numbers_for, same_set  # noqa: E402
from minmo.eval.results import DuplexExample, EvalResults, MetricRow  # noqa: E402

SYSTEM_COLORS = ["#3b6fb6", "#e08a2e", "#4e9a5b", "#b54a4a", "#7d5ba6"]
DPI = 110


def safe_name(text: str) -> str:
    """File-name-safe version of a task/set name."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "x"


def _value_label(value: float, unit: str) -> str:
    if unit == "F1" or unit == "cos":
        return f"{value:.2f}"
    if unit == "ms":
        return f"{value:.0f}"
    return f"{value:.1f}"


def _paper_marks(task: str, metric: str, dataset: str) -> list[tuple[float, bool, str]]:
    """(value, same set?, paper set) to draw: the same-set number alone when there is one."""
    numbers = paper_numbers_for(task, metric)
    exact = [p for p in numbers if same_set(p, dataset)]
    chosen = exact or numbers
    return [(p.value, bool(exact), p.dataset) for p in chosen]


def plot_task_bars(results: EvalResults, path: Path) -> Path | None:
    """Bar chart of every metric row, one panel per (task, unit).

    Each group (test set, metric) has a bar per system and, in a last slot, the paper's
    number(s): a filled diamond for the same test set, hollow ones labelled with the paper's
    set otherwise. Returns None when no row has a finite value.
    """
    rows = [r for r in results.rows if math.isfinite(r.value)]
    if not rows:
        return None
    panels = list(dict.fromkeys((r.task, r.unit) for r in rows))
    systems = results.systems()
    ncols = min(3, len(panels))
    nrows = math.ceil(len(panels) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(5.4 * ncols, 4.2 * nrows), squeeze=False)
    slots = len(systems) + 1
    width = min(0.8 / slots, 0.3)
    for ax, (task, unit) in zip(axes.flat, panels):
        panel_rows = [r for r in rows if (r.task, r.unit) == (task, unit)]
        groups = list(dict.fromkeys((r.dataset, r.metric) for r in panel_rows))
        tops = [r.value for r in panel_rows]
        context: dict[tuple[str, str], float] = {}
        for g, (dataset, metric) in enumerate(groups):
            left = g - width * slots / 2
            for s, system in enumerate(systems):
                match = [r for r in panel_rows
                         if (r.dataset, r.metric, r.system) == (dataset, metric, system)]
                if not match:
                    continue
                x = left + width * (s + 0.5)
                ax.bar(x, match[0].value, width * 0.92,
                       color=SYSTEM_COLORS[s % len(SYSTEM_COLORS)], label=system)
                ax.annotate(_value_label(match[0].value, unit), (x, match[0].value),
                            ha="center", va="bottom", fontsize=8, xytext=(0, 2),
                            textcoords="offset points")
            x_paper = left + width * (len(systems) + 0.5)
            for value, exact, paper_set in _paper_marks(task, metric, dataset):
                if exact:
                    tops.append(value)
                    ax.plot(x_paper, value, marker="D", markersize=7, linestyle="none",
                            color="black", label="paper (same set)")
                    ax.annotate(_value_label(value, unit), (x_paper, value), xytext=(6, -3),
                                textcoords="offset points", fontsize=7, color="#444444")
                else:
                    context.setdefault((metric, paper_set), value)
        metrics_here = {m for _, m in groups}
        if len(metrics_here) == 1:  # the metric goes to the axis label, ticks name the sets
            labels_x = [d for d, _ in groups]
        else:
            labels_x = [f"{d}\n" + "\n".join(textwrap.wrap(m, 18)) for d, m in groups]
        if context:
            tops += list(context.values())
            _draw_context(ax, len(groups), context, unit, max(tops))
            labels_x.append("paper\n(other sets)")
        unit_name = {"%": "%", "F1": "F1", "ms": "ms", "BLEU": "BLEU", "cos": "cosine"}.get(unit, unit)
        single = next(iter(metrics_here)) if len(metrics_here) == 1 else None
        ax.set_ylabel(unit_name if single in (None, unit_name) else f"{single} ({unit_name})")
        ax.set_xticks(range(len(labels_x)))
        crowded = len(labels_x) > 4
        ax.set_xticklabels(labels_x, fontsize=8, rotation=35 if crowded else 0,
                           ha="right" if crowded else "center")
        ax.set_title(task.replace("_", " "), fontsize=11, fontweight="bold")
        ax.set_xlim(-0.7, len(labels_x) - 0.3 + (1.0 if context else 0.0))
        top = max(tops)
        ax.set_ylim(0, top * 1.22 if top > 0 else 1)
        handles, labels = ax.get_legend_handles_labels()
        unique = dict(zip(labels, handles))
        ax.legend(unique.values(), unique.keys(), fontsize=7, loc="upper left")
        ax.grid(axis="y", alpha=0.3)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.suptitle(f"{results.model} on {results.suite}", fontsize=13)
    fig.tight_layout(rect=(0, 0, 1, 0.98))
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def _draw_context(ax: plt.Axes, x: float, marks: dict[tuple[str, str], float], unit: str,
                  top: float) -> None:
    """Hollow diamonds for paper numbers on other test sets, labels spread apart."""
    gap = 0.075 * top * 1.22
    previous = -float("inf")
    for (metric, paper_set), value in sorted(marks.items(), key=lambda kv: kv[1]):
        ax.plot(x, value, marker="D", markersize=7, linestyle="none", markerfacecolor="white",
                markeredgecolor="black", label="paper (other set)")
        y_text = max(value, previous + gap)
        previous = y_text
        ax.annotate(f"{_value_label(value, unit)} {paper_set}", (x, value),
                    xytext=(x + 0.12, y_text), textcoords="data", fontsize=7, color="#444444",
                    va="center", arrowprops={"arrowstyle": "-", "color": "#999999", "lw": 0.6})


def plot_latency_histograms(results: EvalResults, path: Path, system: str | None = None) -> Path | None:
    """Histogram per latency stage of one system (default: the first with samples)."""
    if not results.latency_samples:
        return None
    system = system or next(iter(results.latency_samples))
    samples = {k: v for k, v in results.latency_samples.get(system, {}).items() if v}
    if not samples:
        return None
    stages = list(samples)
    ncols = min(3, len(stages))
    nrows = math.ceil(len(stages) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.6 * ncols, 3.4 * nrows), squeeze=False)
    for ax, stage in zip(axes.flat, stages):
        values = np.asarray(samples[stage], dtype=float)
        ax.hist(values, bins=min(30, max(5, len(values) // 2)), color="#3b6fb6", alpha=0.85)
        p50, p95 = np.percentile(values, [50, 95])
        ax.axvline(p50, color="black", linestyle="-", linewidth=1.2, label=f"p50 {p50:.0f} ms")
        ax.axvline(p95, color="black", linestyle=":", linewidth=1.2, label=f"p95 {p95:.0f} ms")
        if stage in PAPER_STAGE_MS:
            ax.axvline(PAPER_STAGE_MS[stage], color="#b54a4a", linestyle="--", linewidth=1.5,
                       label=f"paper {PAPER_STAGE_MS[stage]:.0f} ms")
        ax.set_title(f"{STAGE_LABELS.get(stage, stage)} (n = {len(values)})", fontsize=10,
                     fontweight="bold")
        ax.set_xlabel("ms")
        ax.set_ylabel("turns")
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(stages):]:
        ax.axis("off")
    fig.suptitle(f"latency per stage: {system}")
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def _segments(active: np.ndarray, frame_s: float) -> list[tuple[float, float]]:
    padded = np.concatenate([[0], (active > 0).astype(int), [0]])
    edges = np.diff(padded)
    starts, ends = np.nonzero(edges == 1)[0], np.nonzero(edges == -1)[0]
    return [(s * frame_s, (e - s) * frame_s) for s, e in zip(starts, ends)]


def plot_duplex_timeline(example: DuplexExample, path: Path, k: int = 10) -> Path:
    """Who speaks when (top) and true vs predicted RESPOND/STOP decisions (bottom)."""
    from minmo.eval.duplex_metrics import RESPOND, STOP, event_onsets

    frame_s = example.frame_ms / 1000.0
    length = max(len(example.user_active), len(example.true_labels),
                 len(example.predicted_labels)) * frame_s
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(11, 4.2), sharex=True,
                                      gridspec_kw={"height_ratios": [1, 1.4]})
    top.broken_barh(_segments(np.asarray(example.user_active), frame_s), (1.1, 0.8),
                    facecolors="#3b6fb6")
    top.broken_barh(_segments(np.asarray(example.assistant_active), frame_s), (0.1, 0.8),
                    facecolors="#e08a2e")
    top.set_yticks([0.5, 1.5])
    top.set_yticklabels(["assistant", "user"])
    top.set_ylim(0, 2)
    top.set_title(f"duplex dialogue {example.id}: speech activity and decisions "
                  f"(frame {example.frame_ms:g} ms; shaded: ±K={k} frames around true events)",
                  fontsize=10)
    lanes = [("true respond", example.true_labels, RESPOND, "#2e7d32"),
             ("predicted respond", example.predicted_labels, RESPOND, "#66bb6a"),
             ("true stop", example.true_labels, STOP, "#b71c1c"),
             ("predicted stop", example.predicted_labels, STOP, "#ef5350")]
    for lane, (name, labels, cls, color) in enumerate(reversed(lanes)):
        times = [f * frame_s for f in event_onsets(labels, cls)]
        if name.startswith("true"):
            for t in times:
                bottom.axvspan(t - k * frame_s, t + k * frame_s, ymin=0, ymax=1, color=color,
                               alpha=0.08)
        bottom.eventplot([times], lineoffsets=lane, linelengths=0.7, colors=color,
                         linewidths=2)
    bottom.set_yticks(range(len(lanes)))
    bottom.set_yticklabels([name for name, *_ in reversed(lanes)])
    bottom.set_ylim(-0.6, len(lanes) - 0.4)
    bottom.set_xlim(0, max(length, frame_s))
    bottom.set_xlabel("time (s)")
    bottom.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def plot_confusion(row: MetricRow, path: Path) -> Path | None:
    """Confusion matrix of a classification row (``details`` has ``labels`` and ``matrix``)."""
    labels = row.details.get("labels")
    matrix = row.details.get("matrix")
    if not labels or not matrix:
        return None
    counts = np.asarray(matrix, dtype=float)
    true_rows = [i for i in range(len(labels)) if counts[i].sum() > 0]  # labels that occur
    counts = counts[true_rows]
    totals = counts.sum(axis=1, keepdims=True)
    share = np.divide(counts, totals, out=np.zeros_like(counts), where=totals > 0)
    width = max(4.0, 0.55 * len(labels) + 2.5)
    height = max(3.0, 0.55 * len(true_rows) + 2.0)
    fig, ax = plt.subplots(figsize=(width + 1.2, height))
    image = ax.imshow(share, cmap="Blues", vmin=0, vmax=1, aspect="auto")
    for i in range(len(true_rows)):
        for j in range(len(labels)):
            if counts[i, j]:
                ax.text(j, i, f"{int(counts[i, j])}", ha="center", va="center", fontsize=9,
                        color="white" if share[i, j] > 0.6 else "black")
    ax.set_xticks(range(len(labels)))
    ax.set_yticks(range(len(true_rows)))
    ax.set_xticklabels(labels, rotation=45, ha="right", fontsize=9)
    ax.set_yticklabels([labels[i] for i in true_rows], fontsize=9)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"{row.task} on {row.dataset} ({row.system})\n{row.metric} "
                 f"{row.value:.1f}%, n = {row.count}", fontsize=10)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="share of true label")
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def plot_per_speaker(row: MetricRow, path: Path) -> Path | None:
    """Error rate per speaker of an ASR row (``details["per_speaker"]``)."""
    per = row.details.get("per_speaker") or {}
    items = [(spk, d["rate"] * 100) for spk, d in per.items()
             if d.get("rate") is not None and math.isfinite(d["rate"])]
    if len(items) < 2:
        return None
    items.sort(key=lambda kv: kv[1])
    fig, ax = plt.subplots(figsize=(max(5.0, 0.35 * len(items) + 2), 3.6))
    ax.bar(range(len(items)), [v for _, v in items], color="#3b6fb6")
    ax.axhline(row.value, color="black", linestyle="--", linewidth=1,
               label=f"corpus {row.metric} {row.value:.1f}%")
    ax.set_xticks(range(len(items)))
    ax.set_xticklabels([s for s, _ in items], rotation=60, ha="right", fontsize=8)
    ax.set_ylabel(f"{row.metric} (%)")
    ax.set_title(f"{row.metric} per speaker: {row.dataset} ({row.system})", fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path
