"""One Realtime connection's protocol state machine, run on the engine thread.

A :class:`RealtimeSession` owns everything of one conversation: the inference
:class:`~minmo.inference.pipeline.VoiceSession`, its VAD state, input-audio history, turn
state, the reply and transcript jobs, the playback clock, and the ids of the protocol items.
The engine calls it from its single scheduler thread only, so nothing here needs locks.

Clock: the stream position of user audio (16 kHz samples processed). Full-duplex clients
stream the microphone continuously, so this is the session's real-time clock; playback of
the assistant's audio is tracked on it too (:class:`Playback`), which makes the *speaking* state
(and so echo gating and barge-in) deterministic given the audio, independent of wall time.

Turn taking (``server_vad``), per LLM frame (120 ms), see :meth:`on_frame`:

* VAD start while the assistant is silent opens a user turn (``speech_started``).
* The decision of the frame (test seam, trained duplex predictor, or the VAD rule) then
  acts: ``RESPOND`` with an open turn commits it and starts a reply; ``STOP`` while the
  assistant speaks cancels the reply (``turn_detected``) and opens a user turn; ``CONTINUE``
  and ``LISTEN`` change nothing (a back-channel is heard and ignored).
* Who decides and when (``SessionLimits.turns``, a :class:`~minmo.serving.turns.TurnPolicy`):
  the VAD rule (``RESPOND`` once VAD reports ``silence_duration_ms`` of silence after speech;
  ``STOP`` once the user's speech during the assistant's spans ``barge_in_ms``, or a shorter
  overlap the model transcribes as a command, ``read_commands``), or a trusted duplex
  predictor with VAD confirming. The user's turn state
  (:class:`~minmo.serving.turns.TurnState`) and the decision are shared with the replay that
  scores the server on recorded dialogues: :mod:`minmo.serving.turns`.

Echo: while the assistant is audible (by the playback clock, plus ``echo_tail_ms``), a VAD
start needs probability ``echo_threshold`` rather than ``threshold``, and only a sustained
barge-in (see above) interrupts. Browsers add
reference-signal echo cancellation (``echoCancellation: true`` on the mic).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import Any, Callable

import numpy as np
import soxr
import torch

from minmo.inference import pipeline as P
from minmo.inference.listen import DuplexFrame
from minmo.inference.runtime import MinMoRuntime
from minmo.models.duplex import Decision
from minmo.serving import protocol as R
from minmo.serving.metrics import Metrics
from minmo.serving.turns import TurnPolicy, TurnState
from minmo.serving.vad import VADGate

SR = 16000
CLOSE_EVENT = "minmo.internal.close"  # asks the server to close the connection


def commit_tail(td: R.TurnDetection) -> int:
    """Samples of the silence after the user's last speech window that a committed turn
    keeps (``min(silence_duration_ms, 100)`` ms)."""
    return min(td.silence_duration_ms, 100) * SR // 1000


@dataclass
class SessionLimits:
    """Per-session serving settings (see module docstring and ``docs/serving.md``)."""

    echo_threshold: float = 0.8
    echo_tail_ms: int = 300
    max_turn_seconds: float = 30.0
    history_seconds: float = 40.0
    max_tick_seconds: float = 0.5
    transcript_lead_s: float = 2.0  # input transcripts wait while a reply has less audio ahead
    turns: TurnPolicy = field(default_factory=TurnPolicy)  # who decides turns, and when
    min_commit_ms: int = 100
    draft_silence_ms: int = 100  # silence heard before a reply is drafted (and the commit's)


@dataclass
class FrameInfo:
    """What the decision seam sees for one LLM frame of one session."""

    session_id: str
    index: int
    end_sample: int
    predictor: Decision
    probs: torch.Tensor
    responding: bool
    speaking: bool
    vad_active: bool
    user_turn_open: bool


DecisionHook = Callable[[FrameInfo], "Decision | None"]


@dataclass
class Playback:
    """The assistant's audio on the session's stream clock: ``[start, end)`` intervals of
    16 kHz samples (a client plays each chunk from when it is sent, after what it already
    holds). Kept as intervals, not only an end, so a frame decided after its time (deferred
    listening, :meth:`RealtimeSession.listen_samples`) is told what was audible when it
    began, not what is audible now."""

    intervals: list[list[int]] = field(default_factory=list)
    horizon: int = 60 * SR  # intervals that ended this long ago are forgotten

    def add(self, now: int, samples: int) -> None:
        """A chunk of ``samples`` was sent at stream sample ``now``."""
        if self.intervals and self.intervals[-1][1] >= now:
            self.intervals[-1][1] += samples
        else:
            self.intervals.append([now, now + samples])
        while self.intervals and self.intervals[0][1] < now - self.horizon:
            self.intervals.pop(0)

    def lead(self, now: int) -> int:
        """Samples sent and not yet played at ``now``."""
        return max(0, self.intervals[-1][1] - now) if self.intervals else 0

    def cut(self, now: int) -> None:
        """Playback stops at ``now`` (barge-in, cancel, cleared or truncated audio)."""
        if self.intervals and self.intervals[-1][1] > now:
            self.intervals[-1][1] = now
            if self.intervals[-1][1] <= self.intervals[-1][0]:
                self.intervals.pop()

    def audible(self, sample: int, tail: int) -> bool:
        """Audio playing at ``sample``, or ended less than ``tail`` samples before it."""
        return any(a <= sample < b + tail for a, b in reversed(self.intervals))


@dataclass
class Draft:
    """A reply started before its user turn is committed (speculation, see
    :meth:`RealtimeSession.can_draft`): what it answers, and how to take it back.

    Attributes:
        start, end: the turn audio it answers (stream samples); a commit of exactly this
            audio takes the draft (:meth:`RealtimeSession._commit_turn`), anything else
            drops it.
        heard: the VAD's last speech window when it began; more speech drops it.
        speech: the turn's speech embeddings (reused by the commit).
        job: the reply; its events wait in ``events`` until it is taken.
        mark: the conversation before the draft's user item and reply prompt.
    """

    start: int
    end: int
    heard: int
    speech: torch.Tensor
    job: P.ResponseJob
    mark: P.ChatMark
    events: list[P.JobEvent] = field(default_factory=list)

    def wants_step(self) -> bool:
        """Until its first audio (a spoken reply) or first token: then it waits, so a
        draft that is dropped costs no more than that."""
        job = self.job
        if job.finished:
            return False
        return "first_audio" not in job.timings if job.voice is not None else not job.text.ids


class RealtimeSession:
    """Protocol state of one connection (engine thread only).

    Args:
        rt: shared runtime.
        emit: sink for server events (dicts); thread-safe on the server side.
        metrics: server metrics.
        gen: default generation settings.
        limits: serving settings.
        beta: emit beta event names.
    """

    def __init__(self, rt: MinMoRuntime, emit: Callable[[dict], None], metrics: Metrics,
                 gen: P.GenerationConfig, limits: SessionLimits, beta: bool = False):
        self.rt, self.metrics, self.limits, self.beta = rt, metrics, limits, beta
        self._emit = emit
        self.settings = R.SessionSettings(instructions=rt.model.cfg.system_prompt)
        self.gen = gen
        self.voice = P.new_session(rt, P.SessionConfig(generation=gen))
        self.id = self.settings.id
        self.resampler = soxr.ResampleStream(R.WIRE_RATE, SR, 1, dtype="float32")
        self.pending: list[np.ndarray] = []
        self.pending_samples = 0
        self.received = 0  # 16 kHz samples received
        self.clock = 0  # 16 kHz samples processed by VAD / listening
        self.history = np.zeros(0, dtype=np.float32)
        self.history_start = 0
        self.buffer_start = 0
        self.vad_state: Any = None
        self.gate = VADGate()
        self.vad_events: list[tuple[str, int]] = []
        self.turn = TurnState()  # the user's side, as of the frame being decided
        self.turn_start = 0
        self.turn_item: str | None = None
        self.speech_end_wall: float | None = None
        self.job: P.ResponseJob | None = None
        self.draft: Draft | None = None
        self.resp: dict[str, Any] = {}
        self.transcripts: list[tuple[P.ResponseJob, str]] = []
        self.playback = Playback()
        self.listen_backlog: list[np.ndarray] = []  # samples held from the listening stream
        self.listen_backlog_samples = 0
        self.items: list[str] = []
        self.closed = False
        self.last_activity = time.monotonic()
        self.emitted = 0  # events handed to the server (engine thread writes)
        self.sent = 0  # events written to the socket (server thread writes)
        self.applied_audio = 0  # 24 kHz samples applied (engine thread writes)
        self.on_drain: Callable[[], None] | None = None  # server hook: input backlog shrank
        self.emit(R.event("session.created", session=self.settings.to_dict(rt.info.to_dict())))

    # ---- output ----------------------------------------------------------------------

    def emit(self, ev: dict) -> None:
        if self.beta and ev["type"] in R.GA_TO_BETA:
            ev = {**ev, "type": R.GA_TO_BETA[ev["type"]]}
        self.emitted += 1
        self._emit(ev)

    @property
    def outbound(self) -> int:
        """Events queued for the client and not yet written."""
        return self.emitted - self.sent

    def error(self, err: R.ProtocolError) -> None:
        self.metrics.inc("client_errors")
        self.emit(R.error_event(err))

    # ---- state -----------------------------------------------------------------------

    @property
    def vad_mode(self) -> bool:
        return self.settings.turn_detection is not None

    @property
    def responding(self) -> bool:
        return self.job is not None and not self.job.finished

    def speaking(self, sample: int | None = None) -> bool:
        """Assistant audible at ``sample`` (default: now), by the playback clock."""
        at = self.clock if sample is None else sample
        return self.playback.audible(at, self.limits.echo_tail_ms * SR // 1000)

    @property
    def heard(self) -> int:
        """End of the VAD's last speech window (ahead of the frames' turn state)."""
        return self.gate.last_speech_sample

    def live_jobs(self) -> list[P.ResponseJob]:
        """The jobs to advance now: the reply, a draft that still wants steps, and the input
        transcripts unless a spoken reply is still being made (text, speech tokens or
        audio) with less than ``transcript_lead_s`` of its audio ahead of playback (they
        wait behind it: on a busy server their prefill and steps would stall the voice; the
        words on screen can come a moment later)."""
        reply = self.job if self.responding else None
        behind = (reply is not None and self.resp["audio"]
                  and self.playback.lead(self.clock) < self.limits.transcript_lead_s * SR)
        jobs = [] if behind else [j for j, _ in self.transcripts if not j.finished]
        if self.draft is not None and self.draft.wants_step():
            jobs.append(self.draft.job)
        return jobs + ([reply] if reply is not None else [])

    def fail(self, exc: BaseException) -> None:
        """An internal error in this session only: tell the client, then close it."""
        self.metrics.inc("session_failures")
        self.emit(R.error_event(R.ProtocolError(
            f"internal error in this session ({type(exc).__name__}: {exc}); it is closed",
            "session_failed", error_type="server_error")))
        self._emit({"type": CLOSE_EVENT})
        self.close()

    def close(self) -> None:
        """Client gone: drop every job and state."""
        if self.job is not None and not self.job.finished:
            self.job.cancel(self.rt)
        self.drop_draft()
        self.closed = True
        self.job, self.transcripts, self.pending, self.history = None, [], [], self.history[:0]
        self.pending_samples = 0

    # ---- client events ---------------------------------------------------------------

    def apply(self, ev: dict) -> None:
        """Apply one parsed client event; protocol problems become ``error`` events."""
        self.last_activity = time.monotonic()
        if ev["type"] != "input_audio_buffer.append":
            self.drop_draft()  # the client changes the conversation or its settings
        eid = ev.get("event_id") if isinstance(ev.get("event_id"), str) else None
        try:
            getattr(self, "_on_" + ev["type"].replace(".", "_"))(ev, eid)
        except R.ProtocolError as err:
            if err.event_id is None:
                err.event_id = eid
            self.error(err)

    def _on_session_update(self, ev: dict, eid: str | None) -> None:
        new = R.apply_session_update(self.settings, ev.get("session"), eid)
        if new.instructions != self.settings.instructions:
            P.set_system_prompt(self.rt, self.voice, new.instructions)
        if new.turn_detection is None and self.turn.open:
            self.turn.closed()
        self.settings = new
        self.emit(R.event("session.updated", session=new.to_dict(self.rt.info.to_dict())))

    def _on_input_audio_buffer_append(self, ev: dict, eid: str | None) -> None:
        pcm = R.decode_pcm16(ev.get("audio"), eid)
        self.append_audio(pcm)

    def append_audio(self, pcm: np.ndarray) -> None:
        """pcm16 at 24 kHz -> 16 kHz float, into the history and the processing queue."""
        self.applied_audio += pcm.size
        if pcm.size == 0:
            return
        x = self.resampler.resample_chunk(pcm.astype(np.float32) / 32768.0)
        if x.size == 0:
            return
        self.pending.append(x)
        self.pending_samples += x.size
        self.received += x.size
        self.history = np.concatenate([self.history, x])
        excess = self.history.size - int(self.limits.history_seconds * SR)
        if excess > 0:
            self.history = self.history[excess:]
            self.history_start += excess

    def _audio(self, start: int, end: int) -> np.ndarray:
        start = max(start, self.history_start)
        return self.history[start - self.history_start: max(start, end) - self.history_start]

    def _on_input_audio_buffer_commit(self, ev: dict, eid: str | None) -> None:
        if self.turn.open:
            self._commit_turn(self.received, respond=False)
            return
        audio = self._audio(self.buffer_start, self.received)
        if audio.size < self.limits.min_commit_ms * SR // 1000:
            raise R.ProtocolError(
                f"buffer too small: {audio.size * 1000 // SR} ms of audio; commit needs at least "
                f"{self.limits.min_commit_ms} ms", "input_audio_buffer_commit_empty", None, eid)
        self._add_user_audio(R.new_id("item"), audio, self.received)

    def _on_input_audio_buffer_clear(self, ev: dict, eid: str | None) -> None:
        self.buffer_start = self.received
        self.turn.cleared()
        self.turn_item = None
        self.emit(R.event("input_audio_buffer.cleared"))

    def _on_conversation_item_create(self, ev: dict, eid: str | None) -> None:
        role, kind, payload = R.parse_item(ev.get("item"), eid)
        given = ev["item"].get("id")
        item_id = given if isinstance(given, str) and 0 < len(given) <= 64 else R.new_id("item")
        if role == "system":
            raise R.ProtocolError("system items are not supported: set session.instructions",
                                  "invalid_value", "item.role", eid)
        if kind == "audio":
            wave = soxr.resample(payload.astype(np.float32) / 32768.0, R.WIRE_RATE, SR)
            self._add_user_audio(item_id, wave, None, announce_commit=False)
            return
        if role == "user":
            P.add_user_text(self.rt, self.voice, payload)
            item = R.user_text_item(item_id, payload)
        else:
            P.add_assistant_text(self.rt, self.voice, payload)
            item = R.assistant_item(item_id, "completed", payload, audio=False)
        self._announce_item(item)

    def _on_conversation_item_truncate(self, ev: dict, eid: str | None) -> None:
        item_id = ev.get("item_id")
        if item_id not in self.items:
            raise R.ProtocolError(f"no item '{item_id}' in the conversation", "item_not_found",
                                  "item_id", eid)
        ms = ev.get("audio_end_ms", 0)
        if not isinstance(ms, int) or ms < 0:
            raise R.ProtocolError("audio_end_ms must be a non-negative integer", "invalid_value",
                                  "audio_end_ms", eid)
        self.playback.cut(self.clock)
        self.emit(R.event("conversation.item.truncated", item_id=item_id,
                          content_index=ev.get("content_index", 0), audio_end_ms=ms))

    def _on_conversation_item_delete(self, ev: dict, eid: str | None) -> None:
        raise R.ProtocolError("conversation.item.delete is not supported: the conversation "
                              "lives in the model's KV cache", "unsupported", None, eid)

    def _on_conversation_item_retrieve(self, ev: dict, eid: str | None) -> None:
        raise R.ProtocolError("conversation.item.retrieve is not supported", "unsupported",
                              None, eid)

    def _on_response_create(self, ev: dict, eid: str | None) -> None:
        params = ev.get("response") or {}
        if not isinstance(params, dict):
            raise R.ProtocolError("'response' must be an object", "invalid_value", "response", eid)
        mods = params.get("output_modalities", params.get("modalities"))
        if mods is not None and not (isinstance(mods, list) and set(mods) <= {"text", "audio"}):
            raise R.ProtocolError("output_modalities must be ['audio'] or ['text']",
                                  "invalid_value", "response.output_modalities", eid)
        limit = params.get("max_output_tokens")
        if limit is not None and limit != "inf" and not (
                isinstance(limit, int) and not isinstance(limit, bool) and 1 <= limit <= 4096):
            raise R.ProtocolError("max_output_tokens must be 1..4096 or 'inf'", "invalid_value",
                                  "response.max_output_tokens", eid)
        self.start_response(mods, limit, eid)

    def _on_response_cancel(self, ev: dict, eid: str | None) -> None:
        if not self.responding:
            raise R.ProtocolError("no active response to cancel", "response_cancel_not_active",
                                  None, eid)
        self.cancel_response("client_cancelled")

    def _on_output_audio_buffer_clear(self, ev: dict, eid: str | None) -> None:
        self.playback.cut(self.clock)
        self.emit(R.event("output_audio_buffer.cleared",
                          response_id=self.resp.get("id", "")))

    # ---- audio processing (VAD, frames) ----------------------------------------------

    def take_audio(self) -> np.ndarray:
        """Samples for this tick's VAD/listening (at most ``max_tick_seconds``), a multiple
        of the VAD window while more is queued."""
        cap = max(512, int(self.limits.max_tick_seconds * SR) // 512 * 512)
        if not self.pending:
            return np.zeros(0, dtype=np.float32)
        buf = np.concatenate(self.pending)
        n = min(cap, (buf.size // 512) * 512)
        self.pending = [buf[n:]] if n < buf.size else []
        self.pending_samples = buf.size - n
        if n and self.on_drain is not None:
            self.on_drain()
        return buf[:n]

    def listening_can_wait(self) -> bool:
        """Whether this session's listening frames may be held and fed later, in one batch,
        without changing what they decide: the assistant is busy (replying or audible), no
        VAD event waits to be applied, and no user turn or barge-in candidate is open, so
        each frame until the next VAD event would decide CONTINUE (or, once the assistant is
        silent, LISTEN) and act on nothing (:func:`minmo.serving.turns.turn_decision`)."""
        return ((self.responding or self.speaking()) and not self.vad_events
                and self.turn.candidate is None and not self.turn.open)

    def listen_samples(self, chunk: np.ndarray, defer: bool, max_samples: int) -> np.ndarray:
        """This tick's samples for the listening stream: with ``defer`` (the engine's
        decision, from :meth:`listening_can_wait`) ``chunk`` is held, up to ``max_samples``
        in all; otherwise everything held comes out with it. Deferred frames cost one
        batched LLM forward instead of one per frame; they carry their own stream times,
        and the playback intervals answer what was audible then."""
        if chunk.size:
            self.listen_backlog.append(chunk)
            self.listen_backlog_samples += chunk.size
        if defer and self.listen_backlog_samples < max_samples:
            return np.zeros(0, dtype=np.float32)
        out = (np.concatenate(self.listen_backlog) if self.listen_backlog
               else np.zeros(0, dtype=np.float32))
        self.listen_backlog, self.listen_backlog_samples = [], 0
        return out

    def on_vad(self, prob: float, window_end: int) -> None:
        """One VAD window's speech probability (stream sample ``window_end`` after it)."""
        td = self.settings.turn_detection
        if td is None:
            return
        self.gate.silence_ms = td.silence_duration_ms
        self.vad_events += self.gate.feed(prob, window_end, td.threshold,
                                          self.limits.echo_threshold,
                                          echo=self.speaking(window_end) or self.responding)
        if self.draft is not None and self.heard > self.draft.heard:
            self.drop_draft()  # the user goes on: the draft answers too little

    def on_frame(self, frame: DuplexFrame, hook: DecisionHook | None) -> None:
        """Turn-taking for one LLM frame (see module docstring)."""
        td = self.settings.turn_detection
        if td is None or frame.end_s is None:
            return
        end = int(round(frame.end_s * SR))
        while self.vad_events and self.vad_events[0][1] <= end:
            self._vad_event(*self.vad_events.pop(0), td)
        busy = self.responding or self.speaking(end)
        info = FrameInfo(self.id, frame.index, end, frame.decision, frame.probs, self.responding,
                         self.speaking(end), self.turn.vad_active, self.turn.open)
        decision = hook(info) if hook is not None else None
        if decision is None:
            span = self.turn.words_to_read(end, self.limits.turns) if busy else None
            if span is not None:
                self.turn.heard_words(self._read_words(*span))
            decision = self.turn.decide(busy, frame.decision, end, self.limits.turns)
        if busy and decision == Decision.STOP and td.interrupt_response:
            self._barge_in(end, td)
        elif not busy and decision == Decision.RESPOND and self.turn.open:
            stop = self.turn.last_speech + commit_tail(td)
            self._commit_turn(min(stop, self.clock),
                              respond=td.create_response and not self.turn.only_command())
        elif self.turn.open and end - self.turn_start > self.limits.max_turn_seconds * SR:
            self._commit_turn(end, respond=td.create_response)

    def _read_words(self, start: int, end: int) -> str:
        """The model's transcript of the user's speech between two stream samples: a short
        barge-in candidate, read for a command (``TurnPolicy.read_commands``)."""
        t0 = time.perf_counter()
        text = P.transcribe(self.rt, self._audio(start, end),
                            gen=P.GenerationConfig(transcribe_max_tokens=8))
        self.metrics.observe("command_read", time.perf_counter() - t0)
        return text

    def _vad_event(self, kind: str, pos: int, td: R.TurnDetection) -> None:
        was_open = self.turn.open
        if self.turn.vad_event(kind, pos, busy=self.responding or self.speaking(pos)):
            self._open_turn(pos - 512, td)
        elif kind == "stop" and was_open:
            self.speech_end_wall = time.perf_counter()

    def _open_turn(self, start: int, td: R.TurnDetection) -> None:
        self.turn.opened()
        self.turn_start = max(self.buffer_start, start - td.prefix_padding_ms * SR // 1000)
        self.turn_item = R.new_id("item")
        self.emit(R.event("input_audio_buffer.speech_started",
                          audio_start_ms=self.turn_start * 1000 // SR, item_id=self.turn_item))

    def _barge_in(self, end: int, td: R.TurnDetection) -> None:
        t0 = time.perf_counter()
        start = self.turn.barged_in()
        start = end if start is None else start
        if self.responding:
            self.cancel_response("turn_detected")
        self.playback.cut(self.clock)
        self.metrics.inc("barge_ins")
        self._open_turn(start, td)
        self.metrics.observe("barge_in_stop", time.perf_counter() - t0)

    def _commit_turn(self, end: int, respond: bool) -> None:
        draft = self._take_draft(end, respond)
        item_id = self.turn_item or R.new_id("item")
        audio = self._audio(self.turn_start, end)
        self.turn.closed()
        self.turn_item = None
        self.emit(R.event("input_audio_buffer.speech_stopped", audio_end_ms=end * 1000 // SR,
                          item_id=item_id))
        if self.speech_end_wall is not None:
            self.metrics.observe("vad_to_commit", time.perf_counter() - self.speech_end_wall)
        self._add_user_audio(item_id, audio, end, draft=draft)
        if respond:
            self.start_response(None, None, None, draft=draft)

    # ---- speculative replies ---------------------------------------------------------

    def can_draft(self) -> bool:
        """Whether to start answering the open user turn now, before it is committed: the
        VAD has heard as much silence after the user's last speech as a commit keeps
        (:func:`commit_tail`), so the audio a commit would take is known, and at least
        ``SessionLimits.draft_silence_ms`` (a short ``silence_duration_ms`` would otherwise
        draft at every gap between words). If the turn is committed with exactly that
        audio, the reply is already under way (the same reply: its inputs are the same); if
        the user goes on, or anything else happens first, it is dropped and the
        conversation rewound. The turn decision itself waits as before (predictor frames,
        VAD silence)."""
        td = self.settings.turn_detection
        if (td is None or not td.create_response or self.draft is not None or self.responding
                or not self.turn.open or self.heard <= self.turn_start or self.speaking()):
            return False
        wait = max(commit_tail(td), self.limits.draft_silence_ms * SR // 1000)
        return self.clock >= self.heard + wait

    def draft_reply(self) -> None:
        """Start the reply :meth:`can_draft` allows; its events are held until it is taken."""
        td = self.settings.turn_detection
        assert td is not None
        end = self.heard + commit_tail(td)
        speech = self._encode(self._audio(self.turn_start, end))
        mark = P.mark_chat(self.voice)
        P.add_user_speech(self.rt, self.voice, speech)
        audio, gen = self._reply_settings(None, None)
        job = P.start_reply(self.rt, self.voice, audio=audio, gen=gen)
        self.draft = Draft(self.turn_start, end, self.heard, speech, job, mark)
        self.metrics.inc("drafts_started")

    def _take_draft(self, end: int, respond: bool) -> Draft | None:
        """The draft, if it answers exactly the turn audio being committed and a reply is
        wanted; otherwise it is dropped (None)."""
        draft = self.draft
        if draft is not None and respond and (draft.start, draft.end) == (self.turn_start, end):
            self.draft = None
            return draft
        self.drop_draft()
        return None

    def drop_draft(self) -> None:
        """Forget the draft: its job stops and the conversation is rewound to before it."""
        if self.draft is None:
            return
        self.draft.job.discard()
        P.rewind_chat(self.voice, self.draft.mark)
        self.draft = None
        self.metrics.inc("drafts_dropped")

    def _encode(self, audio: np.ndarray) -> torch.Tensor:
        t0 = time.perf_counter()
        speech = self.rt.encode_speech(audio)
        self.metrics.observe("turn_encode", time.perf_counter() - t0)
        return speech

    def _add_user_audio(self, item_id: str, audio: np.ndarray, end: int | None,
                        announce_commit: bool = True, draft: Draft | None = None) -> None:
        """A user audio item into the conversation (a taken ``draft`` put it there already)."""
        speech = draft.speech if draft is not None else self._encode(audio)
        if end is not None:
            self.buffer_start = end
        if announce_commit:
            self.emit(R.event("input_audio_buffer.committed", item_id=item_id,
                              previous_item_id=self.items[-1] if self.items else None))
        if draft is None:
            P.add_user_speech(self.rt, self.voice, speech)
        self._announce_item(R.user_audio_item(item_id))
        if self.settings.transcription:
            self.transcripts.append((P.new_transcription(self.rt, self.voice, speech, self.gen),
                                     item_id))

    def _announce_item(self, item: dict) -> None:
        prev = self.items[-1] if self.items else None
        self.items.append(item["id"])
        self.emit(R.event("conversation.item.added", previous_item_id=prev, item=item))
        if not self.beta:
            self.emit(R.event("conversation.item.done", previous_item_id=prev, item=item))

    # ---- responses -------------------------------------------------------------------

    def _reply_settings(self, modalities: list[str] | None, limit: Any
                        ) -> tuple[bool, P.GenerationConfig]:
        """(spoken?, generation settings) of a reply: the request's, else the session's."""
        mods = modalities or self.settings.output_modalities
        limit = limit if limit is not None else self.settings.max_output_tokens
        return "audio" in mods, replace(self.gen, max_text_tokens=limit if isinstance(limit, int)
                                        else self.gen.max_text_tokens)

    def start_response(self, modalities: list[str] | None, limit: Any, eid: str | None,
                       draft: Draft | None = None) -> None:
        """Begin a reply (a taken ``draft``'s job, with what it produced so far)."""
        if self.responding:
            raise R.ProtocolError("conversation already has an active response: cancel it "
                                  "first (response.cancel)", "conversation_already_has_active_response",
                                  None, eid)
        audio, gen = self._reply_settings(modalities, limit)
        self.job = draft.job if draft is not None else \
            P.start_reply(self.rt, self.voice, audio=audio, gen=gen)
        rid, iid = R.new_id("resp"), R.new_id("item")
        self.resp = {"id": rid, "item": iid, "audio": audio, "mods": ["audio"] if audio else
                     ["text"], "t0": time.perf_counter(), "speech_end": self.speech_end_wall,
                     "sent_audio": False}
        self.speech_end_wall = None
        self.emit(R.event("response.created", response=R.response_object(
            rid, "in_progress", self.resp["mods"], [])))
        item = R.assistant_item(iid, "in_progress", "", audio)
        self.emit(R.event("response.output_item.added", response_id=rid, output_index=0,
                          item=item))
        prev = self.items[-1] if self.items else None
        self.items.append(iid)
        self.emit(R.event("conversation.item.added", previous_item_id=prev, item=item))
        part = {"type": "audio", "transcript": ""} if audio else {"type": "text", "text": ""}
        self.emit(R.event("response.content_part.added", response_id=rid, item_id=iid,
                          output_index=0, content_index=0, part=part))
        if draft is not None:
            self.metrics.inc("drafts_taken")
            self._reply_events(self.job, draft.events)

    def cancel_response(self, reason: str) -> None:
        if not self.responding:
            return
        self.job.cancel(self.rt)  # type: ignore[union-attr]
        self._finish_response("cancelled", reason)

    def _finish_response(self, status: str, reason: str | None) -> None:
        job, r = self.job, self.resp
        text = job.emitted if job is not None else ""
        ids = dict(response_id=r["id"], item_id=r["item"], output_index=0, content_index=0)
        if r["audio"]:
            self.emit(R.event("response.output_audio.done", **ids))
            self.emit(R.event("response.output_audio_transcript.done", transcript=text, **ids))
            part = {"type": "audio", "transcript": text}
        else:
            self.emit(R.event("response.output_text.done", text=text, **ids))
            part = {"type": "text", "text": text}
        self.emit(R.event("response.content_part.done", part=part, **ids))
        item = R.assistant_item(r["item"], "completed" if status == "completed" else "incomplete",
                                text, r["audio"])
        self.emit(R.event("response.output_item.done", response_id=r["id"], output_index=0,
                          item=item))
        if not self.beta:
            idx = self.items.index(r["item"])
            self.emit(R.event("conversation.item.done", item=item,
                              previous_item_id=self.items[idx - 1] if idx else None))
        n_out = len(job.text.ids) + (len(job.voice.tokens) if job and job.voice else 0) if job else 0
        usage = {"total_tokens": n_out, "input_tokens": 0, "output_tokens": n_out}
        self.emit(R.event("response.done", response=R.response_object(
            r["id"], status, r["mods"], [item], reason, usage)))
        self.metrics.inc(f"responses_{status}")
        self.job = None

    def on_job_events(self, job: P.ResponseJob, events: list[P.JobEvent]) -> None:
        """Translate a job's inference events into server events."""
        if self.draft is not None and job is self.draft.job:
            self.draft.events.extend(events)  # out when the draft is taken
            return
        if job is self.job:
            self._reply_events(job, events)
            return
        for tjob, item_id in self.transcripts:
            if tjob is job:
                for ev in events:
                    if isinstance(ev, P.TextDelta):
                        self.emit(R.event("conversation.item.input_audio_transcription.delta",
                                          item_id=item_id, content_index=0, delta=ev.text))
                    elif isinstance(ev, P.JobDone):
                        self.emit(R.event(
                            "conversation.item.input_audio_transcription.completed",
                            item_id=item_id, content_index=0, transcript=ev.text,
                            usage={"type": "duration", "seconds": 0.0}))
        self.transcripts = [(j, i) for j, i in self.transcripts if not j.finished]

    def _reply_events(self, job: P.ResponseJob, events: list[P.JobEvent]) -> None:
        r = self.resp
        ids = dict(response_id=r["id"], item_id=r["item"], output_index=0, content_index=0)
        for ev in events:
            if isinstance(ev, P.TextDelta):
                etype = ("response.output_audio_transcript.delta" if r["audio"]
                         else "response.output_text.delta")
                self.emit(R.event(etype, delta=ev.text, **ids))
            elif isinstance(ev, P.AudioChunk):
                samples = ev.samples
                if ev.sample_rate != R.WIRE_RATE:
                    samples = soxr.resample(samples, ev.sample_rate, R.WIRE_RATE)
                self.emit(R.event("response.output_audio.delta", delta=R.encode_pcm16(samples),
                                  **ids))
                self.playback.add(self.clock, samples.size * SR // R.WIRE_RATE)
                if not r["sent_audio"]:
                    r["sent_audio"] = True
                    now = time.perf_counter()
                    self.metrics.observe("first_audio", now - r["t0"])
                    if r["speech_end"] is not None:
                        self.metrics.observe("vad_stop_to_first_audio", now - r["speech_end"])
            elif isinstance(ev, P.JobDone):
                lag = r["t0"] - job.t0  # a taken draft began before the commit
                for name in ("first_token", "five_tokens", "first_speech_chunk"):
                    if name in job.timings:
                        stage = {"first_token": "first_text_token",
                                 "five_tokens": "five_text_tokens"}.get(name, name)
                        self.metrics.observe(stage, job.timings[name] - lag)
                self._finish_response(ev.status, "max_output_tokens"
                                      if ev.status == "incomplete" else None)
