"""Two-channel duplex dialogues (channel 0 user, channel 1 assistant) and their 10 ms labels.

Timeline rules (all documented in ``docs/data.md``):

* the assistant starts ``respond_delay`` seconds after a user turn ends; ``RESPOND`` is marked
  on ``window`` 10-ms frames starting at that frame;
* the next user turn starts ``gap ~ N(0.6 s, 0.4^2)`` after the assistant's turn ends (the
  paper's simulation). A negative gap, or a deliberate barge-in (probability
  ``p_barge_in``, at 30-70 % of the assistant turn), puts the user's onset inside the
  assistant's speech: the assistant is cut ``stop_delay`` seconds after the onset (20 ms
  fade) and ``STOP`` is marked on ``window`` frames starting there; with probability
  ``p_command`` a deliberate barge-in is a short command first ("wait", "hold on"), then a
  pause ``~ U(command_pause)``, then the next question: only its words tell it from a
  back-channel, so a rule on the overlap's duration cannot;
* with probability ``p_backchannel`` the user says a short back-channel ("uh-huh") inside a
  turn the assistant finishes: labels stay ``CONTINUE``;
* every other frame is ``CONTINUE`` while the assistant speaks and ``LISTEN`` otherwise.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import numpy as np

LISTEN, RESPOND, STOP, CONTINUE = 0, 1, 2, 3
LABEL_NAMES = ("listen", "respond", "stop", "continue")
FRAME_SHIFT_S = 0.01


@dataclass
class DuplexParams:
    """Timing of simulated dialogues (seconds unless named otherwise)."""

    gap_mean: float = 0.6
    gap_std: float = 0.4
    respond_delay: float = 0.25
    stop_delay: float = 0.2
    p_barge_in: float = 0.25
    p_backchannel: float = 0.35
    p_command: float = 0.5
    command_pause: tuple[float, float] = (0.2, 0.45)
    window: int = 1  # frames marked RESPOND / STOP at each switch
    lead_in: tuple[float, float] = (0.3, 1.0)
    tail: tuple[float, float] = (0.5, 1.0)


@dataclass
class Utterance:
    """A mono waveform with its text."""

    wave: np.ndarray
    text: str


@dataclass
class Dialogue:
    """A built dialogue.

    Attributes:
        audio: ``(2, N)`` float32, channel 0 user, channel 1 assistant.
        labels: ``(T10,)`` int8 decisions per 10 ms frame (LISTEN/RESPOND/STOP/CONTINUE).
        assistant_speaking: ``(T10,)`` uint8, 1 where the assistant channel is active.
        turns: list of ``{"role", "start", "end", "text", ...}`` (seconds).
        respond_s / stop_s / backchannel_s: event times in seconds.
    """

    audio: np.ndarray
    labels: np.ndarray
    assistant_speaking: np.ndarray
    turns: list[dict] = field(default_factory=list)
    respond_s: list[float] = field(default_factory=list)
    stop_s: list[float] = field(default_factory=list)
    backchannel_s: list[float] = field(default_factory=list)

    def save_labels(self, path: str) -> None:
        """Write the sidecar ``.npz`` (labels, assistant_speaking, frame_shift, event times)."""
        np.savez_compressed(
            path, labels=self.labels, assistant_speaking=self.assistant_speaking,
            frame_shift=np.float32(FRAME_SHIFT_S),
            respond_s=np.asarray(self.respond_s, np.float32),
            stop_s=np.asarray(self.stop_s, np.float32),
            backchannel_s=np.asarray(self.backchannel_s, np.float32),
        )


def build_dialogue(
    questions: list[Utterance],
    answers: list[Utterance],
    backchannels: list[Utterance],
    rng: random.Random,
    sample_rate: int = 16000,
    params: DuplexParams | None = None,
    commands: list[Utterance] | None = None,
) -> Dialogue:
    """Lay out user questions and assistant answers on two channels and label them.

    Args:
        questions: user turns, in order (one per exchange).
        answers: the assistant's answer to each question (same length as ``questions``).
        backchannels: short user utterances to draw back-channels from (may be empty).
        rng: drives gaps, barge-ins and back-channels.
        sample_rate: rate of every waveform.
        params: timing; defaults to :class:`DuplexParams`.
        commands: short user commands that open a deliberate barge-in (None or empty: none).

    Returns:
        :class:`Dialogue`.
    """
    if len(questions) != len(answers) or not questions:
        raise ValueError("build_dialogue needs one answer per question (and >= 1 question)")
    p = params or DuplexParams()
    sr = sample_rate
    user_parts: list[tuple[int, np.ndarray]] = []
    asst_parts: list[tuple[int, np.ndarray]] = []
    turns: list[dict] = []
    respond, stop, bc_times = [], [], []

    t = int(rng.uniform(*p.lead_in) * sr)
    for k, (q, a) in enumerate(zip(questions, answers)):
        user_parts.append((t, q.wave))
        user_end = t + q.wave.size
        turns.append({"role": "user", "start": t / sr, "end": user_end / sr, "text": q.text})
        a_start = user_end + int(p.respond_delay * sr)
        respond.append(a_start / sr)
        a_full_end = a_start + a.wave.size
        last = k == len(questions) - 1
        onset = command = None
        if not last:
            if rng.random() < p.p_barge_in and a.wave.size > sr:
                onset = a_start + int(rng.uniform(0.3, 0.7) * a.wave.size)
                if commands and rng.random() < p.p_command:
                    command = rng.choice(commands)
            else:
                onset = a_full_end + int(rng.gauss(p.gap_mean, p.gap_std) * sr)
            onset = max(onset, a_start + int(0.3 * sr))
        a_end = a_full_end
        cut = onset is not None and onset + int(p.stop_delay * sr) < a_full_end
        if cut:
            a_end = onset + int(p.stop_delay * sr)
            stop.append(a_end / sr)
            wave = a.wave[: a_end - a_start].copy()
            fade = min(int(0.02 * sr), wave.size)
            wave[-fade:] *= np.linspace(1.0, 0.0, fade, dtype=np.float32)
        else:
            wave = a.wave
        asst_parts.append((a_start, wave))
        turns.append({"role": "assistant", "start": a_start / sr, "end": a_end / sr,
                      "text": a.text, "interrupted": bool(cut)})
        if not cut and backchannels and rng.random() < p.p_backchannel:
            bc = rng.choice(backchannels)
            lo, hi = a_start + int(0.3 * sr), a_end - int(0.3 * sr) - bc.wave.size
            if hi > lo:
                bc_start = rng.randint(lo, hi)
                user_parts.append((bc_start, bc.wave))
                bc_times.append(bc_start / sr)
                turns.append({"role": "user", "start": bc_start / sr,
                              "end": (bc_start + bc.wave.size) / sr, "text": bc.text,
                              "backchannel": True})
        t = onset if onset is not None else a_end
        if command is not None:  # the command, a pause, then the next question
            user_parts.append((t, command.wave))
            turns.append({"role": "user", "start": t / sr, "end": (t + command.wave.size) / sr,
                          "text": command.text, "command": True})
            t += command.wave.size + int(rng.uniform(*p.command_pause) * sr)

    total = max(end for end in [s + w.size for s, w in user_parts + asst_parts])
    total += int(rng.uniform(*p.tail) * sr)
    audio = np.zeros((2, total), dtype=np.float32)
    for ch, parts in ((0, user_parts), (1, asst_parts)):
        for start, wave in parts:
            audio[ch, start:start + wave.size] += wave
    hop = int(FRAME_SHIFT_S * sr)
    frames = -(-total // hop)
    speaking = np.zeros(frames, dtype=np.uint8)
    for start, wave in asst_parts:
        speaking[start // hop: -(-(start + wave.size) // hop)] = 1
    labels = np.where(speaking == 1, CONTINUE, LISTEN).astype(np.int8)
    for when, label in [(s, RESPOND) for s in respond] + [(s, STOP) for s in stop]:
        f = int(round(when * sr)) // hop
        labels[f: f + p.window] = label
    turns.sort(key=lambda d: d["start"])
    return Dialogue(audio=audio, labels=labels, assistant_speaking=speaking, turns=turns,
                    respond_s=respond, stop_s=stop, backchannel_s=bc_times)
