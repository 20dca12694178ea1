"""Bind ``minmo eval --model`` to the project's inference API (``minmo.inference``).

:class:`MinMoEvalModel` drives a :class:`~minmo.inference.runtime.MinMoRuntime` exactly as the
server does, one item at a time:

* ``speech_to_text``: the training prompt of the task (system block, the *first* paraphrase
  of the task's instruction from :mod:`minmo.data.templates`, the speech embeddings, the
  assistant header), greedy text generation in a throw-away cache.
* ``spoken_reply``: :func:`minmo.inference.pipeline.reply` (text + speech), with the reply's
  timestamps turned into the paper's stage durations.
* ``synthesize``: a typed user turn with the TTS (or instruction-TTS) instruction, answered
  with speech. The model has one trained assistant voice: a voice prompt is not used.
* ``duplex``: the user channel is fed to :func:`minmo.inference.listen.listen_step` in chunks
  of one LLM frame, in simulated time (no sleeping), with the assistant-speaking flag taken
  from the dialogue's reference (the recorded assistant channel).

:class:`CascadeEvalModel` is the baseline: the same runtime's ASR pass, then the transcript
as a typed user turn to the same LLM (and voice LM for speech). :class:`TypedQuestionEvalModel`
is the ceiling: the question's own text typed to the same LLM, what spoken QA would score if
the model heard every word.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import numpy as np
import torch

from minmo.eval.adapters import DuplexTrace, EvalModel, ModelUnavailableError, SpokenReply
from minmo.eval.latency import reply_stage_latencies
from minmo.eval.readers import EvalItem

TEXT_TOKEN_LIMITS = {"asr": 96, "casr": 96, "s2tt": 128, "lid": 48, "ser": 48, "aed": 48,
                     "sa": 48, "s2t_chat": 64}
"""Reply length limits (text tokens) per task: generous for the answers of each task, and
they bound the time a model that never stops (random weights) can take."""
SPEECH_TOKENS_PER_SECOND = 25
TTS_MIN_SYLLABLES_PER_SECOND = 2.0
"""TTS speech limit: the text read at 2 syllables/s (slower than any natural or "slow"
reading), at least 2 s, at most ``max_tts_seconds``."""


def _load_runtime(spec: str, device: str, vocoder: str = "auto", quantize: str = "none") -> Any:
    try:
        from minmo.inference.loading import load_runtime
    except ImportError as exc:
        raise ModelUnavailableError(
            f"cannot evaluate model {spec!r}: minmo.inference has no model loader in this "
            f"build ({exc}); no numbers were produced"
        ) from None
    try:
        return load_runtime(spec, device=device, vocoder=vocoder, quantize=quantize)
    except (FileNotFoundError, ValueError) as exc:  # ModelLoadError, ConfigError, ...
        raise ModelUnavailableError(f"cannot load model {spec!r}: {exc}") from None


def task_instruction(task: str, item: EvalItem) -> str:
    """The user-turn text for a speech task: the first training paraphrase, filled in."""
    from minmo.data.templates import INSTRUCTIONS, language_name

    template = INSTRUCTIONS.get(task, ("",))[0]
    return template.format(
        text=item.reference,
        target_language=language_name(item.extra.get("target_language") or "en"),
        hotwords=", ".join(item.extra.get("hotwords") or []),
    )


def tts_instruction(text: str, style: str | None, instruction: str | None) -> str:
    """The typed user turn asking for speech: the row's own instruction, the style's first
    template, or the plain TTS template."""
    from minmo.data.templates import INSTRUCTIONS, STYLE_INSTRUCTIONS

    if instruction:
        return instruction if text in instruction else f"{instruction} {text}"
    if style and style in STYLE_INSTRUCTIONS:
        return STYLE_INSTRUCTIONS[style][0].format(text=text)
    return INSTRUCTIONS["tts"][0].format(text=text)


def _to_16k(wave: np.ndarray, sample_rate: int, target: int) -> np.ndarray:
    from minmo.audio.io import resample

    return resample(np.asarray(wave, dtype=np.float32), sample_rate, target)


def read_aloud_token_cap(text: str, language: str, max_seconds: float = 30.0) -> int:
    """Speech-token limit of ``text`` read aloud (:data:`TTS_MIN_SYLLABLES_PER_SECOND`)."""
    from minmo.eval.prosody import count_syllables

    seconds = max(2.0, count_syllables(text, language) / TTS_MIN_SYLLABLES_PER_SECOND)
    return int(min(seconds, max_seconds) * SPEECH_TOKENS_PER_SECOND)


TTS_TEXT_MODES = ("generated", "given")
"""Read-aloud replies (``tts``, ``instruct_tts``): the words the LLM writes after the
instruction, or the given text fed to it (``minmo eval --tts-text``)."""


class MinMoEvalModel:
    """:class:`~minmo.eval.adapters.EvalModel` over a MinMo runtime."""

    def __init__(self, runtime: Any, name: str, max_reply_seconds: float = 6.0,
                 max_reply_text_tokens: int = 64, max_tts_seconds: float = 30.0,
                 transcript_ctc_weight: float = 0.0, tts_text: str = "generated",
                 beam_size: int = 1, length_penalty: float | None = None):
        from minmo.inference.pipeline import GenerationConfig

        if tts_text not in TTS_TEXT_MODES:
            raise ValueError(f"tts_text {tts_text!r}: expected one of {TTS_TEXT_MODES}")
        self.rt = runtime
        self.name = name
        # how text is decoded: greedily, jointly with CTC (``asr`` transcripts only), or by
        # beam search (every speech-to-text pass and reply text)
        decoding = {"transcribe_ctc_weight": transcript_ctc_weight,
                    "beam_size": beam_size}
        if length_penalty is not None:  # None: the generation default
            decoding["length_penalty"] = length_penalty
        self.decoding = GenerationConfig(**decoding)
        self.tts_text = tts_text  # read-aloud replies: words the LLM writes, or the given ones
        self.max_reply_seconds = max_reply_seconds
        self.max_reply_text_tokens = max_reply_text_tokens
        self.max_tts_seconds = max_tts_seconds
        self._speaker_embedder: Any = None
        from minmo.inference.listen import ListenConfig

        self.listen_cfg = ListenConfig()  # the duplex listening stream (serving's defaults)

    @property
    def respond_silence_ms(self) -> float:
        """The model's ``duplex.respond_silence_ms``: when the server trusts its RESPOND."""
        return self.rt.model.cfg.duplex.respond_silence_ms

    def _trained_speaker_config(self) -> Any:
        """The model's speaker-encoder config when it names trained weights, else None."""
        cfg = getattr(self.rt.model.cfg, "speaker", None)
        if cfg is None:
            return None
        if (cfg.kind == "onnx" and cfg.onnx_path) or (cfg.kind == "tiny" and cfg.path):
            return cfg
        return None

    def _session(self, max_text_tokens: int, max_speech_tokens: int) -> Any:
        """A fresh conversation whose replies decode as ``self.decoding`` says."""
        from minmo.inference.pipeline import SessionConfig, new_session

        gen = dataclasses.replace(self.decoding, max_text_tokens=max_text_tokens,
                                  max_speech_tokens=max_speech_tokens)
        return new_session(self.rt, SessionConfig(generation=gen))

    def capabilities(self) -> frozenset[str]:
        caps = {"speech_to_text", "spoken_reply", "synthesize", "duplex"}
        if self._trained_speaker_config() is not None:
            caps.add("speaker_embedding")
        return frozenset(caps)

    def speaker_embedding(self, wave: np.ndarray, sample_rate: int) -> np.ndarray:
        """``(D,)`` embedding from the model's trained speaker encoder (``speaker`` config)."""
        from minmo.models.speaker import build_speaker_embedder, speaker_features

        if self._speaker_embedder is None:
            cfg = self._trained_speaker_config()
            if cfg is None:
                raise ModelUnavailableError("the model config names no trained speaker encoder")
            self._speaker_embedder = build_speaker_embedder(cfg)
        audio = _to_16k(wave, sample_rate, 16000)
        embedder = self._speaker_embedder
        if hasattr(embedder, "embed_wave"):
            return embedder.embed_wave(audio).float().cpu().numpy()
        return embedder.embed_features(speaker_features(audio)).numpy()

    def describe(self) -> dict[str, Any]:
        """Provenance for ``results.json`` and the report (random weights, placeholder
        vocoder, joint CTC decoding of transcripts or a beam search when on, ...)."""
        info = self.rt.info.to_dict()
        if self.decoding.transcribe_ctc_weight > 0:
            info["transcript_ctc_weight"] = self.decoding.transcribe_ctc_weight
        if self.decoding.beam_size > 1:
            info["beam_size"] = self.decoding.beam_size
            info["length_penalty"] = self.decoding.length_penalty
        info["tts_text"] = self.tts_text
        return info

    # ---- speech in, text out -------------------------------------------------------------

    def speech_to_text(self, task: str, wave: np.ndarray, sample_rate: int,
                       item: EvalItem) -> str:
        from minmo.inference.pipeline import speech_to_text

        rt = self.rt
        limit = TEXT_TOKEN_LIMITS.get(task, self.decoding.transcribe_max_tokens)
        return speech_to_text(rt, _to_16k(wave, sample_rate, rt.sample_rate_in),
                              task_instruction(task, item), limit, self.decoding)

    # ---- spoken replies and TTS ----------------------------------------------------------

    def spoken_reply(self, wave: np.ndarray, sample_rate: int, item: EvalItem) -> SpokenReply:
        from minmo.inference.pipeline import reply

        rt = self.rt
        wave = _to_16k(wave, sample_rate, rt.sample_rate_in)
        session = self._session(self.max_reply_text_tokens,
                                int(self.max_reply_seconds * SPEECH_TOKENS_PER_SECOND))
        started = time.perf_counter()
        out = reply(rt, wave, session=session, with_transcript=False, audio=True)
        elapsed = time.perf_counter() - started
        t = out.timings
        before = max(0.0, elapsed - t["total"]) if "total" in t else None
        timings = reply_stage_latencies(t.get("first_token"), t.get("five_tokens"),
                                        t.get("first_speech_chunk"), t.get("first_audio"), before)
        return SpokenReply(out.text, out.wave, out.sample_rate, timings)

    def synthesize(self, text: str, language: str, style: str | None, instruction: str | None,
                   prompt: tuple[np.ndarray, int] | None) -> tuple[np.ndarray, int]:
        from minmo.inference.pipeline import reply

        rt = self.rt
        text_tokens = len(rt.tok.encode(text))
        speech_cap = read_aloud_token_cap(text, language, self.max_tts_seconds)
        session = self._session(text_tokens + 16, speech_cap)
        said = reply(rt, None, session, text=tts_instruction(text, style, instruction),
                     say=text if self.tts_text == "given" else None)
        return said.wave, said.sample_rate

    # ---- full duplex ---------------------------------------------------------------------

    def duplex(self, user_wave: np.ndarray, sample_rate: int, item: EvalItem,
               streaming: bool = True) -> DuplexTrace:
        """The predictor's decisions over one dialogue's user channel, with the recorded
        assistant channel as the speaking flag. ``streaming`` (default, what serving does):
        the listening stream frame by frame; ``False``: one offline pass over the dialogue
        with the features the duplex stage trains on (``scripts/tune_duplex.py --offline``):
        equal to streaming when ``encoder.stream_chunk`` is set, else full context (then the
        gap measures what streaming costs the predictor)."""
        from minmo.inference.listen import listen_step, new_listen_state
        from minmo.models.duplex import Decision, speaking_lookup

        rt = self.rt
        wave = _to_16k(user_wave, sample_rate, rt.sample_rate_in)
        speaking10 = np.zeros(0, dtype=np.int64)
        if item.extra.get("labels"):
            with np.load(item.extra["labels"]) as npz:
                speaking10 = np.asarray(npz["assistant_speaking"], dtype=np.int64)

        frame_s = rt.llm_frame_seconds
        frame_ms = round(frame_s * 1000.0, 6)
        num_frames = int(np.ceil(wave.size / rt.sample_rate_in / frame_s))
        decisions = np.zeros(num_frames, dtype=np.int64)
        probs = np.zeros((num_frames, len(Decision)), dtype=np.float32)
        probs[:, Decision.LISTEN] = 1.0  # frames the stream never decided (the tail) listen
        if not streaming:
            return self._duplex_offline(wave, speaking10, frame_ms, decisions, probs)
        assistant_speaking = speaking_lookup(speaking10)
        cfg = self.listen_cfg
        state = new_listen_state(rt, cfg)
        chunk = max(1, int(round(frame_s * rt.sample_rate_in)))
        timings: list[dict[str, float]] = []
        system = rt.model.cfg.system_prompt
        for start in range(0, wave.size, chunk):
            began = time.perf_counter()
            frames = listen_step(rt, [state], [wave[start:start + chunk]],
                                 [assistant_speaking], [system], cfg)[0]
            spent = 1000.0 * (time.perf_counter() - began)
            real = [f for f in frames if f.end_s is not None]
            if real:
                timings.append({"duplex_frame_compute": spent / len(real)})
            for frame in real:
                index = int(round(frame.end_s / frame_s)) - 1
                if 0 <= index < num_frames:
                    decisions[index] = int(frame.decision)
                    probs[index] = frame.probs.cpu().numpy()
        return DuplexTrace(frame_ms, decisions, timings, probs)

    @torch.inference_mode()
    def _duplex_offline(self, wave: np.ndarray, speaking10: np.ndarray, frame_ms: float,
                        decisions: np.ndarray, probs: np.ndarray) -> DuplexTrace:
        from minmo.inference.listen import listening_prompt
        from minmo.models.duplex import pool_flags

        rt, m = self.rt, self.rt.model
        speech = rt.encode_speech(wave, streaming=True)
        n = speech.shape[0]
        prefix = listening_prompt(rt, m.cfg.system_prompt)
        hidden = m.llm(torch.cat([prefix, speech])[None]).hidden[0, -n:]
        starts, ends = m.speech_frame_spans(n)
        flags = pool_flags(torch.as_tensor(speaking10), starts)[None].to(rt.device)
        frame_probs = m.duplex(hidden[None], flags, torch.tensor([n], device=rt.device))[0]
        frame_probs = frame_probs.float().softmax(-1)
        frame_decisions = m.duplex.decide(frame_probs)
        per = round(frame_ms / 10.0)
        for j in range(n):
            index = int(ends[j]) // per - 1
            if starts[j] >= 0 and 0 <= index < decisions.size:
                decisions[index] = int(frame_decisions[j])
                probs[index] = frame_probs[j].cpu().numpy()
        return DuplexTrace(frame_ms, decisions, [], probs)


class CascadeEvalModel(MinMoEvalModel):
    """Baseline: the runtime's ASR pass, then the transcript typed to the same LLM.

    Only the spoken-QA tasks differ from the aligned model (ASR is the same pass), so the
    cascade is scored on ``s2t_chat`` and ``s2s_chat``.
    """

    transcribes = True
    """Whether the question passes through the ASR pass (its time is reported as ``asr``)."""

    def capabilities(self) -> frozenset[str]:
        return frozenset({"speech_to_text", "spoken_reply"})

    def supports_task(self, task: str) -> bool:
        """The tasks the cascade is compared on."""
        return task in ("s2t_chat", "s2s_chat")

    def _transcript(self, wave: np.ndarray, sample_rate: int) -> str:
        from minmo.inference.pipeline import transcribe

        return transcribe(self.rt, _to_16k(wave, sample_rate, self.rt.sample_rate_in),
                          gen=self.decoding)

    def _user_text(self, wave: np.ndarray, sample_rate: int, item: EvalItem) -> str:
        """The words typed to the LLM for a spoken question: here, its transcript."""
        return self._transcript(wave, sample_rate)

    def speech_to_text(self, task: str, wave: np.ndarray, sample_rate: int,
                       item: EvalItem) -> str:
        from minmo.inference.pipeline import reply

        if task == "asr":  # used as the ASR judge
            return self._transcript(wave, sample_rate)
        if task != "s2t_chat":
            raise ValueError(f"{self.name} is compared on spoken QA only, not {task}")
        session = self._session(self.max_reply_text_tokens, 0)
        question = self._user_text(wave, sample_rate, item)
        return reply(self.rt, None, session, text=question, audio=False).text

    def spoken_reply(self, wave: np.ndarray, sample_rate: int, item: EvalItem) -> SpokenReply:
        from minmo.inference.pipeline import reply

        started = time.perf_counter()
        question = self._user_text(wave, sample_rate, item)
        asr_s = time.perf_counter() - started
        session = self._session(self.max_reply_text_tokens,
                                int(self.max_reply_seconds * SPEECH_TOKENS_PER_SECOND))
        out = reply(self.rt, None, session, text=question, audio=True)
        timings = {"asr": 1000.0 * asr_s} if self.transcribes else {}
        if "first_audio" in out.timings:  # from the question's start (its ASR included)
            timings["end_to_end"] = 1000.0 * (time.perf_counter() - started - out.timings["total"]
                                              + out.timings["first_audio"])
        return SpokenReply(out.text, out.wave, out.sample_rate, timings)


class TypedQuestionEvalModel(CascadeEvalModel):
    """Ceiling: the question's own text (the row's ``question``, or its transcript ``text``)
    typed to the same LLM, and answered as the cascade answers. Spoken QA cannot score above
    what the LLM knows when it reads the words; the gap between this and the aligned model
    is what hearing loses."""

    transcribes = False

    def _user_text(self, wave: np.ndarray, sample_rate: int, item: EvalItem) -> str:
        question = item.extra.get("question") or item.extra.get("text")
        if not isinstance(question, str) or not question.strip():
            raise ValueError(f"item {item.id}: no question text (a 'question' field, or the "
                             "manifest row's 'text') to type")
        return question


def bind_minmo_model(spec: str, device: str = "cpu", max_reply_seconds: float = 6.0,
                     vocoder: str = "auto", transcript_ctc_weight: float = 0.0,
                     tts_text: str = "generated", beam_size: int = 1,
                     length_penalty: float | None = None, quantize: str = "none") -> EvalModel:
    """Load ``spec`` (model directory, run directory or preset such as ``tiny``).

    Args:
        spec: model directory, run directory or preset.
        device: torch device.
        max_reply_seconds: speech length limit of spoken replies.
        vocoder: speech decoder: ``auto``/``token2wav`` or ``placeholder``.
        transcript_ctc_weight: joint CTC/attention decoding of ``asr`` transcripts (0: off).
        tts_text: read-aloud tasks: ``generated`` (the LLM writes the words it speaks, as
            the paper's system does) or ``given`` (it is fed the text: the speech alone).
        beam_size, length_penalty: beam search of the text the model writes (1: greedy;
            :mod:`minmo.inference.beam`; a length penalty of None: the default).
        quantize: ``none`` or ``int8`` (the LLM's weights, CPU: :mod:`minmo.inference.quantize`).

    Raises:
        ModelUnavailableError: no loader in this build, or the model cannot be loaded.
    """
    return MinMoEvalModel(_load_runtime(spec, device, vocoder, quantize), spec,
                          max_reply_seconds=max_reply_seconds,
                          transcript_ctc_weight=transcript_ctc_weight, tts_text=tts_text,
                          beam_size=beam_size, length_penalty=length_penalty)


def bind_baseline(spec: str, device: str = "cpu", shared: Any = None,
                          kind: str = "cascade") -> EvalModel:
    """A baseline over the same model: ``cascade`` (:class:`CascadeEvalModel`) or ``text``
    (:class:`TypedQuestionEvalModel`).

    Args:
        spec: as for :func:`bind_minmo_model`.
        device: torch device.
        shared: an already bound :class:`MinMoEvalModel` whose runtime to reuse.
        kind: ``cascade`` or ``text``.
    """
    classes = {"cascade": CascadeEvalModel, "text": TypedQuestionEvalModel}
    if kind not in classes:
        raise ValueError(f"baseline {kind!r}: one of {', '.join(classes)}")
    cls = classes[kind]
    if isinstance(shared, MinMoEvalModel):
        baseline = cls(shared.rt, f"{kind}({spec})", shared.max_reply_seconds,
                       shared.max_reply_text_tokens, shared.max_tts_seconds)
        baseline.decoding = shared.decoding  # its text is decoded as the model's
        return baseline
    return cls(_load_runtime(spec, device), f"{kind}({spec})")
