"""BigGAN-deep residual blocks (Brock et al. 2019, appendix B, figure 16), following the authors'
release (ajbrock/BigGAN-PyTorch, ``BigGANdeep.py``).

BigGAN-deep is about four times deeper than BigGAN at a similar parameter count because its blocks
are bottlenecks: a 1x1 conv reduces the channels by ``channel_ratio`` (4), two 3x3 convs work at the
reduced width, and a 1x1 conv restores it. Its shortcuts are parameter-free where possible: G drops
surplus channels instead of projecting them, and D keeps its input channels and only *learns the
extra ones* (concatenating a 1x1 conv's output).

The whole networks differ from BigGAN's in three ways besides the blocks: ``depth`` blocks per
resolution (2 in the paper; only the last of a G stage upsamples, only the first of a D stage
downsamples), the *deep latent scheme* (the whole ``z`` is concatenated with the shared class
embedding and fed to the input linear and to every conditional BN, instead of one ``z`` chunk per
block), and a plain 3x3 conv on D's input before the first block. At the release's 128x128 settings
(``ch = 128``, ``z_dim = shared_dim = 128``, depth 2, attention at 64, 1000 classes) G has
50,244,484 and D 34,590,210 learnable parameters, exactly the release's counts.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bigtrain.config.typed import option
from bigtrain.models.biggan_layers import (
    BigGANFamilyArch,
    ConditionalBatchNorm,
    NormFactory,
    ProjectionDiscriminator,
    RGBHead,
    SelfAttention,
    apply_init,
    apply_norm,
    attention_resolutions,
    batch_norm_2d,
    grown_features,
    grown_images,
    init_orthogonal,
    sn_conv2d,
    sn_embedding,
    sn_linear,
)
from bigtrain.models.common import check_labels
from bigtrain.models.growing import Growing
from bigtrain.models.registry import GANShape, register_model


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


BOTTOM_WIDTH = 4

# Channel multipliers (of ``ch``) per resolution stage, from the release's ``BigGANdeep.py``. G's
# tables equal BigGAN's; D's differ (its first block already doubles the width, the input conv
# gives it ``ch`` channels).
_G_ARCH: dict[int, tuple[list[int], list[int]]] = {
    256: ([16, 16, 8, 8, 4, 2], [16, 8, 8, 4, 2, 1]),
    128: ([16, 16, 8, 4, 2], [16, 8, 4, 2, 1]),
    64: ([16, 16, 8, 4], [16, 8, 4, 2]),
    32: ([4, 4, 4], [4, 4, 4]),
}
# D: (input multipliers, output multipliers, downsample per stage).
_D_ARCH: dict[int, tuple[list[int], list[int], list[bool]]] = {
    256: ([1, 2, 4, 8, 8, 16], [2, 4, 8, 8, 16, 16], [True] * 6),
    128: ([1, 2, 4, 8, 16], [2, 4, 8, 16, 16], [True] * 5),
    64: ([1, 2, 4, 8], [2, 4, 8, 16], [True] * 4),
    32: ([4, 4, 4], [4, 4, 4], [True, True, False]),
}
SUPPORTED_RESOLUTIONS = tuple(sorted(_G_ARCH))


def _check_resolution(resolution: int) -> None:
    if resolution not in _G_ARCH:
        raise ValueError(f"BigGAN-deep resolution must be one of {SUPPORTED_RESOLUTIONS}, got {resolution}")


def _check_depth(depth: int) -> None:
    if depth < 1:
        raise ValueError(f"BigGAN-deep depth (blocks per resolution) must be >= 1, got {depth}")


class BigGANDeepGenerator(Growing, nn.Module):
    """BigGAN-deep generator; ``forward(z [B, z_dim], y [B] | None) -> [B, channels, R, R]``.

    The conditioning vector ``c = [shared(y), z]`` (embedding first, as in the release) feeds the
    input linear and every conditional BN; an unconditional G uses ``c = z``. Each resolution stage
    is ``depth`` bottleneck blocks: the first ``depth - 1`` keep the width, the last changes it and
    upsamples. ``attention`` lists the output resolutions of stages followed by self-attention.
    Output head as BigGAN's: affine BN -> ReLU -> SN conv3x3 -> tanh.
    """

    def __init__(
        self,
        resolution: int,
        channels: int,
        num_classes: int,
        z_dim: int = 128,
        ch: int = 128,
        shared_dim: int = 128,
        depth: int = 2,
        attention: Iterable[int] = (64,),
        channel_ratio: int = 4,
        sn_eps: float = 1e-6,
        bn_eps: float = 1e-5,
        cross_replica_bn: bool = False,
        sn_itrs: int = 1,
        grow: bool = False,
    ) -> None:
        super().__init__()
        _check_resolution(resolution)
        _check_depth(depth)
        if num_classes > 0 and shared_dim <= 0:
            raise ValueError("a conditional BigGAN-deep G needs a shared class embedding (shared_dim > 0)")
        self.resolution = resolution
        self.channels = channels
        self.num_classes = num_classes
        self.z_dim = z_dim
        self.ch = ch
        self.depth = depth
        self.shared_dim = shared_dim if num_classes > 0 else 0
        self.cross_replica_bn = cross_replica_bn
        attn = attention_resolutions(attention)
        cond_dim = self.shared_dim + z_dim
        sn = {"sn_eps": sn_eps, "sn_itrs": sn_itrs}
        make_norm: NormFactory = functools.partial(
            ConditionalBatchNorm, cond_dim=cond_dim, eps=bn_eps, cross_replica=cross_replica_bn, **sn
        )
        self.shared = nn.Embedding(num_classes, self.shared_dim) if num_classes > 0 else None
        ins, outs = _G_ARCH[resolution]
        self.linear = sn_linear(cond_dim, ch * ins[0] * BOTTOM_WIDTH**2, **sn)
        self.blocks = nn.ModuleList()
        self.attention = nn.ModuleDict()
        for stage, (i, o) in enumerate(zip(ins, outs, strict=True)):
            for k in range(depth):
                last = k == depth - 1
                self.blocks.append(
                    DeepGBlock(
                        ch * i,
                        ch * o if last else ch * i,
                        make_norm=make_norm,
                        upsample=last,
                        channel_ratio=channel_ratio,
                        **sn,
                    )
                )
            if BOTTOM_WIDTH * 2 ** (stage + 1) in attn:
                self.attention[str(len(self.blocks) - 1)] = SelfAttention(ch * o, **sn)
        self.out_bn = batch_norm_2d(ch * outs[-1], affine=True, eps=bn_eps, cross_replica=cross_replica_bn)
        self.out_conv = sn_conv2d(ch * outs[-1], channels, **sn)
        # growing: a head on the 4x4 map and after every resolution stage but the last
        widths = [ch * ins[0]] + [ch * o for o in outs[:-1]]
        self.to_rgb = nn.ModuleDict(
            {
                str(BOTTOM_WIDTH * 2**j): RGBHead(
                    w,
                    channels,
                    batch_norm_2d(w, affine=True, eps=bn_eps, cross_replica=cross_replica_bn),
                    sn_eps,
                    sn_itrs,
                )  # fmt: skip
                for j, w in enumerate(widths if grow else [])
            }
        )
        self.init_growing(
            [BOTTOM_WIDTH * 2**j for j in range(len(ins) + 1)] if grow else [resolution], resolution
        )
        init_orthogonal(self)

    def _to_image(self, j: int, h: Tensor) -> Tensor:
        """The image after ``j`` resolution stages (``4 * 2^j`` px)."""
        if j * self.depth == len(self.blocks):
            return torch.tanh(self.out_conv(F.relu(self.out_bn(h))))
        return self.to_rgb[str(BOTTOM_WIDTH * 2**j)](h)

    def condition(self, z: Tensor, y: Tensor | None) -> Tensor:
        """The vector every layer is conditioned on: ``[shared(y), z]``, or ``z`` alone."""
        if self.shared is None:
            return z
        assert y is not None
        return torch.cat([self.shared(y), z], dim=1)

    def forward(self, z: Tensor, y: Tensor | None = None) -> Tensor:
        """Map noise ``z: [B, z_dim]`` (and labels ``y: [B]``) to images in [-1, 1]."""
        if z.ndim != 2 or z.shape[1] != self.z_dim:
            raise ValueError(f"z must have shape [B, {self.z_dim}], got {list(z.shape)}")
        y = check_labels(y, self.num_classes, z.shape[0])
        cond = self.condition(z, y)
        h = self.linear(cond).view(z.shape[0], -1, BOTTOM_WIDTH, BOTTOM_WIDTH)
        ends = list(range(0, len(self.blocks) + 1, self.depth))  # blocks run to reach each stage
        return grown_images(h, self, cond, ends, self._to_image)


class BigGANDeepDiscriminator(Growing, ProjectionDiscriminator):
    """BigGAN-deep discriminator; ``forward(x [B, C, R, R], y [B] | None) -> [B]`` raw logits.

    SN conv3x3 (image -> ``ch``), then per resolution stage ``depth`` bottleneck blocks (the first
    changes the width and downsamples), self-attention after the stages whose output resolution is
    listed, ReLU, global sum pooling, an SN linear and the projection term, as BigGAN's D.
    """

    def __init__(
        self,
        resolution: int,
        channels: int,
        num_classes: int,
        ch: int = 128,
        depth: int = 2,
        attention: Iterable[int] = (64,),
        channel_ratio: int = 4,
        sn_eps: float = 1e-6,
        sn_itrs: int = 1,
        grow: bool = False,
    ) -> None:
        super().__init__()
        _check_resolution(resolution)
        _check_depth(depth)
        self.resolution = resolution
        self.channels = channels
        self.num_classes = num_classes
        self.ch = ch
        self.depth = depth
        attn = attention_resolutions(attention)
        sn = {"sn_eps": sn_eps, "sn_itrs": sn_itrs}
        ins, outs, downs = _D_ARCH[resolution]
        self.input_conv = sn_conv2d(channels, ch * ins[0], **sn)
        self.blocks = nn.ModuleList()
        self.attention = nn.ModuleDict()
        res = resolution
        self.entry: dict[int, int] = {}  # growing: the first block taking each input resolution
        for i, o, down in zip(ins, outs, downs, strict=True):
            for k in range(depth):
                self.entry.setdefault(res, len(self.blocks))
                res = res // 2 if down and k == 0 else res
                self.blocks.append(
                    DeepDBlock(
                        ch * (i if k == 0 else o),
                        ch * o,
                        downsample=down and k == 0,
                        channel_ratio=channel_ratio,
                        **sn,
                    )
                )
            if res in attn:
                self.attention[str(len(self.blocks) - 1)] = SelfAttention(ch * o, **sn)
        self.linear = sn_linear(ch * outs[-1], 1, **sn)
        self.embed = sn_embedding(num_classes, ch * outs[-1], **sn) if num_classes > 0 else None
        # growing: an SN conv3x3 from the image (like input_conv) into each lower entry block
        self.from_rgb = nn.ModuleDict(
            {
                str(r): sn_conv2d(channels, self.blocks[b].in_channels, **sn)
                for r, b in self.entry.items()
                if grow and r < resolution
            }
        )
        self.init_growing(list(self.entry) if grow else [resolution], resolution)
        init_orthogonal(self)

    def _from_image(self, r: int, x: Tensor) -> Tensor:
        return self.input_conv(x) if r == self.resolution else self.from_rgb[str(r)](x)

    def features(self, x: Tensor) -> Tensor:
        """Rectified, globally sum-pooled features ``[B, 16 ch]``."""
        return F.relu(grown_features(x, self, self._from_image)).sum(dim=(2, 3))


@dataclass
class BigGANDeepArch(BigGANFamilyArch):
    depth: int = option(2, "bottleneck blocks per resolution, both networks")
    g_depth: int | None = option(None, "G's blocks per resolution (default: depth)")
    d_depth: int | None = option(None, "D's blocks per resolution (default: depth)")
    channel_ratio: int = option(4, "bottleneck width = channels / channel_ratio")


@register_model(
    "biggan_deep", kind="gan", arch=BigGANDeepArch, help="Brock et al. 2019 appendix B, as released"
)
def build_biggan_deep(
    shape: GANShape, arch: BigGANDeepArch
) -> tuple[BigGANDeepGenerator, BigGANDeepDiscriminator]:
    """A BigGAN-deep ``(G, D)`` pair (``model.name=biggan_deep``); ``g_width`` / ``d_width`` are the
    release's ``G_ch`` / ``D_ch``; spectral norm only (``d_norm`` is moot)."""
    g = BigGANDeepGenerator(
        shape.resolution,
        shape.channels,
        shape.num_classes,
        z_dim=shape.z_dim,
        ch=shape.g_width,
        shared_dim=arch.shared_dim,
        depth=arch.depth if arch.g_depth is None else arch.g_depth,
        attention=arch.attention_of("G"),
        channel_ratio=arch.channel_ratio,
        sn_eps=arch.sn_eps_of("G"),
        bn_eps=float(arch.bn_eps),
        cross_replica_bn=arch.cross_replica_bn,
        sn_itrs=arch.sn_itrs,
        grow=arch.grow,
    )
    d = BigGANDeepDiscriminator(
        shape.resolution,
        shape.channels,
        shape.num_classes,
        ch=shape.d_width,
        depth=arch.depth if arch.d_depth is None else arch.d_depth,
        attention=arch.attention_of("D"),
        channel_ratio=arch.channel_ratio,
        sn_eps=arch.sn_eps_of("D"),
        sn_itrs=arch.sn_itrs,
        grow=arch.grow,
    )
    apply_init((g, d), arch.init)
    return g, d


__all__ = [
    "SUPPORTED_RESOLUTIONS",
    "BigGANDeepArch",
    "BigGANDeepDiscriminator",
    "BigGANDeepGenerator",
    "DeepDBlock",
    "DeepGBlock",
    "build_biggan_deep",
]
