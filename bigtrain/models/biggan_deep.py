"""BigGAN-deep residual blocks (Brock et al. 2019, appendix B, figure 16), following the authors'
release (ajbrock/BigGAN-PyTorch, ``BigGANdeep.py``).

BigGAN-deep is about four times deeper than BigGAN at a similar parameter count because its blocks
are bottlenecks: a 1x1 conv reduces the channels by ``channel_ratio`` (4), two 3x3 convs work at the
reduced width, and a 1x1 conv restores it. Its shortcuts are parameter-free where possible: G drops
surplus channels instead of projecting them, and D keeps its input channels and only *learns the
extra ones* (concatenating a 1x1 conv's output). Only the blocks are provided here; the full deep
model (two blocks per resolution, z concatenated with the shared embedding everywhere) is not.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bigtrain.models.biggan_layers import NormFactory, apply_norm, sn_conv2d


class DeepGBlock(nn.Module):
    """Bottleneck up-block: ``BN-ReLU-1x1 -> BN-ReLU-[up]-3x3 -> BN-ReLU-3x3 -> BN-ReLU-1x1``.

    The hidden width is ``in_channels // channel_ratio``. The shortcut keeps the first
    ``out_channels`` channels of ``x`` (so ``out_channels <= in_channels``) and is upsampled with
    ``h``; it has no parameters.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        make_norm: NormFactory,
        upsample: bool = True,
        channel_ratio: int = 4,
        sn_eps: float = 1e-6,
        sn_itrs: int = 1,
    ) -> None:
        super().__init__()
        if out_channels > in_channels:
            raise ValueError("DeepGBlock drops channels in its shortcut: needs out_channels <= in_channels")
        hidden = in_channels // channel_ratio
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.upsample = upsample
        kw = {"sn_eps": sn_eps, "sn_itrs": sn_itrs}
        self.bn1 = make_norm(in_channels)
        self.conv1 = sn_conv2d(in_channels, hidden, kernel_size=1, **kw)
        self.bn2 = make_norm(hidden)
        self.conv2 = sn_conv2d(hidden, hidden, **kw)
        self.bn3 = make_norm(hidden)
        self.conv3 = sn_conv2d(hidden, hidden, **kw)
        self.bn4 = make_norm(hidden)
        self.conv4 = sn_conv2d(hidden, out_channels, kernel_size=1, **kw)

    def forward(self, x: Tensor, cond: Tensor | None = None) -> Tensor:
        h = self.conv1(F.relu(apply_norm(self.bn1, x, cond)))
        h = F.relu(apply_norm(self.bn2, h, cond))
        x = x[:, : self.out_channels]
        if self.upsample:
            h = F.interpolate(h, scale_factor=2.0, mode="nearest")
            x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        h = self.conv2(h)
        h = self.conv3(F.relu(apply_norm(self.bn3, h, cond)))
        h = self.conv4(F.relu(apply_norm(self.bn4, h, cond)))
        return h + x


class DeepDBlock(nn.Module):
    """Bottleneck down-block: ``ReLU-1x1 -> ReLU-3x3 -> ReLU-3x3 -> ReLU-[pool]-1x1``.

    The hidden width is ``out_channels // channel_ratio``; the block is always pre-activated (the
    deep D starts with a plain conv on the image). The shortcut is average-pooled and, when the
    width grows, extended by ``out_channels - in_channels`` learned channels (``x`` itself passes
    through unchanged), so ``out_channels >= in_channels``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        downsample: bool = True,
        channel_ratio: int = 4,
        sn_eps: float = 1e-6,
        sn_itrs: int = 1,
    ) -> None:
        super().__init__()
        if out_channels < in_channels:
            raise ValueError("DeepDBlock extends its shortcut: needs out_channels >= in_channels")
        hidden = out_channels // channel_ratio
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.downsample = downsample
        kw = {"sn_eps": sn_eps, "sn_itrs": sn_itrs}
        self.conv1 = sn_conv2d(in_channels, hidden, kernel_size=1, **kw)
        self.conv2 = sn_conv2d(hidden, hidden, **kw)
        self.conv3 = sn_conv2d(hidden, hidden, **kw)
        self.conv4 = sn_conv2d(hidden, out_channels, kernel_size=1, **kw)
        self.conv_sc = (
            sn_conv2d(in_channels, out_channels - in_channels, kernel_size=1, **kw)
            if out_channels != in_channels
            else None
        )

    def _shortcut(self, x: Tensor) -> Tensor:
        if self.downsample:
            x = F.avg_pool2d(x, 2)
        if self.conv_sc is not None:
            x = torch.cat([x, self.conv_sc(x)], dim=1)
        return x

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv1(F.relu(x))  # out-of-place: the shortcut needs the un-rectified x
        h = self.conv2(F.relu(h))
        h = F.relu(self.conv3(F.relu(h)))
        if self.downsample:
            h = F.avg_pool2d(h, 2)
        return self.conv4(h) + self._shortcut(x)


__all__ = ["DeepDBlock", "DeepGBlock"]
