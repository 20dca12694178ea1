"""Caller-owned KV caches of decoder bodies, and one forward pass over many of them at once.

Every decoder stream (an LLM conversation, a listening stream, a voice-LM stream) owns a
:class:`KVStream`; the shared model holds none. :func:`batched_forward` runs the new inputs
of several streams through a transformers decoder body (``Qwen2Model`` / ``LlamaModel``) in
one call: the caches are left-padded to the longest and stacked along the batch axis, the new
inputs are right-padded to the longest, an attention mask hides both paddings, and explicit
``position_ids`` give each row its own positions. Each row's new keys/values are then cut out
and appended to its own cache, so results equal one-stream-at-a-time calls (tested).

A batch of one skips the stacking and works on the stream's cache in place.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from minmo.models.llm import cache_kwargs, new_kv_cache


@dataclass
class KVStream:
    """One decoder stream's cache.

    Attributes:
        cache: a transformers ``DynamicCache`` (batch 1).
        length: positions held.
    """

    cache: Any = field(default_factory=new_kv_cache)
    length: int = 0

    def layer_tensors(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """``[(keys, values)]`` per layer, each ``(1, H_kv, length, D_h)``."""
        return [(layer.keys, layer.values) for layer in self.cache.layers]

    def reset(self) -> None:
        """Drop everything (a new, empty cache)."""
        self.cache = new_kv_cache()
        self.length = 0

    def truncate(self, length: int) -> None:
        """Keep the first ``length`` positions: undo what was fed after them (a speculative
        reply that was not taken). The tensors are sliced, not copied; what is fed next is
        concatenated onto the slice, as onto any cache."""
        if length >= self.length:
            return
        if length <= 0:
            self.reset()
            return
        for layer in self.cache.layers:
            layer.keys = layer.keys[:, :, :length]
            layer.values = layer.values[:, :, :length]
        self.length = length


def _run_body(body: nn.Module, embeds: torch.Tensor, mask: torch.Tensor | None,
              positions: torch.Tensor, cache: Any) -> torch.Tensor:
    out = body(inputs_embeds=embeds, attention_mask=mask, position_ids=positions, use_cache=True,
               **cache_kwargs(body, cache))
    return out.last_hidden_state


def batched_forward(body: nn.Module, streams: list[KVStream],
                    inputs: list[torch.Tensor]) -> list[torch.Tensor]:
    """Feed each stream its new input embeddings; return each stream's new hidden states.

    Args:
        body: a transformers decoder body called with ``inputs_embeds``.
        streams: ``B`` caches (appended to in place).
        inputs: ``B`` tensors ``(n_b, D)``, ``n_b >= 1``.

    Returns:
        ``B`` tensors ``(n_b, D)``: last-layer (post-norm) hidden states of the new positions.
    """
    if len(streams) != len(inputs) or not streams:
        raise ValueError(f"batched_forward: {len(streams)} streams for {len(inputs)} inputs")
    device = inputs[0].device
    if len(streams) == 1:
        s, x = streams[0], inputs[0]
        pos = torch.arange(s.length, s.length + x.shape[0], device=device)[None]
        h = _run_body(body, x[None], None, pos, s.cache)[0]
        s.length += x.shape[0]
        return list(h[None])
    past = [s.length for s in streams]
    new = [x.shape[0] for x in inputs]
    p_max, n_max = max(past), max(new)
    batch = len(streams)
    cache = new_kv_cache()
    if p_max > 0:
        per_layer = zip(*(s.layer_tensors() for s in streams))
        for layer_idx, rows in enumerate(per_layer):
            keys = torch.cat([F.pad(k, (0, 0, p_max - k.shape[2], 0)) for k, _ in rows])
            values = torch.cat([F.pad(v, (0, 0, p_max - v.shape[2], 0)) for _, v in rows])
            cache.update(keys, values, layer_idx)
    embeds = torch.stack([F.pad(x, (0, 0, 0, n_max - x.shape[0])) for x in inputs])
    mask = torch.zeros(batch, p_max + n_max, dtype=torch.long, device=device)
    positions = torch.zeros(batch, n_max, dtype=torch.long, device=device)
    for b in range(batch):
        mask[b, p_max - past[b]: p_max + new[b]] = 1
        positions[b] = past[b] + torch.arange(n_max, device=device)
    hidden = _run_body(body, embeds, mask, positions, cache)
    for layer_idx, layer in enumerate(cache.layers):
        for b, s in enumerate(streams):
            k = layer.keys[b:b + 1, :, p_max:p_max + new[b]]
            v = layer.values[b:b + 1, :, p_max:p_max + new[b]]
            s.cache.update(k.contiguous(), v.contiguous(), layer_idx)
    for b, s in enumerate(streams):
        s.length += new[b]
    return [hidden[b, :new[b]] for b in range(batch)]


def grouped_forward(body: nn.Module, streams: list[KVStream], inputs: list[torch.Tensor],
                    max_pad_ratio: float = 2.0) -> list[torch.Tensor]:
    """:func:`batched_forward` in groups of similar input length, so a long prefill does not
    pad many one-token decode steps. Streams whose input is longer than ``max_pad_ratio``
    times the shortest in a group start a new group.

    Returns:
        hidden states in the order of ``streams``.
    """
    order = sorted(range(len(streams)), key=lambda i: inputs[i].shape[0])
    out: list[torch.Tensor | None] = [None] * len(streams)
    group: list[int] = []

    def flush() -> None:
        if group:
            hs = batched_forward(body, [streams[i] for i in group], [inputs[i] for i in group])
            for i, h in zip(group, hs):
                out[i] = h
            group.clear()

    for i in order:
        if group and inputs[i].shape[0] > max_pad_ratio * inputs[group[0]].shape[0]:
            flush()
        group.append(i)
    flush()
    return out  # type: ignore[return-value]
