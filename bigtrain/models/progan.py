"""Progressive GAN (Karras et al. 2018, "Progressive Growing of GANs"), as in the paper and its
released TensorFlow code (tkarras/progressive_growing_of_gans).

Both networks are built for the final resolution with every block present, and run at a *level*
(1 = 4x4, 2 = 8x8, ...) with a fade-in weight ``alpha``: at level ``l`` with ``alpha < 1`` the
new block's output is blended with the previous level's output, upsampled (G) or the downsampled
image through the previous ``fromRGB`` (D). At ``alpha = 0`` the networks compute exactly the
previous level's function (G's image upsampled by nearest neighbour), so growing never changes
what the networks do at the moment it happens. Blocks above the current level get no gradients, so
Adam (which skips parameters without gradients) and the EMA leave them at their initial values
until they fade in.

The paper's pieces: equalised learning rate (weights drawn from N(0, 1) and scaled at run time by
He's constant ``gain / sqrt(fan_in)``), pixelwise feature normalisation in G after each conv and
of the latent, leaky ReLU 0.2, minibatch standard deviation (group 4) before D's last block,
nearest upsampling and 2x2 average pooling, channel widths ``min(fmap_base / 2^level, fmap_max)``
(8192 and 512 in the paper: 23.1M parameters per network at 1024x1024). G's output is linear,
as in the paper. The WGAN-GP loss with the drift term is ``loss=wgan_gp loss.drift=0.001``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bigtrain.config.typed import option
from bigtrain.models.growing import Growing
from bigtrain.models.registry import GANShape, register_model


class EqualizedLinear(nn.Module):
    def __init__(self, fan_in: int, fan_out: int, gain: float = math.sqrt(2), bias: bool = True) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(fan_out, fan_in))
        self.bias = nn.Parameter(torch.zeros(fan_out)) if bias else None
        self.scale = gain / math.sqrt(fan_in)

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight * self.scale, self.bias)


class EqualizedConv2d(nn.Module):
    def __init__(self, cin: int, cout: int, kernel: int, gain: float = math.sqrt(2)) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(cout, cin, kernel, kernel))
        self.bias = nn.Parameter(torch.zeros(cout))
        self.scale = gain / math.sqrt(cin * kernel * kernel)
        self.padding = kernel // 2

    def forward(self, x: Tensor) -> Tensor:
        return F.conv2d(x, self.weight * self.scale, self.bias, padding=self.padding)


def pixel_norm(x: Tensor, eps: float = 1e-8) -> Tensor:
    """Each pixel's feature vector to unit average square (paper, sec. 4.2)."""
    return x * torch.rsqrt(x.square().mean(dim=1, keepdim=True) + eps)


def minibatch_stddev(x: Tensor, group: int = 4) -> Tensor:
    """Append one feature map: the standard deviation of each feature over a group of samples,
    averaged over features and pixels (paper, sec. 3)."""
    b, c, h, w = x.shape
    g = min(group, b)
    if b % g:
        g = 1
    y = x.float().reshape(g, -1, c, h, w)
    y = (y - y.mean(dim=0)).square().mean(dim=0).add(1e-8).sqrt().mean(dim=(1, 2, 3))  # [b / g]
    y = y.to(x.dtype).view(-1, 1, 1, 1).repeat(g, 1, h, w)
    return torch.cat([x, y], dim=1)


def _levels(resolution: int) -> int:
    """Level of the final resolution: 1 = 4x4, 2 = 8x8, ..."""
    levels = int(math.log2(resolution)) - 1 if resolution >= 4 else 0
    if levels < 1 or 4 * 2 ** (levels - 1) != resolution:
        raise ValueError(f"ProGAN needs a power-of-two resolution >= 4, got {resolution}")
    return levels


def _lrelu(x: Tensor) -> Tensor:
    return F.leaky_relu(x, 0.2)


def widths(levels: int, fmap_base: int, fmap_max: int) -> list[int]:
    """``nf(l) = min(fmap_base / 2^l, fmap_max)`` for l = 0 .. levels."""
    return [min(fmap_base // 2**lv, fmap_max) for lv in range(levels + 1)]


class _GBlock(nn.Module):
    """Upsample x2 (nearest), then two 3x3 convs, each followed by leaky ReLU and pixel norm."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv0 = EqualizedConv2d(cin, cout, 3)
        self.conv1 = EqualizedConv2d(cout, cout, 3)

    def forward(self, x: Tensor) -> Tensor:
        x = F.interpolate(x, scale_factor=2, mode="nearest")
        x = pixel_norm(_lrelu(self.conv0(x)))
        return pixel_norm(_lrelu(self.conv1(x)))


class _DBlock(nn.Module):
    """Two 3x3 convs with leaky ReLU, then 2x2 average pooling."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv0 = EqualizedConv2d(cin, cin, 3)
        self.conv1 = EqualizedConv2d(cin, cout, 3)

    def forward(self, x: Tensor) -> Tensor:
        x = _lrelu(self.conv1(_lrelu(self.conv0(x))))
        return F.avg_pool2d(x, 2)


class _Growing(Growing, nn.Module):
    """ProGAN counts stages as levels (1 = 4x4, 2 = 8x8, ...); the state is the shared one."""

    levels: int

    def set_stage(self, level: int, alpha: float) -> None:
        if not 1 <= level <= self.levels:
            raise ValueError(f"level must be in 1..{self.levels} (4x4 .. {4 * 2 ** (self.levels - 1)}px)")
        self.set_resolution(4 * 2 ** (level - 1), alpha)

    @property
    def level(self) -> int:
        return self.stage_index + 1


class ProGANGenerator(_Growing):
    def __init__(
        self, resolution: int, channels: int, z_dim: int = 512, fmap_base: int = 8192, fmap_max: int = 512
    ) -> None:
        super().__init__()
        levels = _levels(resolution)
        self.resolution, self.channels, self.z_dim, self.num_classes = resolution, channels, z_dim, 0
        self.levels = levels
        nf = widths(levels, fmap_base, fmap_max)
        # 4x4: the latent to a 4x4 map by a dense layer (gain sqrt(2)/4 and one bias per channel, as
        # released), then a conv
        self.dense = EqualizedLinear(z_dim, nf[1] * 16, gain=math.sqrt(2) / 4, bias=False)
        self.dense_bias = nn.Parameter(torch.zeros(nf[1]))
        self.conv = EqualizedConv2d(nf[1], nf[1], 3)
        self.blocks = nn.ModuleList([_GBlock(nf[lv - 1], nf[lv]) for lv in range(2, levels + 1)])
        self.to_rgb = nn.ModuleList(
            [EqualizedConv2d(nf[lv], channels, 1, gain=1.0) for lv in range(1, levels + 1)]
        )
        self.init_growing([4 * 2**lv for lv in range(levels)], resolution)

    def forward(self, z: Tensor, y: Tensor | None = None) -> Tensor:  # noqa: ARG002 - unconditional
        x = self.dense(pixel_norm(z)).view(z.shape[0], -1, 4, 4)
        x = pixel_norm(_lrelu(x + self.dense_bias.view(1, -1, 1, 1)))
        x = pixel_norm(_lrelu(self.conv(x)))
        prev = x
        for block in self.blocks[: self.level - 1]:
            prev, x = x, block(x)
        img = self.to_rgb[self.level - 1](x)
        if self.fading:
            img = self.fade_images(self.to_rgb[self.level - 2](prev), img)
        return img


class ProGANDiscriminator(_Growing):
    def __init__(
        self, resolution: int, channels: int, fmap_base: int = 8192, fmap_max: int = 512, mbstd_group: int = 4
    ) -> None:
        super().__init__()
        levels = _levels(resolution)
        self.resolution, self.channels, self.num_classes, self.levels = resolution, channels, 0, levels
        self.mbstd_group = mbstd_group
        nf = widths(levels, fmap_base, fmap_max)
        self.from_rgb = nn.ModuleList([EqualizedConv2d(channels, nf[lv], 1) for lv in range(1, levels + 1)])
        self.blocks = nn.ModuleList([_DBlock(nf[lv], nf[lv - 1]) for lv in range(2, levels + 1)])
        self.conv = EqualizedConv2d(nf[1] + 1, nf[1], 3)
        self.dense0 = EqualizedLinear(nf[1] * 16, nf[0])
        self.dense1 = EqualizedLinear(nf[0], 1, gain=1.0)
        self.init_growing([4 * 2**lv for lv in range(levels)], resolution)

    def forward(self, x: Tensor, y: Tensor | None = None) -> Tensor:  # noqa: ARG002 - unconditional
        lv = self.level
        h = _lrelu(self.from_rgb[lv - 1](x))
        if lv > 1:
            h = self.blocks[lv - 2](h)
            if self.fading:
                old = _lrelu(self.from_rgb[lv - 2](F.avg_pool2d(x, 2)))
                h = self.fade(old, h)
            for i in range(lv - 3, -1, -1):
                h = self.blocks[i](h)
        h = _lrelu(self.conv(minibatch_stddev(h, self.mbstd_group)))
        h = _lrelu(self.dense0(h.flatten(1)))
        return self.dense1(h).view(-1)


def build_progan(
    *,
    resolution: int,
    channels: int,
    z_dim: int,
    fmap_base: int = 8192,
    fmap_max: int = 512,
    mbstd_group: int = 4,
) -> tuple[ProGANGenerator, ProGANDiscriminator]:
    return (
        ProGANGenerator(resolution, channels, z_dim, fmap_base, fmap_max),
        ProGANDiscriminator(resolution, channels, fmap_base, fmap_max, mbstd_group),
    )


@dataclass
class ProGANArch:
    fmap_base: int = option(
        8192, "widths are min(fmap_base / 2^level, fmap_max); the paper's 1024 px nets: 8192"
    )
    fmap_max: int = option(512, "the widest layer")
    mbstd_group: int = option(4, "minibatch standard deviation group size in D's last block")


@register_model("progan", kind="gan", arch=ProGANArch, help="Karras et al. 2018: grows with fade-in")
def _build_progan_family(shape: GANShape, arch: ProGANArch) -> tuple[ProGANGenerator, ProGANDiscriminator]:
    """Karras et al. 2018, growing with fade-in; unconditional. Its widths come from ``fmap_base`` /
    ``fmap_max`` (not ``g_width`` / ``d_width``) and its D has no normalisation (WGAN-GP's penalty is
    per sample)."""
    if shape.num_classes:
        raise ValueError("model=progan is unconditional (as in the paper): set model.conditional=false")
    return build_progan(
        resolution=shape.resolution, channels=shape.channels, z_dim=shape.z_dim, fmap_base=arch.fmap_base,
        fmap_max=arch.fmap_max, mbstd_group=arch.mbstd_group,
    )  # fmt: skip


__all__ = [
    "EqualizedConv2d",
    "ProGANArch",
    "EqualizedLinear",
    "ProGANDiscriminator",
    "ProGANGenerator",
    "build_progan",
    "minibatch_stddev",
    "pixel_norm",
    "widths",
]
