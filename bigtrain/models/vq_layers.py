"""Building blocks of the VQ-GAN tokenizer's encoder and decoder (Esser, Rombach & Ommer 2021).

The layout follows the authors' release (CompVis/taming-transformers, ``diffusionmodules/model.py``)
so parameter counts and checkpoints line up with it: pre-activation residual blocks with GroupNorm
(32 groups, eps 1e-6) and swish, single-head self-attention blocks over all positions, stride-2 3x3
convolutions with asymmetric (right/bottom) padding to downsample, nearest upsampling followed by a
3x3 convolution.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


def group_norm(channels: int, groups: int = 32) -> nn.GroupNorm:
    if channels % groups != 0:
        raise ValueError(f"GroupNorm with {groups} groups needs channels divisible by it, got {channels}")
    return nn.GroupNorm(num_groups=groups, num_channels=channels, eps=1e-6, affine=True)


class ResBlock(nn.Module):
    """``GN-swish-conv3x3-GN-swish-dropout-conv3x3`` plus the input (1x1-projected if widths differ)."""

    def __init__(self, in_channels: int, out_channels: int, dropout: float = 0.0, groups: int = 32) -> None:
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.norm1 = group_norm(in_channels, groups)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = group_norm(out_channels, groups)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.nin_shortcut = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else None

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return (x if self.nin_shortcut is None else self.nin_shortcut(x)) + h


class AttnBlock(nn.Module):
    """Single-head self-attention over all ``H*W`` positions (1x1 q/k/v/out projections), residual.

    Uses PyTorch's fused scaled-dot-product attention; the scale is ``C^-1/2`` as in the release.
    """

    def __init__(self, channels: int, groups: int = 32) -> None:
        super().__init__()
        self.norm = group_norm(channels, groups)
        self.q = nn.Conv2d(channels, channels, 1)
        self.k = nn.Conv2d(channels, channels, 1)
        self.v = nn.Conv2d(channels, channels, 1)
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        n = self.norm(x)
        q, k, v = (
            m(n).flatten(2).transpose(1, 2).unsqueeze(1) for m in (self.q, self.k, self.v)
        )  # [B,1,HW,C]
        out = F.scaled_dot_product_attention(q, k, v)
        return x + self.proj_out(out.squeeze(1).transpose(1, 2).reshape(b, c, h, w))


class Downsample(nn.Module):
    """3x3 stride-2 conv after zero padding on the right and bottom only (the release's choice)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=0)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Upsample(nn.Module):
    """Nearest-neighbour x2, then a 3x3 conv."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


__all__ = ["AttnBlock", "Downsample", "ResBlock", "Upsample", "group_norm"]
