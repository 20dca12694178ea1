"""Server metrics in the Prometheus text format: session gauge, counters, and per-stage
latency histograms (thread-safe; the engine thread observes, ``/metrics`` renders)."""

from __future__ import annotations

import threading
import time
from bisect import bisect_left

BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.15, 0.25, 0.4, 0.6, 0.8, 1.0, 1.5, 2.5, 5.0, 10.0)

STAGES = {
    "tick": "one engine tick (all sessions)",
    "vad_to_commit": "end of user speech (VAD) to turn commit",
    "turn_encode": "offline encoding of the committed user turn",
    "first_text_token": "turn commit to the first reply text token",
    "five_text_tokens": "turn commit to 5 reply text tokens",
    "first_speech_chunk": "turn commit to the first 15 speech tokens",
    "first_audio": "turn commit to the first reply audio byte sent",
    "vad_stop_to_first_audio": "VAD end-of-speech event (after the silence window) to the first reply audio byte sent",
    "barge_in_stop": "barge-in decision to response cancelled",
    "command_read": "transcription of a short barge-in candidate, read for a command",
}


class Histogram:
    """Cumulative-bucket histogram of seconds."""

    def __init__(self, buckets: tuple[float, ...] = BUCKETS_S):
        self.buckets = buckets
        self.counts = [0] * (len(buckets) + 1)
        self.total = 0.0
        self.n = 0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.buckets, value)] += 1
        self.total += value
        self.n += 1


class Metrics:
    """All server metrics. ``observe(stage, seconds)``, ``inc(counter)``, ``render()``."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.hist = {name: Histogram() for name in STAGES}
        self.counters: dict[str, int] = {}
        self.sessions = 0

    def observe(self, stage: str, seconds: float) -> None:
        with self._lock:
            self.hist.setdefault(stage, Histogram()).observe(max(0.0, seconds))

    def inc(self, name: str, by: int = 1) -> None:
        with self._lock:
            self.counters[name] = self.counters.get(name, 0) + by

    def set_sessions(self, n: int) -> None:
        with self._lock:
            self.sessions = n

    def render(self) -> str:
        """Prometheus exposition text."""
        with self._lock:
            lines = ["# HELP minmo_sessions Active realtime sessions.",
                     "# TYPE minmo_sessions gauge", f"minmo_sessions {self.sessions}",
                     "# HELP minmo_process_cpu_seconds_total CPU time of the server process.",
                     "# TYPE minmo_process_cpu_seconds_total counter",
                     f"minmo_process_cpu_seconds_total {time.process_time():.3f}"]
            for name, value in sorted(self.counters.items()):
                lines += [f"# TYPE minmo_{name}_total counter", f"minmo_{name}_total {value}"]
            lines += ["# HELP minmo_stage_seconds Latency of each serving stage.",
                      "# TYPE minmo_stage_seconds histogram"]
            for stage, h in self.hist.items():
                cum = 0
                for edge, count in zip(h.buckets, h.counts):
                    cum += count
                    lines.append(f'minmo_stage_seconds_bucket{{stage="{stage}",le="{edge}"}} {cum}')
                lines.append(f'minmo_stage_seconds_bucket{{stage="{stage}",le="+Inf"}} {h.n}')
                lines.append(f'minmo_stage_seconds_sum{{stage="{stage}"}} {h.total:.6f}')
                lines.append(f'minmo_stage_seconds_count{{stage="{stage}"}} {h.n}')
            return "\n".join(lines) + "\n"
