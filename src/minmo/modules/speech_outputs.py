"""Loss container shared by the speech-generation models (tokenizer, flow, vocoder, speaker).

Same fields as :class:`minmo.models.minmo.LossOutput`, so the training loop treats every model
alike (``out.loss.backward()``, ``out.metrics`` logged), without importing the MinMo graph.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class LossOutput:
    """Scalar training loss and float metrics for logging."""

    loss: torch.Tensor
    metrics: dict[str, float] = field(default_factory=dict)
