"""Speech tokens -> 24 kHz audio: the interface the pipeline streams through, and a stand-in.

The real decoder is the speech-generation package's streaming token2wav (chunk-aware flow
matching + HiFT, ``minmo.inference.token2wav``), wrapped by :class:`Token2WavDecoder`. The
pipeline only needs this shape::

    state = dec.init_state()
    audio, state = dec.step(tokens, state, last=False)   # tokens: (S,) long; audio: (N,) float32

``feed_tokens`` says how many new tokens the pipeline should gather before calling ``step``
(token2wav buffers itself and decodes a chunk as soon as its tokens and lookahead are in, so
it takes every token; the placeholder renders 15 at a time, the paper's chunk).

``PlaceholderVocoder`` has that shape and renders each token as 40 ms of a tone (pitch from
the token id, phase-continuous across chunks). It is *not* speech: it stands in where no
trained token2wav is available so that the whole real-time path (timing, streaming, barge-in)
runs and can be tested end to end. Commands say which decoder they use.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch

SAMPLE_RATE = 24000
TOKEN_RATE = 25  # speech tokens per second (CosyVoice 2 tokenizer)


class SpeechDecoder(Protocol):
    """Streaming speech-token decoder with caller-owned state."""

    sample_rate: int
    name: str
    feed_tokens: int

    def init_state(self) -> Any: ...

    def step(self, tokens: torch.Tensor, state: Any, last: bool = False) -> tuple[np.ndarray, Any]: ...


@dataclass
class PlaceholderState:
    """Phase of the running oscillator (radians) and tokens decoded so far."""

    phase: float = 0.0
    tokens: int = 0


class PlaceholderVocoder:
    """Tone per token (NOT speech): 40 ms per token at 24 kHz, 120-600 Hz, 0.2 amplitude.

    Args:
        sample_rate: output rate.
    """

    name = "placeholder-tones"
    feed_tokens = 15

    def __init__(self, sample_rate: int = SAMPLE_RATE):
        self.sample_rate = sample_rate
        self.samples_per_token = sample_rate // TOKEN_RATE

    def init_state(self) -> PlaceholderState:
        return PlaceholderState()

    def step(self, tokens: torch.Tensor, state: PlaceholderState, last: bool = False
             ) -> tuple[np.ndarray, PlaceholderState]:
        """``(S,)`` token ids -> ``(S * sample_rate / 25,)`` float32 audio."""
        ids = [int(t) for t in torch.as_tensor(tokens).reshape(-1).tolist()]
        n = self.samples_per_token
        out = np.empty(len(ids) * n, dtype=np.float32)
        phase = state.phase
        t = np.arange(1, n + 1, dtype=np.float64)
        for i, tok in enumerate(ids):
            freq = 120.0 + (tok % 97) * 5.0
            step = 2 * math.pi * freq / self.sample_rate
            out[i * n:(i + 1) * n] = 0.2 * np.sin(phase + step * t)
            phase = float((phase + step * n) % (2 * math.pi))
        return out, PlaceholderState(phase=phase, tokens=state.tokens + len(ids))


class Token2WavDecoder:
    """:class:`~minmo.inference.token2wav.Token2Wav` (flow matching + HiFT) as a
    :class:`SpeechDecoder` for one fixed assistant voice.

    Args:
        t2w: the shared token2wav (weights only).
        speaker: ``(spk_dim,)`` speaker embedding of the assistant voice.
        name: shown to users.
    """

    feed_tokens = 1

    def __init__(self, t2w: Any, speaker: torch.Tensor, name: str = "token2wav"):
        self.t2w = t2w
        self.speaker = speaker.reshape(1, -1)
        self.sample_rate = int(t2w.sample_rate)
        self.name = name

    def init_state(self) -> Any:
        return self.t2w.init_state(self.speaker)

    def step(self, tokens: torch.Tensor, state: Any, last: bool = False) -> tuple[np.ndarray, Any]:
        """``(S,)`` tokens -> ``(N,)`` float32 audio that became ready."""
        toks = torch.as_tensor(tokens, dtype=torch.long).reshape(1, -1)
        audio, state = self.t2w.step(toks, state, final=last)
        return audio[0].detach().float().cpu().numpy(), state
