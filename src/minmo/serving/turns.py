"""The server's turn taking: one frame's decision, shared by the live session and a replay.

:func:`turn_decision` is the rule :class:`minmo.serving.session.RealtimeSession` applies to
every LLM frame (unless a test's decision hook overrides it): the VAD rule alone, or with a
trusted duplex predictor (``SessionLimits.trust_predictor``):

* assistant busy (speaking or replying): STOP needs a barge-in candidate (user speech that
  began while the assistant spoke) and either ``barge_in_ms`` of that speech heard (the VAD
  rule) or, with a trusted predictor, its STOP or ``trusted_barge_in_ms`` heard (a longer
  span than back-channels: the predictor tells those from barge-ins, and sustained speech
  still interrupts when it misses one); anything else CONTINUEs;
* assistant silent: a trusted predictor's RESPOND answers the open user turn once VAD has
  heard ``respond_silence_ms`` without speech; the VAD rule answers it once the VAD gate has
  closed it (``silence_duration_ms`` of silence).

:func:`replay_turns` runs the session's VAD bookkeeping and this decision over a recorded
dialogue, and :func:`server_decisions` both policies from the user channel, so they are scored
with the predictor's own metrics (``minmo eval --tasks duplex``, ``scripts/tune_duplex.py
--vad-rule``).
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from minmo.models.duplex import Decision, speaking_lookup
from minmo.serving.vad import SAMPLE_RATE, WINDOW, SileroVAD, VADGate, stream_probs


def turn_decision(busy: bool, predicted: Decision | None, *, end: int, turn_open: bool,
                  turn_stopped: bool, candidate: int | None, last_speech: int,
                  barge_in_ms: float, respond_silence_ms: float,
                  trusted_barge_in_ms: float | None = None) -> Decision:
    """One frame's decision (see the module docstring).

    Args:
        busy: the assistant is speaking or replying.
        predicted: the trusted predictor's decision for the frame (None: the VAD rule alone).
        end: stream sample where the frame ends.
        turn_open / turn_stopped: a user turn is open / the VAD gate has closed it.
        candidate: stream sample where a barge-in candidate began (None: none).
        last_speech: end of the last VAD speech window up to ``end``.
        barge_in_ms / respond_silence_ms / trusted_barge_in_ms: ``SessionLimits`` (the last
            None: only the predictor's STOP interrupts).
    """
    if predicted is not None:
        if busy:
            stop = predicted == Decision.STOP and candidate is not None
            if trusted_barge_in_ms is not None and candidate is not None:
                stop = stop or last_speech - candidate >= trusted_barge_in_ms * SAMPLE_RATE / 1000
            return Decision.STOP if stop else Decision.CONTINUE
        silent = end - last_speech >= respond_silence_ms * SAMPLE_RATE / 1000
        if predicted == Decision.RESPOND and turn_open and silent:
            return Decision.RESPOND
    if busy:
        heard = candidate is not None and last_speech - candidate >= \
            barge_in_ms * SAMPLE_RATE / 1000  # speech heard, not time elapsed
        return Decision.STOP if heard else Decision.CONTINUE
    return Decision.RESPOND if turn_open and turn_stopped else Decision.LISTEN


def replay_turns(probs: np.ndarray, speaking: Callable[[int], bool], frame_samples: int,
                 num_frames: int, predicted: np.ndarray | None = None, *,
                 threshold: float = 0.5, echo_threshold: float = 0.8, silence_ms: float = 500.0,
                 barge_in_ms: float = 240.0, respond_silence_ms: float = 160.0,
                 trusted_barge_in_ms: float | None = 600.0) -> np.ndarray:
    """The server's turn taking replayed on a recorded dialogue (defaults: the session's).

    VAD events as :meth:`RealtimeSession.on_vad` makes them (:meth:`VADGate.feed`), the
    session's turn bookkeeping (``_vad_event``), then
    :func:`turn_decision` per frame. Two things differ from live, because a recording's
    assistant does not wait for the server: an assistant turn that begins while the user's
    turn is open is that turn's recorded answer, so it does not make the assistant busy for
    it (the server still says RESPOND when its own rule does: late, which F1@K and the
    latency count); and a recording cuts the assistant where the user barged in, so while a
    barge-in candidate is open the assistant counts as still speaking, as it would be live
    until the server stops it.

    Args:
        probs: ``(W,)`` VAD probability of each 512-sample window
            (:func:`minmo.serving.vad.stream_probs`).
        speaking: ``f(sample) -> bool``: the assistant speaking as the frame starting at that
            stream sample began (recorded dialogues: ``models.duplex.speaking_lookup``).
        frame_samples: samples per decision frame; num_frames: frames to decide.
        predicted: ``(num_frames,)`` a trusted predictor's decisions (None: the VAD rule).

    Returns:
        ``(num_frames,)`` decisions (:class:`~minmo.models.duplex.Decision` values).
    """
    gate = VADGate(threshold=threshold, silence_ms=silence_ms)
    events: list[tuple[str, int]] = []
    for w, prob in enumerate(probs):
        end = (w + 1) * WINDOW
        events += gate.feed(float(prob), end, threshold, echo_threshold, echo=speaking(end))
    out = np.full(num_frames, int(Decision.LISTEN), dtype=np.int64)
    turn_open = turn_stopped = answering = False
    candidate: int | None = None
    last_speech, e = 0, 0
    for f in range(num_frames):
        start, end = f * frame_samples, (f + 1) * frame_samples
        if speaking(start) and not (f > 0 and speaking(start - frame_samples)):
            answering = turn_open  # the recorded answer to the open turn (see above)
        for kind, pos in events[e:]:
            if pos > end:
                break
            e += 1
            if kind == "speech":
                last_speech = pos
            elif kind == "start":
                turn_stopped = False
                if speaking(pos):
                    candidate = pos - WINDOW
                else:
                    turn_open = True
            else:
                candidate = None
                turn_stopped = turn_open
        busy = (speaking(start) or candidate is not None) and not answering
        decision = turn_decision(
            busy, None if predicted is None else Decision(int(predicted[f])), end=end,
            turn_open=turn_open, turn_stopped=turn_stopped, candidate=candidate,
            last_speech=last_speech, barge_in_ms=barge_in_ms,
            respond_silence_ms=respond_silence_ms, trusted_barge_in_ms=trusted_barge_in_ms)
        if busy and decision == Decision.STOP:
            candidate, turn_open, turn_stopped = None, True, False
        elif not busy and decision == Decision.RESPOND:
            turn_open = turn_stopped = answering = False
        out[f] = decision
    return out


def server_decisions(vad: SileroVAD, wave: np.ndarray, speaking10: np.ndarray,
                     frame_ms: float, predicted: np.ndarray) -> dict[str, np.ndarray]:
    """The server's decisions over one recorded dialogue on the predictor's frame grid.

    Args:
        vad: silero VAD; wave: the user channel, 16 kHz.
        speaking10: the recorded assistant-speaking flags, 10 ms grid.
        frame_ms: decision frame length; predicted: the predictor's decisions on it.

    Returns:
        ``{"vad_rule": ..., "vad_rule+predictor": ...}`` ``(F,)`` decisions each.
    """
    flags = speaking_lookup(np.asarray(speaking10, dtype=np.int64))
    probs = stream_probs(vad, wave)
    frame = round(frame_ms * SAMPLE_RATE / 1000)

    def speaking(sample: int) -> bool:
        return flags(sample / SAMPLE_RATE)

    n = len(predicted)
    return {"vad_rule": replay_turns(probs, speaking, frame, n),
            "vad_rule+predictor": replay_turns(probs, speaking, frame, n, predicted)}
