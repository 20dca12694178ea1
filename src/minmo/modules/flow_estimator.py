"""The flow-matching vector-field estimator: a causal 1-D U-Net with Transformer blocks.

Layout (CosyVoice 2 ``CausalConditionalDecoder`` with one channel level, so the time axis is
never resampled): input ``[x_t, mu, spk, cond]`` stacked on channels -> down stage (ResNet,
``n_blocks`` Transformer blocks, causal conv) -> ``num_mid_blocks`` middle stages (ResNet +
Transformers) -> up stage on ``[x, skip]`` (ResNet, Transformers, causal conv) -> causal final
block -> 1x1 projection to ``out_channels``. Every convolution is causal (kernel 3) and every
attention uses the caller's chunk mask, so the estimator streams: the caller keeps one
:class:`EstimatorCache` per Euler step.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils import _pytree as pytree

from minmo.modules.flow_blocks import (
    CausalBlock1D,
    CausalConv1d,
    CausalResnetBlock1D,
    TimestepEmbedding,
    TransformerBlock,
    masked,
    sinusoidal_time_embedding,
)


@dataclass
class EstimatorCache:
    """Per-call streaming cache of the estimator: two tensors, so that copying a cache (a CUDA
    graph's inputs and results) is two copies rather than one per layer.

    Attributes:
        convs: the last input frames of every causal conv, in module order, concatenated on
            the channel axis: ``(B, sum of in-channels, 2)``.
        kvs: keys/values of every attention layer, stacked: ``(layers, B, S, 2, H, head_dim)``.

    The estimator returns the new frames' part (``S`` = the frames it was given); callers
    that stream append it with :meth:`extend`.
    """

    convs: torch.Tensor
    kvs: torch.Tensor

    def extend(self, new: EstimatorCache) -> EstimatorCache:
        """This cache followed by ``new`` (the estimator's result for the next frames)."""
        return EstimatorCache(new.convs, torch.cat([self.kvs, new.kvs], dim=2))


# a pytree node, so caches pass through ``minmo.modules.cuda_graphs`` as tensors
pytree.register_pytree_node(
    EstimatorCache, lambda c: ([c.convs, c.kvs], None), lambda children, _: EstimatorCache(*children)
)


class _Cursor:
    """Reads an old cache layer by layer (in module order) while collecting the new one."""

    def __init__(self, old: EstimatorCache | None):
        self.old = old
        self.channel = 0
        self.convs: list[torch.Tensor] = []
        self.kvs: list[torch.Tensor] = []

    def conv(self, channels: int) -> torch.Tensor | None:
        """The old cache of the next conv (``channels`` input channels)."""
        start, self.channel = self.channel, self.channel + channels
        return None if self.old is None else self.old.convs[:, start:self.channel]

    def kv(self) -> torch.Tensor | None:
        return None if self.old is None else self.old.kvs[len(self.kvs)]

    def finish(self) -> EstimatorCache:
        return EstimatorCache(torch.cat(self.convs, dim=1), torch.stack(self.kvs))


class ConditionalEstimator(nn.Module):
    """Vector field ``v(x_t, t | mu, spk, cond)`` for conditional flow matching.

    Args:
        in_channels: channels of ``[x, mu, spk, cond]`` (4 x n_mels = 320).
        out_channels: mel bins (80).
        channels: width of the U-Net (256 in CosyVoice 2).
        heads / head_dim: attention shape (8 x 64).
        n_blocks: Transformer blocks per stage (4).
        num_mid_blocks: middle stages (12).
        dropout: dropout inside the Transformer blocks.
    """

    def __init__(
        self,
        in_channels: int = 320,
        out_channels: int = 80,
        channels: int = 256,
        heads: int = 8,
        head_dim: int = 64,
        n_blocks: int = 4,
        num_mid_blocks: int = 12,
        dropout: float = 0.0,
    ):
        super().__init__()
        self.in_channels = in_channels
        time_dim = channels * 4

        def transformers() -> nn.ModuleList:
            return nn.ModuleList([TransformerBlock(channels, heads, head_dim, dropout) for _ in range(n_blocks)])

        self.time_mlp = TimestepEmbedding(in_channels, time_dim)
        self.down_blocks = nn.ModuleList([
            nn.ModuleList([CausalResnetBlock1D(in_channels, channels, time_dim), transformers(),
                           CausalConv1d(channels, channels, 3)])
        ])
        self.mid_blocks = nn.ModuleList([
            nn.ModuleList([CausalResnetBlock1D(channels, channels, time_dim), transformers()])
            for _ in range(num_mid_blocks)
        ])
        self.up_blocks = nn.ModuleList([
            nn.ModuleList([CausalResnetBlock1D(2 * channels, channels, time_dim), transformers(),
                           CausalConv1d(channels, channels, 3)])
        ])
        self.final_block = CausalBlock1D(channels, channels)
        self.final_proj = nn.Conv1d(channels, out_channels, 1)
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, (nn.Conv1d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    @staticmethod
    def _stage(
        x: torch.Tensor,
        mask: torch.Tensor | None,
        time_act: torch.Tensor,
        bias: torch.Tensor,
        resnet: CausalResnetBlock1D,
        blocks: nn.ModuleList,
        cur: _Cursor,
    ) -> torch.Tensor:
        old = (cur.conv(resnet.block1.block[0].in_channels), cur.conv(resnet.block2.block[0].in_channels))
        x, (c1, c2) = resnet(x, mask, time_act, None if cur.old is None else old)
        cur.convs += [c1, c2]
        h = x.transpose(1, 2)
        for block in blocks:
            h, kv = block(h, bias, cur.kv())
            cur.kvs.append(kv)
        return h.transpose(1, 2)

    def forward(
        self,
        x: torch.Tensor,
        mask: torch.Tensor | None,
        mu: torch.Tensor,
        t: torch.Tensor,
        spks: torch.Tensor,
        cond: torch.Tensor,
        bias: torch.Tensor,
        cache: EstimatorCache | None = None,
    ) -> tuple[torch.Tensor, EstimatorCache]:
        """Predict the flow velocity for new frames.

        Args:
            x: ``(B, n_mels, T)`` noisy mel ``x_t``.
            mask: ``(B, 1, T)`` 1 for real frames, or None: all frames are real.
            mu: ``(B, n_mels, T)`` encoder output.
            t: ``(B,)`` flow time in [0, 1].
            spks: ``(B, n_mels)`` projected speaker embedding.
            cond: ``(B, n_mels, T)`` prompt mel (zeros where none).
            bias: additive attention mask broadcastable to ``(B, H, T, S + T)``.
            cache: cache from the previous chunk (same Euler step), or None.

        Returns:
            ``(B, n_mels, T)`` velocity and the cache of these ``T`` frames (append it to
            ``cache`` with :meth:`EstimatorCache.extend`).
        """
        # the Mish every ResNet block's time projection starts with, once for all of them
        time_act = F.mish(self.time_mlp(sinusoidal_time_embedding(t, self.in_channels).to(x.dtype)))
        h = torch.cat([x, mu, spks[:, :, None].expand(-1, -1, x.shape[2]), cond], dim=1)
        cur = _Cursor(cache)

        resnet, blocks, downsample = self.down_blocks[0]
        h = self._stage(h, mask, time_act, bias, resnet, blocks, cur)
        skip = h
        h, c = downsample(masked(h, mask), cur.conv(downsample.in_channels))
        cur.convs.append(c)
        for resnet, blocks in self.mid_blocks:
            h = self._stage(h, mask, time_act, bias, resnet, blocks, cur)
        resnet, blocks, upsample = self.up_blocks[0]
        h = self._stage(torch.cat([h, skip], dim=1), mask, time_act, bias, resnet, blocks, cur)
        h, c = upsample(masked(h, mask), cur.conv(upsample.in_channels))
        cur.convs.append(c)
        h, c = self.final_block(h, mask, cur.conv(self.final_block.block[0].in_channels))
        cur.convs.append(c)
        out = self.final_proj(masked(h, mask))
        return masked(out, mask), cur.finish()
