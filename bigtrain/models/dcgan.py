"""DCGAN (Radford, Metz & Chintala 2016, "Unsupervised Representation Learning with DCGANs").

The architecture guidelines of the paper (section 3) are followed: strided convolutions instead
of pooling, fractionally-strided convolutions in G, BatchNorm in both networks (but not on G's
output or D's input), ReLU in G with a tanh output, LeakyReLU(0.2) in D, no fully-connected
hidden layers. The depth is derived from the resolution so one class covers 8x8 to 256x256.

With ``grow=True`` both networks can also train in progressive stages (8x8 up to ``resolution``,
``bigtrain.models.growing``): G gets a to-image layer for each lower resolution, shaped like its
own last layer (a stride-2 transposed conv to the image channels, tanh), and D a from-image layer
for each, shaped like its first (a stride-2 conv, LeakyReLU). At the final stage the networks
compute exactly the non-growing DCGAN, whose parameters keep their names.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bigtrain.config.typed import option
from bigtrain.models.common import check_labels as _labels
from bigtrain.models.common import projection
from bigtrain.models.growing import Growing
from bigtrain.models.registry import D_NORMS, GANShape, register_model


def _num_stages(resolution: int) -> int:
    """How many 2x up/down-sampling stages separate a 4x4 map from ``resolution``."""
    if resolution < 8 or resolution & (resolution - 1) != 0:
        raise ValueError(f"DCGAN resolution must be a power of two >= 8, got {resolution}")
    return int(math.log2(resolution)) - 2


def _init_weights(module: nn.Module) -> None:
    """DCGAN initialisation (Radford et al. 2016, section 4): conv weights ~ N(0, 0.02).

    Normalisation scales ~ N(1, 0.02) (the reference implementation's choice, so each norm layer
    starts close to the identity) and all biases 0. The paper's optimiser settings (Adam, lr 2e-4,
    beta1 = 0.5) were tuned with this init, not PyTorch's default Kaiming-uniform one.
    """
    for m in module.modules():
        if isinstance(m, nn.Conv2d | nn.ConvTranspose2d):
            nn.init.normal_(m.weight, 0.0, 0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d | nn.GroupNorm):
            nn.init.normal_(m.weight, 1.0, 0.02)
            nn.init.zeros_(m.bias)


def _d_norm(kind: str, channels: int) -> nn.Module:
    """The discriminator's normalisation layer.

    BatchNorm couples the samples of a batch, so D's output for one image depends on the others;
    WGAN-GP's penalty is defined per sample (Gulrajani et al. 2017, section 4), which is why its
    presets use "layer" (GroupNorm with one group = LayerNorm over C, H, W) or "none".
    """
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "layer":
        return nn.GroupNorm(1, channels)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"unknown D norm {kind!r}; choose one of {', '.join(D_NORMS)}")


class DCGANGenerator(Growing, nn.Module):
    """``[z, embed(y)]`` -> 4x4 -> ... -> ``resolution``, halving channels as resolution doubles.

    With ``k = log2(resolution) - 2`` upsampling stages, the 4x4 map has ``width * 2**(k-1)``
    channels, so the last hidden map (at ``resolution / 2``) has ``width`` channels; for 64x64 and
    width=128 this is the paper's 1024-512-256-128 stack (figure 1).
    """

    def __init__(
        self,
        z_dim: int,
        resolution: int,
        channels: int,
        num_classes: int = 0,
        width: int = 64,
        grow: bool = False,
    ) -> None:
        super().__init__()
        stages = _num_stages(resolution)
        self.z_dim = z_dim
        self.resolution = resolution
        self.channels = channels
        self.num_classes = num_classes
        # Conditioning by concatenation to z (Mirza & Osindero 2014), with a learned embedding of
        # the same size as z; its default N(0, 1) init matches the scale of z ~ N(0, I).
        embed_dim = z_dim if num_classes > 0 else 0
        self.embed = nn.Embedding(num_classes, embed_dim) if num_classes > 0 else None

        ch = width * 2 ** (stages - 1)
        # Biases are dropped before BatchNorm: its shift makes them redundant.
        layers: list[nn.Module] = [
            nn.ConvTranspose2d(z_dim + embed_dim, ch, 4, 1, 0, bias=False),  # 1x1 -> 4x4
            nn.BatchNorm2d(ch),
            nn.ReLU(inplace=True),
        ]
        for _ in range(stages - 1):
            layers += [
                nn.ConvTranspose2d(ch, ch // 2, 4, 2, 1, bias=False),  # doubles H and W
                nn.BatchNorm2d(ch // 2),
                nn.ReLU(inplace=True),
            ]
            ch //= 2
        # No BatchNorm on the output layer (paper section 3): it caused sample oscillation.
        layers += [nn.ConvTranspose2d(ch, channels, 4, 2, 1), nn.Tanh()]
        self.net = nn.Sequential(*layers)
        # growing: to-image layers from the 4x4, 8x8, ... features (the last one is net[-2:])
        self.to_rgb = nn.ModuleList(
            nn.Sequential(nn.ConvTranspose2d(width * 2 ** (stages - 1 - j), channels, 4, 2, 1), nn.Tanh())
            for j in range(stages - 1 if grow else 0)
        )
        self.init_growing([8 * 2**j for j in range(stages)] if grow else [resolution], resolution)
        _init_weights(self)

    def _to_image(self, j: int, h: Tensor) -> Tensor:
        """The image at stage ``j`` (8 * 2^j px) from the features of the ``j`` blocks before it."""
        if j == len(self.to_rgb):
            return self.net[-1](self.net[-2](h))
        return self.to_rgb[j](h)

    def forward(self, z: Tensor, y: Tensor | None = None) -> Tensor:
        """Map noise ``z: [B, z_dim]`` (and labels ``y: [B]``) to images ``[B, C, H, W]`` in [-1, 1]."""
        y = _labels(y, self.num_classes, z.shape[0])
        if self.embed is not None and y is not None:
            z = torch.cat([z, self.embed(y)], dim=1)
        if self.at_final_stage:
            return self.net(z[:, :, None, None])
        j = self.stage_index
        h = prev = self.net[2](self.net[1](self.net[0](z[:, :, None, None])))  # 4x4
        for b in range(j):
            prev, h = h, self.net[3 + 3 * b : 6 + 3 * b](h)
        img = self._to_image(j, h)
        return self.fade_images(self._to_image(j - 1, prev), img) if self.fading else img


class DCGANDiscriminator(Growing, nn.Module):
    """Strided-conv discriminator mirroring :class:`DCGANGenerator`, ending in one logit.

    Channels double as resolution halves (``width`` at ``resolution / 2``) down to 4x4, then a 4x4
    convolution with no padding produces the logit. The first layer is not normalised (paper
    section 3: normalising D's input layer caused instability).

    Class conditioning is the projection of Miyato & Koyama 2018 (eq. 3): the 4x4 features are
    sum-pooled to ``phi(x)`` and ``<embed(y), phi(x)>`` is added to the logit.
    """

    def __init__(
        self,
        resolution: int,
        channels: int,
        num_classes: int = 0,
        width: int = 64,
        norm: str = "batch",
        grow: bool = False,
    ) -> None:
        super().__init__()
        if norm not in D_NORMS:
            raise ValueError(f"unknown D norm {norm!r}; choose one of {', '.join(D_NORMS)}")
        stages = _num_stages(resolution)
        self.resolution = resolution
        self.channels = channels
        self.num_classes = num_classes
        self.norm = norm

        # A norm layer carries its own shift, so the conv bias is only kept without one.
        bias = norm == "none"
        layers: list[nn.Module] = [nn.Conv2d(channels, width, 4, 2, 1), nn.LeakyReLU(0.2, inplace=True)]
        ch = width
        for _ in range(stages - 1):
            layers += [
                nn.Conv2d(ch, ch * 2, 4, 2, 1, bias=bias),  # halves H and W
                _d_norm(norm, ch * 2),
                nn.LeakyReLU(0.2, inplace=True),
            ]
            ch *= 2
        self.features = nn.Sequential(*layers)
        # growing: from-image layers for resolution / 2, / 4, ... (the full one is features[:2])
        self.from_rgb = nn.ModuleList(
            nn.Sequential(nn.Conv2d(channels, width * 2**m, 4, 2, 1), nn.LeakyReLU(0.2, inplace=True))
            for m in range(1, stages if grow else 1)
        )
        self.init_growing([resolution // 2**m for m in range(stages)] if grow else [resolution], resolution)
        self.head = nn.Conv2d(ch, 1, 4, 1, 0)  # 4x4 -> 1x1
        self.embed = nn.Embedding(num_classes, ch) if num_classes > 0 else None
        _init_weights(self)
        if self.embed is not None:
            # Same scale as the conv weights, so the projection term does not dominate at init.
            nn.init.normal_(self.embed.weight, 0.0, 0.02)

    def forward(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        """Score images ``x: [B, C, H, W]`` (with labels ``y: [B]``); returns raw logits ``[B]``."""
        y = _labels(y, self.num_classes, x.shape[0])
        h = self.features(x) if self.at_final_stage else self._grown(x)
        # the projection term on globally sum-pooled features
        return projection(self.head(h).flatten(), self.embed, y, h.sum(dim=(2, 3)))

    def _from_image(self, m: int, x: Tensor) -> Tensor:
        """Features at half the input's size, for an input of ``resolution / 2^m`` px."""
        return self.features[1](self.features[0](x)) if m == 0 else self.from_rgb[m - 1](x)

    def _grown(self, x: Tensor) -> Tensor:
        m = len(self.stage_resolutions) - 1 - self.stage_index  # input is resolution / 2^m
        blocks = len(self.stage_resolutions) - 1  # down-blocks i: resolution / 2^(i+1) -> / 2^(i+2)
        h, first = self._from_image(m, x), m
        if self.fading:  # the new layers' path blended with the previous stage's on the pooled image
            h = self.fade(
                self._from_image(m + 1, F.avg_pool2d(x, 2)), self.features[2 + 3 * m : 5 + 3 * m](h)
            )
            first = m + 1
        for i in range(first, blocks):
            h = self.features[2 + 3 * i : 5 + 3 * i](h)
        return h


@dataclass
class DCGANArch:
    grow: bool = option(False, "progressive resolution stages (stages.schedule) with faded-in layers")


@register_model("dcgan", kind="gan", arch=DCGANArch, help="Radford et al. 2016: strided convs, batchnorm")
def build_dcgan(shape: GANShape, arch: DCGANArch) -> tuple[DCGANGenerator, DCGANDiscriminator]:
    """Radford et al. 2016 DCGAN pair; ``d_norm`` picks D's normalisation; ``arch.grow`` adds the
    layers for progressive resolution stages (``stages.schedule``)."""
    s = shape
    g = DCGANGenerator(s.z_dim, s.resolution, s.channels, s.num_classes, s.g_width, grow=arch.grow)
    d = DCGANDiscriminator(s.resolution, s.channels, s.num_classes, s.d_width, norm=s.d_norm, grow=arch.grow)
    return g, d
