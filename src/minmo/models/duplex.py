"""Full-duplex predictor: decides, per LLM frame, whether to respond, stop, or go on.

MinMo's predictor is one Transformer layer and a linear-softmax over LLM hidden states. We
use four classes rather than the paper's three (see ``docs/architecture.md``): most frames
are neither a turn switch nor a back-channel, and a model with only {respond, stop,
continue} would have to call one of them every frame. The classes are:

* ``LISTEN`` (0): assistant silent, nothing to do (the user talks, or both are silent);
* ``RESPOND`` (1): the user's turn just ended: start speaking;
* ``STOP`` (2): the user barged in while the assistant speaks: stop and listen;
* ``CONTINUE`` (3): the assistant is speaking and should go on (back-channels included).

Besides the hidden states the predictor sees a flag saying whether the assistant is speaking
at that frame (the engine knows it), as a learned embedding added to the input.
The layer is causal so decisions stream frame by frame.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import IntEnum

import numpy as np
import torch
from torch import nn

from minmo.config import DuplexConfig
from minmo.modules.transformer import KVState, TransformerLayer, attention_mask

IGNORE = -100


class Decision(IntEnum):
    """Duplex predictor classes."""

    LISTEN = 0
    RESPOND = 1
    STOP = 2
    CONTINUE = 3


# When pooling a 10 ms label grid to the LLM frame rate, events win over background:
# rank of each label (indexed by label) and the label of each rank.
_RANK = torch.tensor([0, 2, 3, 1])  # LISTEN < CONTINUE < RESPOND < STOP
_BY_RANK = torch.tensor([Decision.LISTEN, Decision.CONTINUE, Decision.RESPOND, Decision.STOP])


@dataclass
class DuplexState:
    """Streaming state: the causal layer's KV cache."""

    kv: KVState


class DuplexPredictor(nn.Module):
    """``Linear(D_llm -> d)`` + speaking-flag embedding, one causal Transformer layer,
    ``Linear(d -> C)``.

    Args:
        cfg: predictor shape.
        llm_dim: LLM hidden width ``D_llm``.
    """

    def __init__(self, cfg: DuplexConfig, llm_dim: int):
        super().__init__()
        if len(cfg.class_weights) != cfg.num_classes or min(cfg.class_weights) <= 0:
            raise ValueError(f"duplex.class_weights {cfg.class_weights}: give one positive weight "
                             f"per class ({cfg.num_classes})")
        self.cfg = cfg
        self.inp = nn.Linear(llm_dim, cfg.d_model)
        self.speaking = nn.Embedding(2, cfg.d_model)
        self.layer = TransformerLayer(cfg.d_model, cfg.num_heads, cfg.ffn_dim, cfg.dropout)
        self.norm = nn.LayerNorm(cfg.d_model)
        self.head = nn.Linear(cfg.d_model, cfg.num_classes)

    def decide(self, probs: torch.Tensor) -> torch.Tensor:
        """Decisions from ``(..., C)`` probabilities (:func:`decide` with this config's
        thresholds)."""
        return decide(probs, self.cfg.respond_threshold, self.cfg.stop_threshold)

    def _embed(self, hidden: torch.Tensor, speaking: torch.Tensor) -> torch.Tensor:
        # in the predictor's dtype: a frozen LLM may run in a lower precision than this head
        return self.inp(hidden.to(self.inp.weight.dtype)) + self.speaking(speaking.long().clamp(0, 1))

    def forward(self, hidden: torch.Tensor, speaking: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Args:
            hidden: ``(B, T, D_llm)`` LLM hidden states of the user-speech frames.
            speaking: ``(B, T)`` 1 where the assistant is speaking.
            lengths: ``(B,)`` valid frames.

        Returns:
            ``(B, T, C)`` logits.
        """
        x = self._embed(hidden, speaking)
        x = self.layer(x, attention_mask(lengths, x.shape[1], causal=True))
        return self.head(self.norm(x))

    def init_state(self, batch_size: int, device: torch.device | str = "cpu",
                   dtype: torch.dtype = torch.float32) -> DuplexState:
        """Empty streaming state."""
        return DuplexState(self.layer.init_state(batch_size, device, dtype))

    def step(self, hidden: torch.Tensor, speaking: torch.Tensor, state: DuplexState) -> tuple[torch.Tensor, DuplexState]:
        """Streaming: ``(B, T_new, D_llm)`` frames + ``(B, T_new)`` flags -> ``(B, T_new, C)`` logits."""
        x, kv = self.layer.step(self._embed(hidden, speaking), state.kv)
        return self.head(self.norm(x)), DuplexState(kv)


def decide(probs: torch.Tensor, respond_threshold: float | None = None,
           stop_threshold: float | None = None) -> torch.Tensor:
    """``(..., C)`` probabilities -> ``(...)`` decisions: STOP where its probability reaches
    ``stop_threshold``, else RESPOND where its reaches ``respond_threshold``, else the argmax
    (a ``None`` threshold: that class only as the argmax).

    The switches are a frame or two among hundreds; a predictor's probability for them
    peaks at the right frame but often below LISTEN/CONTINUE, so an argmax misses them.
    """
    out = probs.argmax(-1)
    for cls, threshold in ((Decision.RESPOND, respond_threshold), (Decision.STOP, stop_threshold)):
        if threshold is not None:
            out = torch.where(probs[..., int(cls)] >= threshold, torch.full_like(out, int(cls)), out)
    return out


def pool_labels(labels_10ms: torch.Tensor, frame_starts: torch.Tensor, frame_ends: torch.Tensor) -> torch.Tensor:
    """Pool a 10 ms label grid to frames: each frame takes its highest-priority label.

    Args:
        labels_10ms: ``(T10,)`` labels (``-100`` padding).
        frame_starts: ``(F,)`` first 10 ms index of each frame (``-1``: not a time frame).
        frame_ends: ``(F,)`` one past the last index.

    Returns:
        ``(F,)`` labels; ``-100`` for non-time frames or frames past the grid.
    """
    out = torch.full(frame_starts.shape, IGNORE, dtype=torch.long)
    n = labels_10ms.shape[0]
    for f, (s, e) in enumerate(zip(frame_starts.tolist(), frame_ends.tolist())):
        if s < 0 or s >= n:
            continue
        window = labels_10ms[s:min(e, n)]
        window = window[window >= 0]
        if window.numel():
            out[f] = _BY_RANK[_RANK[window].max()]
    return out


def speaking_before(flags_10ms: torch.Tensor | np.ndarray, start: int) -> int:
    """The assistant-speaking flag of the frame that starts at 10 ms index ``start``: was the
    assistant speaking in the 10 ms step just before it (0 at the stream's start)?

    This is what an engine knows when it decides a frame: whether it is speaking *now*, not
    whether it will still be speaking at the frame's end (that depends on the decision). In
    recorded dialogues a barge-in's STOP frame is where the assistant was cut, so a flag
    read inside the frame would already say "silent" there, while live the assistant is
    still speaking when it has to decide to stop. Training (:func:`pool_flags`), evaluation
    and serving all read the flag this way.
    """
    if start <= 0 or start > len(flags_10ms):
        return 0
    return int(flags_10ms[start - 1])


def speaking_lookup(flags_10ms: np.ndarray) -> Callable[[float], bool]:
    """``f(start_s)``: :func:`speaking_before` on a recorded 10 ms grid, for frames given by
    their start time in seconds (the callback :func:`minmo.inference.listen.listen_step`
    takes)."""
    return lambda start_s: bool(speaking_before(flags_10ms, int(round(start_s * 100.0))))


def pool_flags(flags_10ms: torch.Tensor, frame_starts: torch.Tensor) -> torch.Tensor:
    """Assistant-speaking flag of each frame: :func:`speaking_before` its start (``-1``,
    a query frame: 0)."""
    return torch.tensor([speaking_before(flags_10ms, s) for s in frame_starts.tolist()],
                        dtype=torch.long)
