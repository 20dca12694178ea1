"""The server's turn taking: the user's turn state and one frame's decision, shared by the
live session and a replay of recorded dialogues.

:class:`TurnState` follows the user's side from VAD events (turn open, closed by the VAD
gate, a barge-in candidate, the last speech window); :func:`turn_decision` is the rule
:class:`minmo.serving.session.RealtimeSession` applies to every LLM frame (unless a test's
decision hook overrides it), with the settings of a :class:`TurnPolicy`: the VAD rule alone,
or with a trusted duplex predictor (``trust_predictor``):

* assistant busy (speaking or replying): STOP needs a barge-in candidate (user speech that
  began while the assistant spoke) and either ``barge_in_ms`` of that speech heard (longer
  than back-channels), or its words read as a command (``read_commands``: once the user
  pauses ``command_pause_ms`` after a candidate shorter than ``barge_in_ms``, the model
  transcribes it, and a transcript that begins with one of the duplex corpus' commands,
  "stop", "wait", "hold on", ..., stops the assistant: short commands are as short as
  back-channels, so their length cannot tell them apart; a turn that is only such a command
  is committed without a reply), or, with a trusted predictor
  (``predictor_stop``), its STOP while the user still speaks (``stop_speech_ms``); anything
  else CONTINUEs;
* assistant silent: a trusted predictor's RESPOND answers the open user turn once VAD has
  heard ``respond_silence_ms`` without speech; the VAD rule answers it once the VAD gate has
  closed it (``silence_duration_ms`` of silence).

:func:`replay_turns` runs the session's VAD step, turn state and decision over a recorded
dialogue, and :func:`server_decisions` both policies from the user channel, so they are scored
with the predictor's own metrics (``minmo eval --tasks duplex``, ``scripts/tune_duplex.py
--vad-rule``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from minmo.config import DuplexConfig
from minmo.data.qa import COMMANDS
from minmo.models.duplex import Decision, speaking_lookup
from minmo.serving.vad import SAMPLE_RATE, WINDOW, SileroVAD, VADGate, stream_probs


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z']+", text.lower())


_COMMAND_WORDS = [_words(c) for c in COMMANDS]


def is_command(text: str) -> bool:
    """``text`` begins with one of the duplex corpus' commands (:data:`minmo.data.qa.COMMANDS`:
    "stop", "wait", "hold on", ...), case and punctuation aside."""
    words = _words(text)
    return any(words[:len(c)] == c for c in _COMMAND_WORDS)


def turn_decision(busy: bool, predicted: Decision | None, *, end: int, turn_open: bool,
                  turn_stopped: bool, candidate: int | None, last_speech: int,
                  barge_in_ms: float, respond_silence_ms: float,
                  stop_speech_ms: float | None = None, command: bool = False) -> Decision:
    """One frame's decision (see the module docstring).

    Args:
        busy: the assistant is speaking or replying.
        predicted: the trusted predictor's decision for the frame (None: the VAD rule alone).
        end: stream sample where the frame ends.
        turn_open / turn_stopped: a user turn is open / the VAD gate has closed it.
        candidate: stream sample where a barge-in candidate began (None: none).
        last_speech: end of the last VAD speech window up to ``end``.
        barge_in_ms / respond_silence_ms / stop_speech_ms: :class:`TurnPolicy`'s.
        command: the candidate's words were read as a command.
    """
    ms = SAMPLE_RATE / 1000
    if busy:
        if candidate is None:
            return Decision.CONTINUE
        heard = last_speech - candidate >= barge_in_ms * ms  # speech heard, not time elapsed
        stop = predicted == Decision.STOP and (stop_speech_ms is None
                                               or end - last_speech <= stop_speech_ms * ms)
        return Decision.STOP if heard or command or stop else Decision.CONTINUE
    silent = end - last_speech >= respond_silence_ms * ms
    if predicted == Decision.RESPOND and turn_open and silent:
        return Decision.RESPOND
    return Decision.RESPOND if turn_open and turn_stopped else Decision.LISTEN


@dataclass(frozen=True)
class TurnPolicy:
    """The server's turn-taking settings (``SessionLimits.turns``; see the module docstring).

    Attributes:
        trust_predictor: the duplex predictor decides too (else the VAD rule alone).
        barge_in_ms: user speech this long during the assistant's interrupts it (heard
            speech, from the candidate's onset to its latest speech window).
        respond_silence_ms: a trusted predictor's RESPOND needs this much VAD silence (the
            rule's RESPOND waits for the VAD gate to close the turn).
        predictor_stop: a trusted predictor's STOP interrupts before ``barge_in_ms`` (off by
            default: minmo-small's STOP lost more back-channels than it gained in barge-in
            latency, see ``docs/minmo_small.md``; the predictor's RESPOND is what it adds).
        stop_speech_ms: with ``predictor_stop``, its STOP counts only within this long of
            the last VAD speech window (a STOP as a back-channel ends is not a barge-in;
            None: always).
        read_commands: a barge-in candidate shorter than ``barge_in_ms`` is transcribed
            (with ``command_lead_ms`` before it) once the user pauses ``command_pause_ms``
            after it, and stops the assistant when its words are a command
            (:func:`is_command`).
    """

    trust_predictor: bool = False
    barge_in_ms: float = 600.0
    respond_silence_ms: float = DuplexConfig.respond_silence_ms  # a model's own: for_model
    predictor_stop: bool = False
    stop_speech_ms: float | None = 100.0
    read_commands: bool = True
    command_pause_ms: float = 150.0
    command_lead_ms: float = 250.0

    @classmethod
    def for_model(cls, model_cfg: Any, **settings: Any) -> "TurnPolicy":
        """The policy with the model's own ``duplex.respond_silence_ms`` (tuned with its
        predictor) and ``settings`` over the defaults."""
        settings.setdefault("respond_silence_ms", model_cfg.duplex.respond_silence_ms)
        return cls(**settings)


@dataclass
class TurnState:
    """The user's side of the conversation as the server tracks it from VAD events, shared
    by the live session and :func:`replay_turns`.

    Attributes:
        open / stopped: a user turn is open / the VAD gate has closed it (not yet answered).
        candidate: stream sample where a barge-in candidate began (user speech that started
            while the assistant was busy); None: none.
        last_speech: end of the last VAD speech window.
        vad_active: the VAD gate is in speech.
        command: the candidate's words were read as a command.
        read: the candidate whose words were read (each is read once).
        command_end: after a barge-in by a command, where its speech ended: the turn it
            opened is the bare command (not answered) until the user says more.
    """

    open: bool = False
    stopped: bool = False
    candidate: int | None = None
    last_speech: int = 0
    vad_active: bool = False
    command: bool = False
    read: int | None = None
    command_end: int | None = None

    def vad_event(self, kind: str, pos: int, busy: bool) -> bool:
        """Apply one :meth:`VADGate.feed` event at stream sample ``pos`` (``busy``: the
        assistant speaking or replying then). Returns True when the event begins a new user
        turn, which the caller opens (:meth:`opened`) at ``pos - WINDOW``."""
        if kind == "speech":
            self.last_speech = pos
            return False
        self.vad_active = kind == "start"
        self.command = False
        if kind == "start":
            self.stopped = False
            if busy:
                self.candidate = pos - WINDOW
            return not busy and not self.open
        self.candidate = None
        self.stopped = self.open
        return False

    def words_to_read(self, end: int, policy: TurnPolicy) -> tuple[int, int] | None:
        """The stream span to read for a command at the frame ending at ``end`` (see
        :class:`TurnPolicy`): the barge-in candidate's speech with ``command_lead_ms``
        before it (the VAD starts late on a word's onset) and the pause after it, up to
        ``end``; or None: no candidate, read already, no pause after it yet, or long enough
        to interrupt by its length."""
        ms = SAMPLE_RATE / 1000
        if (not policy.read_commands or self.candidate is None or self.read == self.candidate
                or self.last_speech <= self.candidate
                or end - self.last_speech < policy.command_pause_ms * ms
                or self.last_speech - self.candidate >= policy.barge_in_ms * ms):
            return None
        return max(0, self.candidate - int(policy.command_lead_ms * ms)), end

    def heard_words(self, text: str) -> None:
        """The candidate's words (:meth:`words_to_read`) as the model transcribed them."""
        self.read = self.candidate
        self.command = is_command(text)

    def decide(self, busy: bool, predicted: Decision | None, end: int,
               policy: TurnPolicy) -> Decision:
        """This frame's decision (:func:`turn_decision`); ``predicted`` is used only when the
        policy trusts the predictor."""
        if not policy.trust_predictor:
            predicted = None
        elif predicted == Decision.STOP and not policy.predictor_stop:
            predicted = Decision.CONTINUE
        return turn_decision(
            busy, predicted, end=end, turn_open=self.open, turn_stopped=self.stopped,
            candidate=self.candidate, last_speech=self.last_speech,
            barge_in_ms=policy.barge_in_ms, respond_silence_ms=policy.respond_silence_ms,
            stop_speech_ms=policy.stop_speech_ms, command=self.command)

    def opened(self) -> None:
        """A user turn opened (VAD start, or a barge-in)."""
        self.open, self.stopped = True, False

    def barged_in(self) -> int | None:
        """The assistant was stopped: returns where the barge-in began (None: unknown), and
        forgets the candidate. The caller then opens the user's turn."""
        self.command_end = self.last_speech if self.command else None
        start, self.candidate, self.command = self.candidate, None, False
        return start

    def only_command(self) -> bool:
        """The open turn is a command that stopped the assistant and nothing after it: "stop"
        asks for silence, not an answer, so the turn is committed without a reply."""
        return self.command_end is not None and self.last_speech <= self.command_end

    def closed(self) -> None:
        """The open turn was committed (answered) or dropped."""
        self.open = self.stopped = False
        self.command_end = None

    def cleared(self) -> None:
        """The input audio was cleared: no open turn, no barge-in candidate."""
        self.closed()
        self.candidate, self.command = None, False


def replay_turns(probs: np.ndarray, speaking: Callable[[int], bool], frame_samples: int,
                 num_frames: int, predicted: np.ndarray | None = None, *,
                 policy: TurnPolicy | None = None, threshold: float = 0.5,
                 echo_threshold: float = 0.8, silence_ms: float = 500.0,
                 read_words: Callable[[int, int], str] | None = None) -> np.ndarray:
    """The server's turn taking replayed on a recorded dialogue (defaults: the session's).

    VAD events as :meth:`RealtimeSession.on_vad` makes them (:meth:`VADGate.feed`), the
    session's turn state (:class:`TurnState`), then its decision per frame. Two things differ
    from live, because a recording's assistant does not wait for the server: an assistant
    turn that begins while the user's turn is open is that turn's recorded answer, so it does
    not make the assistant busy for it (the server still says RESPOND when its own rule does:
    late, which F1@K and the latency count); and a recording cuts the assistant where the
    user barged in, so while a barge-in candidate is open the assistant counts as still
    speaking, as it would be live until the server stops it.

    Args:
        probs: ``(W,)`` VAD probability of each 512-sample window
            (:func:`minmo.serving.vad.stream_probs`).
        speaking: ``f(sample) -> bool``: the assistant speaking as the frame starting at that
            stream sample began (recorded dialogues: ``models.duplex.speaking_lookup``).
        frame_samples: samples per decision frame; num_frames: frames to decide.
        predicted: ``(num_frames,)`` the predictor's decisions (None: the VAD rule).
        policy: the server's settings (default ``TurnPolicy(trust_predictor=predicted is not
            None)``); threshold / echo_threshold / silence_ms: the VAD gate's.
        read_words: ``f(start, end) -> transcript`` of the user's speech between two stream
            samples, for the policy's ``read_commands`` (None: no words are read).

    Returns:
        ``(num_frames,)`` decisions (:class:`~minmo.models.duplex.Decision` values).
    """
    if policy is None:
        policy = TurnPolicy(trust_predictor=predicted is not None)
    gate = VADGate(threshold=threshold, silence_ms=silence_ms)
    events: list[tuple[str, int]] = []
    for w, prob in enumerate(probs):
        end = (w + 1) * WINDOW
        events += gate.feed(float(prob), end, threshold, echo_threshold, echo=speaking(end))
    out = np.full(num_frames, int(Decision.LISTEN), dtype=np.int64)
    turn, answering, e = TurnState(), False, 0
    for f in range(num_frames):
        start, end = f * frame_samples, (f + 1) * frame_samples
        if speaking(start) and not (f > 0 and speaking(start - frame_samples)):
            answering = turn.open  # the recorded answer to the open turn (see above)
        while e < len(events) and events[e][1] <= end:
            kind, pos = events[e]
            e += 1
            if turn.vad_event(kind, pos, busy=speaking(pos)):
                turn.opened()
        busy = (speaking(start) or turn.candidate is not None) and not answering
        span = turn.words_to_read(end, policy) if busy and read_words is not None else None
        if span is not None:
            turn.heard_words(read_words(*span))
        decision = turn.decide(busy, None if predicted is None else Decision(int(predicted[f])),
                               end, policy)
        if busy and decision == Decision.STOP:
            turn.barged_in()
            turn.opened()
        elif not busy and decision == Decision.RESPOND and turn.open:
            if turn.only_command():  # the server commits it without a reply
                decision = Decision.LISTEN
            turn.closed()
            answering = False
        out[f] = decision
    return out


def server_policies(respond_silence_ms: float = TurnPolicy.respond_silence_ms
                    ) -> dict[str, TurnPolicy]:
    """The two policies ``minmo eval`` reports: the VAD rule alone, and with the predictor
    trusted (its RESPOND after ``respond_silence_ms``, the model's; otherwise
    :class:`TurnPolicy`'s defaults)."""
    return {"VAD rule": TurnPolicy(trust_predictor=False),
            "VAD rule + predictor": TurnPolicy(trust_predictor=True,
                                               respond_silence_ms=respond_silence_ms)}


def server_decisions(vad: SileroVAD, wave: np.ndarray, speaking10: np.ndarray,
                     frame_ms: float, predicted: np.ndarray,
                     policies: dict[str, TurnPolicy] | None = None,
                     transcribe: Callable[[np.ndarray], str] | None = None
                     ) -> dict[str, np.ndarray]:
    """The server's decisions over one recorded dialogue on the predictor's frame grid.

    Args:
        vad: silero VAD; wave: the user channel, 16 kHz.
        speaking10: the recorded assistant-speaking flags, 10 ms grid.
        frame_ms: decision frame length; predicted: the predictor's decisions on it.
        policies: name -> policy to replay (default :func:`server_policies`).
        transcribe: the model's transcript of a piece of ``wave``, for the policies'
            ``read_commands`` (None: no words are read, as without a model).

    Returns:
        name -> ``(F,)`` decisions.
    """
    flags = speaking_lookup(np.asarray(speaking10, dtype=np.int64))
    probs = stream_probs(vad, wave)
    frame = round(frame_ms * SAMPLE_RATE / 1000)

    def speaking(sample: int) -> bool:
        return flags(sample / SAMPLE_RATE)

    read = None if transcribe is None else (lambda a, b: transcribe(wave[a:b]))
    return {name: replay_turns(probs, speaking, frame, len(predicted), predicted, policy=policy,
                               read_words=read)
            for name, policy in (policies or server_policies()).items()}
