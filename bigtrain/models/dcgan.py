"""DCGAN (Radford, Metz & Chintala 2016, "Unsupervised Representation Learning with DCGANs").

The architecture guidelines of the paper (section 3) are followed: strided convolutions instead
of pooling, fractionally-strided convolutions in G, BatchNorm in both networks (but not on G's
output or D's input), ReLU in G with a tanh output, LeakyReLU(0.2) in D, no fully-connected
hidden layers. The depth is derived from the resolution so one class covers 8x8 to 256x256.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from bigtrain.models.common import check_labels as _labels
from bigtrain.models.common import projection

D_NORMS = ("batch", "layer", "none")


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


class DCGANGenerator(nn.Module):
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
        _init_weights(self)

    def forward(self, z: Tensor, y: Tensor | None = None) -> Tensor:
        """Map noise ``z: [B, z_dim]`` (and labels ``y: [B]``) to images ``[B, C, H, W]`` in [-1, 1]."""
        y = _labels(y, self.num_classes, z.shape[0])
        if self.embed is not None and y is not None:
            z = torch.cat([z, self.embed(y)], dim=1)
        return self.net(z[:, :, None, None])


class DCGANDiscriminator(nn.Module):
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
        self.head = nn.Conv2d(ch, 1, 4, 1, 0)  # 4x4 -> 1x1
        self.embed = nn.Embedding(num_classes, ch) if num_classes > 0 else None
        _init_weights(self)
        if self.embed is not None:
            # Same scale as the conv weights, so the projection term does not dominate at init.
            nn.init.normal_(self.embed.weight, 0.0, 0.02)

    def forward(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        """Score images ``x: [B, C, H, W]`` (with labels ``y: [B]``); returns raw logits ``[B]``."""
        y = _labels(y, self.num_classes, x.shape[0])
        h = self.features(x)
        # the projection term on globally sum-pooled features
        return projection(self.head(h).flatten(), self.embed, y, h.sum(dim=(2, 3)))
