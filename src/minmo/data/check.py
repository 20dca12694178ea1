"""``minmo data check``: per-task counts and hours of manifests, and every bad row."""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from minmo.data.manifest import TASKS, BadRow, expand_manifest_paths, read_manifest


@dataclass
class CheckReport:
    """Result of checking manifests.

    Attributes:
        files: manifests read.
        counts: good rows per task.
        input_hours: hours of input audio per task.
        target_hours: hours of assistant (target) audio per task.
        bad: every bad row, in file/line order.
    """

    files: list[str] = field(default_factory=list)
    counts: Counter = field(default_factory=Counter)
    input_hours: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    target_hours: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    bad: list[BadRow] = field(default_factory=list)

    @property
    def good_rows(self) -> int:
        """Number of usable rows."""
        return sum(self.counts.values())

    def format(self, max_bad: int = 200) -> str:
        """Human-readable report: a table per task, then the bad rows."""
        lines = [f"checked {len(self.files)} manifest(s)", "",
                 f"{'task':<14}{'rows':>9}{'input h':>10}{'target h':>10}"]
        for task in [t for t in TASKS if self.counts.get(t)]:
            lines.append(f"{task:<14}{self.counts[task]:>9}{self.input_hours[task]:>10.3f}"
                         f"{self.target_hours[task]:>10.3f}")
        lines.append(f"{'total':<14}{self.good_rows:>9}{sum(self.input_hours.values()):>10.3f}"
                     f"{sum(self.target_hours.values()):>10.3f}")
        lines.append("")
        lines.append(f"bad rows: {len(self.bad)}" + (
            " (" + ", ".join(f"{k} {v}" for k, v in sorted(Counter(
                b.kind for b in self.bad).items())) + ")" if self.bad else ""))
        for bad in self.bad[:max_bad]:
            lines.append(f"  {bad}")
        if len(self.bad) > max_bad:
            lines.append(f"  ... and {len(self.bad) - max_bad} more")
        return "\n".join(lines)


def check_manifests(
    paths: Iterable[str | Path], expected_sample_rate: int | None = None
) -> CheckReport:
    """Read manifests (files or directories of ``.jsonl``) and open every audio header.

    Args:
        paths: manifest files or directories (searched recursively).
        expected_sample_rate: flag input audio at any other rate as ``wrong_sample_rate``.

    Returns:
        :class:`CheckReport`.

    Raises:
        FileNotFoundError: a named manifest does not exist, or none was found.
    """
    files = expand_manifest_paths(paths)
    if not files:
        raise FileNotFoundError(f"no .jsonl manifests found in {list(map(str, paths))}")
    report = CheckReport(files=[str(f) for f in files])
    for f in files:
        scan = read_manifest(f, check_files=True, expected_sample_rate=expected_sample_rate)
        report.bad.extend(scan.bad)
        for row in scan.rows:
            report.counts[row.task] += 1
            report.input_hours[row.task] += (row.duration or 0.0) / 3600.0
            report.target_hours[row.task] += (row.target_duration or 0.0) / 3600.0
    return report
