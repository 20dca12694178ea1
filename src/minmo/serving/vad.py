"""Voice activity detection: silero-vad's 16 kHz model with caller-owned, batched state.

The ``silero-vad`` wheel ships its model as TorchScript (``load_silero_vad()``), which keeps
the recurrent state inside the model object: one shared model would hold per-session state.
So :class:`SileroVAD` runs the same network in plain PyTorch with the state passed in and
out, and scores many sessions in one batched call. Its weights are read from the wheel's
TorchScript model (the ``silero_vad_16k.safetensors`` file in the wheel holds a different,
older set); a test checks the probabilities equal ``load_silero_vad()``'s.

Network (per 512-sample window at 16 kHz, with the previous 64 samples as context):
reflect-pad 64 -> STFT as a conv (256 taps, hop 128) -> magnitude (129 bins) -> 4 convs
(ReLU, two with stride 2) -> LSTM cell (128) -> ReLU -> 1x1 conv -> sigmoid.

:class:`VADGate` turns probabilities into speech start/stop events with silero's
``VADIterator`` hysteresis (start at ``threshold``, stop after ``silence_ms`` below
``threshold - 0.15``), per session; :func:`stream_probs` scores a whole recording.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

WINDOW = 512
CONTEXT = 64
SAMPLE_RATE = 16000


# TorchScript name in silero-vad's 16 kHz model -> name here
_KEY_MAP = {
    "stft.forward_basis_buffer": "stft_conv.weight",
    "encoder.0.reparam_conv": "conv1",
    "encoder.1.reparam_conv": "conv2",
    "encoder.2.reparam_conv": "conv3",
    "encoder.3.reparam_conv": "conv4",
    "decoder.rnn": "lstm_cell",
    "decoder.decoder.2": "final_conv",
}


def silero_state_dict() -> dict[str, torch.Tensor]:
    """The 16 kHz network's tensors from the installed ``silero-vad`` wheel, renamed."""
    threads = torch.get_num_threads()
    from silero_vad import load_silero_vad  # sets torch threads to 1 on import: restored below

    jit = load_silero_vad()
    torch.set_num_threads(threads)
    out = {}
    for key, value in jit._model.state_dict().items():
        for old, new in _KEY_MAP.items():
            if key.startswith(old):
                out[new + key[len(old):]] = value.detach().clone()
                break
        else:
            raise KeyError(f"silero-vad model has an unknown tensor '{key}': this silero-vad "
                           "version is not supported; install silero-vad 6.x")
    return out


@dataclass
class VADState:
    """Recurrent state of ``B`` streams: ``h``, ``c`` ``(B, 128)`` and the last 64 samples."""

    h: torch.Tensor
    c: torch.Tensor
    context: torch.Tensor


class SileroVAD(nn.Module):
    """silero-vad 16 kHz network with explicit state. Load with :meth:`from_package`."""

    def __init__(self) -> None:
        super().__init__()
        self.stft_conv = nn.Conv1d(1, 258, kernel_size=256, stride=128, bias=False)
        self.conv1 = nn.Conv1d(129, 128, 3, padding=1)
        self.conv2 = nn.Conv1d(128, 64, 3, stride=2, padding=1)
        self.conv3 = nn.Conv1d(64, 64, 3, stride=2, padding=1)
        self.conv4 = nn.Conv1d(64, 128, 3, padding=1)
        self.lstm_cell = nn.LSTMCell(128, 128)
        self.final_conv = nn.Conv1d(128, 1, 1)

    @classmethod
    def from_package(cls) -> "SileroVAD":
        """Weights from the installed ``silero-vad`` wheel (no download)."""
        model = cls()
        model.load_state_dict(silero_state_dict(), strict=True)
        return model.eval()

    def init_state(self, batch_size: int) -> VADState:
        z = torch.zeros(batch_size, 128)
        return VADState(z, z.clone(), torch.zeros(batch_size, CONTEXT))

    @torch.inference_mode()
    def step(self, window: torch.Tensor, state: VADState) -> tuple[torch.Tensor, VADState]:
        """Speech probability of the next 512-sample window of each stream.

        Args:
            window: ``(B, 512)`` float samples in [-1, 1] at 16 kHz.
            state: from :meth:`init_state` or the previous step.

        Returns:
            ``(B,)`` probabilities and the new state.
        """
        if window.dim() != 2 or window.shape[1] != WINDOW:
            raise ValueError(f"SileroVAD.step takes (B, {WINDOW}) windows, got {tuple(window.shape)}")
        x = torch.cat([state.context, window], dim=1)
        spec = self.stft_conv(F.pad(x, (0, CONTEXT), mode="reflect")[:, None])
        mag = (spec[:, :129] ** 2 + spec[:, 129:] ** 2).sqrt()
        y = F.relu(self.conv1(mag))
        y = F.relu(self.conv2(y))
        y = F.relu(self.conv3(y))
        y = F.relu(self.conv4(y)).squeeze(-1)
        h, c = self.lstm_cell(y, (state.h, state.c))
        prob = torch.sigmoid(self.final_conv(F.relu(h)[..., None])).squeeze(1).mean(dim=1)
        return prob, VADState(h, c, x[:, -CONTEXT:])


def stack_states(states: list[VADState]) -> VADState:
    """Batch the states of several streams."""
    return VADState(torch.cat([s.h for s in states]), torch.cat([s.c for s in states]),
                    torch.cat([s.context for s in states]))


def split_state(state: VADState) -> list[VADState]:
    """Inverse of :func:`stack_states`."""
    return [VADState(state.h[i:i + 1], state.c[i:i + 1], state.context[i:i + 1])
            for i in range(state.h.shape[0])]


@dataclass
class VADGate:
    """Start/stop hysteresis on VAD probabilities for one stream (silero's VADIterator rules).

    Attributes:
        threshold: start when ``prob >= threshold``.
        silence_ms: stop after this long below ``threshold - 0.15``.
        min_speech_ms: speech shorter than this (from start to stop) is reported as a
            ``blip`` (e.g. a click or a back-channel) by :meth:`update`.
        active: currently in speech.
        start_sample / last_speech_sample: stream positions (16 kHz samples).
    """

    threshold: float = 0.5
    silence_ms: float = 500.0
    active: bool = False
    start_sample: int = 0
    last_speech_sample: int = 0
    silence_start: int | None = None

    def feed(self, prob: float, window_end: int, threshold: float, echo_threshold: float,
             echo: bool) -> list[tuple[str, int]]:
        """One window as the server feeds it: while the assistant is audible (``echo``) and
        no speech is active, a start needs ``echo_threshold``.

        Returns:
            its events: ``("start" | "stop", window_end)`` from :meth:`update`, then
            ``("speech", window_end)`` for a speech window.
        """
        self.threshold = echo_threshold if echo and not self.active else threshold
        change = self.update(prob, window_end)
        events = [(change, window_end)] if change else []
        if self.active and prob >= self.threshold:
            events.append(("speech", window_end))
        return events

    def update(self, prob: float, window_end: int) -> str | None:
        """Feed one window's probability (``window_end``: stream sample after it).

        Returns:
            ``"start"``, ``"stop"`` or None.
        """
        if prob >= self.threshold:
            self.silence_start = None
            self.last_speech_sample = window_end
            if not self.active:
                self.active = True
                self.start_sample = window_end - WINDOW
                return "start"
            return None
        if self.active and prob < self.threshold - 0.15:
            if self.silence_start is None:
                self.silence_start = window_end - WINDOW
            if window_end - self.silence_start >= self.silence_ms * SAMPLE_RATE / 1000:
                self.active = False
                self.silence_start = None
                return "stop"
        return None


def stream_probs(vad: SileroVAD, wave: np.ndarray) -> np.ndarray:
    """Speech probability of each whole 512-sample window of one 16 kHz stream, ``(W,)``."""
    state = vad.init_state(1)
    probs = []
    for start in range(0, len(wave) - WINDOW + 1, WINDOW):
        window = torch.from_numpy(np.ascontiguousarray(wave[start:start + WINDOW], np.float32))
        prob, state = vad.step(window[None], state)
        probs.append(float(prob[0]))
    return np.asarray(probs, dtype=np.float32)
