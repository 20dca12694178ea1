"""Speech decoding on a worker thread, so token2wav overlaps the next LLM / voice-LM steps.

:func:`minmo.inference.pipeline.step_jobs` calls the speech decoder inline by default. With a
:class:`VocoderPool` it submits the decoder steps instead and collects finished audio on
later calls: while the worker turns one session's 15 tokens into audio, the scheduler thread
already computes the next text and speech tokens of every session (torch releases the GIL
inside its kernels, so two cores are used). One worker keeps each job's decoder steps in
order; a job's decoder state is touched only by the worker while it has steps queued.
Results of cancelled jobs are dropped.
"""

from __future__ import annotations

import queue
import threading
from typing import Any

import numpy as np
import torch


class VocoderPool:
    """One worker thread running ``decoder.step`` calls in submission order.

    Args:
        decoder: the runtime's speech decoder (``init_state`` / ``step``).
        threads: torch intra-op threads for the worker (None: leave as is).
    """

    def __init__(self, decoder: Any, threads: int | None = None):
        self.decoder = decoder
        self.threads = threads
        self._todo: queue.SimpleQueue = queue.SimpleQueue()
        self._done: list[tuple[Any, np.ndarray]] = []
        self._lock = threading.Lock()
        self.error: BaseException | None = None
        self.on_done: Any = None  # called (worker thread) after each finished step
        self._thread = threading.Thread(target=self._run, name="minmo-vocoder", daemon=True)
        self._thread.start()

    def submit(self, job: Any, tokens: torch.Tensor, last: bool) -> None:
        """Queue one decoder step of ``job`` (its ``vocoder_inflight`` counts it)."""
        job.vocoder_inflight += 1
        self._todo.put((job, tokens, last))

    def collect(self) -> list[tuple[Any, np.ndarray]]:
        """Finished steps since the last call: ``(job, audio)`` in completion order."""
        with self._lock:
            done, self._done = self._done, []
        return done

    def pending(self) -> bool:
        """Finished steps are waiting for :meth:`collect`."""
        with self._lock:
            return bool(self._done)

    def close(self) -> None:
        self._todo.put(None)
        self._thread.join(timeout=10)

    def _run(self) -> None:
        if self.threads:
            torch.set_num_threads(self.threads)
        while True:
            item = self._todo.get()
            if item is None:
                return
            job, tokens, last = item
            audio = np.zeros(0, dtype=np.float32)
            if not job.finished:
                try:
                    with torch.inference_mode():
                        audio, job.vocoder_state = self.decoder.step(tokens, job.vocoder_state,
                                                                     last=last)
                except Exception as exc:  # reported by the engine; the job ends silent
                    self.error = exc
            with self._lock:
                self._done.append((job, np.asarray(audio, dtype=np.float32)))
            if self.on_done is not None:
                self.on_done()
