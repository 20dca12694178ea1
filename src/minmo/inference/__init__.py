"""Inference: the model-facing layer shared by the server and the evaluation harness.

* :mod:`~minmo.inference.loading`: ``load_runtime(spec)`` -> :class:`MinMoRuntime` (shared).
* :mod:`~minmo.inference.pipeline`: ``new_session``, ``reply``, ``transcribe``, ``respond``,
  ``start_reply`` / ``new_transcription`` + ``step_jobs`` (batched across sessions).
* :mod:`~minmo.inference.listen`: ``listen_step`` -> duplex decisions per LLM frame.
* :mod:`~minmo.inference.kv`, :mod:`~minmo.inference.generate`: caller-owned caches, batched
  forward passes, text and 5:15 voice streams.
"""
