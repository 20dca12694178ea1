"""Bind ``minmo eval --model`` to the project's inference API (``minmo.inference``).

Only abilities the inference package really provides are bound; everything else is absent
from :meth:`capabilities`, so its tasks are reported as not scored with the reason. If no
ability at all can be bound, :class:`ModelUnavailableError` explains what is missing instead
of printing numbers.
"""

from __future__ import annotations

from minmo.eval.adapters import EvalModel, ModelUnavailableError


def bind_minmo_model(spec: str, device: str = "cpu") -> EvalModel:
    """Load ``spec`` (checkpoint directory or model preset) for evaluation.

    Raises:
        ModelUnavailableError: the inference API is not in this build.
    """
    import minmo.inference as inference

    public = sorted(n for n in dir(inference) if not n.startswith("_"))
    raise ModelUnavailableError(
        f"cannot evaluate model {spec!r}: this build's inference package (minmo.inference) "
        "does not yet provide a model loader with speech-to-text / spoken-reply / TTS / "
        f"duplex generation (it exports: {', '.join(public) or 'nothing'}). The evaluation "
        "harness itself (metrics, readers, reports; docs/eval.md) is ready and will bind "
        "to the loader once it lands. No numbers were produced."
    )


def bind_cascade_baseline(spec: str, device: str = "cpu") -> EvalModel:
    """The cascade baseline (the project's ASR -> the same LLM -> TTS) for ``spec``.

    Raises:
        ModelUnavailableError: the components or the inference API are not in this build.
    """
    raise ModelUnavailableError(
        f"--baseline cascade for {spec!r}: the cascade needs minmo.inference's ASR, text LLM "
        "and TTS entry points, which this build does not provide yet; run without --baseline."
    )
