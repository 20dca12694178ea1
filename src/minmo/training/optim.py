"""Optimiser and learning-rate schedule: AdamW over trainable parameters, linear warmup then
cosine decay to ``min_lr_ratio * lr``."""

from __future__ import annotations

import math
from typing import Iterable

import torch
from torch import nn

from minmo.config import OptimConfig


class WarmupCosine:
    """LR multiplier for step ``s`` (0-based, the optimizer step about to be taken).

    ``s < warmup``: ``(s + 1) / warmup`` (linear ramp, never 0). After: cosine from 1 down to
    ``min_ratio`` at ``max_steps``, flat at ``min_ratio`` beyond it.

    A class rather than a closure so that ``LambdaLR.state_dict()`` can store it.
    """

    def __init__(self, warmup_steps: int, max_steps: int, min_ratio: float):
        self.warmup_steps = int(warmup_steps)
        self.max_steps = int(max_steps)
        self.min_ratio = float(min_ratio)

    def __call__(self, step: int) -> float:
        if self.warmup_steps > 0 and step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        span = max(1, self.max_steps - self.warmup_steps)
        progress = min(1.0, max(0.0, (step - self.warmup_steps) / span))
        return self.min_ratio + (1.0 - self.min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def build_adamw(params: Iterable[nn.Parameter], cfg: OptimConfig) -> torch.optim.AdamW:
    """AdamW over ``params``. Weight decay applies to matrices only (``ndim >= 2``); biases,
    norms and 1-d tensors are not decayed.

    Raises:
        ValueError: when ``params`` is empty (the stage trains nothing).
    """
    params = [p for p in params if p.requires_grad]
    if not params:
        raise ValueError("no trainable parameters: the stage names groups the model left empty")
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    groups = [g for g in (
        {"params": decay, "weight_decay": cfg.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ) if g["params"]]
    if len(cfg.betas) != 2:
        raise ValueError(f"optim.betas needs two numbers, got {cfg.betas}")
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.betas[0], cfg.betas[1]), eps=cfg.eps)


def build_scheduler(
    optimizer: torch.optim.Optimizer, cfg: OptimConfig
) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warmup + cosine decay (:class:`WarmupCosine`), stepped once per optimizer step."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, WarmupCosine(cfg.warmup_steps, cfg.max_steps, cfg.min_lr_ratio)
    )
