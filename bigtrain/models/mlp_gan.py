"""The fully-connected GAN of Goodfellow et al. 2014 ("Generative Adversarial Nets").

It is the smallest model that exercises the whole training stack, which is why it is kept: on
MNIST-sized data it trains in minutes on a CPU, so it is the smoke-test family for pipelines,
losses and checkpoints. Both networks follow the shared interface of :mod:`bigtrain.models`:
``G(z, y) -> [B, C, H, W]`` in [-1, 1] and ``D(x, y) -> [B]`` raw logits.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from bigtrain.models.common import check_labels as _labels
from bigtrain.models.common import projection
from bigtrain.models.registry import GANShape, register_model


class MLPGenerator(nn.Module):
    """MLP generator: ``[z, embed(y)] -> ReLU hidden layers -> tanh -> [B, C, H, W]``.

    Goodfellow et al. 2014 used ReLU/sigmoid units; tanh output is used here instead of sigmoid so
    samples live in [-1, 1], the range every bigtrain data pipeline normalises images to.
    Conditioning follows Mirza & Osindero 2014 ("Conditional GANs"): a label representation is
    concatenated to the noise at the input; a learned embedding replaces their one-hot vector.
    """

    def __init__(
        self,
        z_dim: int,
        resolution: int,
        channels: int,
        num_classes: int = 0,
        width: int = 512,
        depth: int = 3,
    ) -> None:
        super().__init__()
        if min(z_dim, resolution, channels, width, depth) <= 0:
            raise ValueError("z_dim, resolution, channels, width and depth must all be positive")
        self.z_dim = z_dim
        self.resolution = resolution
        self.channels = channels
        self.num_classes = num_classes
        # The embedding gets as many dimensions as the noise so the label is not drowned out by z.
        embed_dim = z_dim if num_classes > 0 else 0
        self.embed = nn.Embedding(num_classes, embed_dim) if num_classes > 0 else None

        layers: list[nn.Module] = []
        in_features = z_dim + embed_dim
        for _ in range(depth):
            layers += [nn.Linear(in_features, width), nn.ReLU(inplace=True)]
            in_features = width
        layers += [nn.Linear(in_features, channels * resolution * resolution), nn.Tanh()]
        self.net = nn.Sequential(*layers)

    def forward(self, z: Tensor, y: Tensor | None = None) -> Tensor:
        """Map noise ``z: [B, z_dim]`` (and labels ``y: [B]``) to images ``[B, C, H, W]`` in [-1, 1]."""
        y = _labels(y, self.num_classes, z.shape[0])
        if self.embed is not None and y is not None:
            z = torch.cat([z, self.embed(y)], dim=1)
        return self.net(z).view(z.shape[0], self.channels, self.resolution, self.resolution)


class MLPDiscriminator(nn.Module):
    """MLP discriminator: flattened image -> LeakyReLU + dropout hidden layers -> one logit.

    Goodfellow et al. 2014 used maxout units (Goodfellow et al. 2013) with dropout. LeakyReLU(0.2)
    is used instead: it also avoids dead units and gives non-zero gradients everywhere, at a
    fraction of maxout's parameter count (maxout needs k linear pieces per unit). Dropout is kept
    because it is the only regulariser this D has against memorising a small training set.

    Class conditioning uses the projection discriminator of Miyato & Koyama 2018 (eq. 3):
    ``logit = psi(h) + <embed(y), h>``, where ``h`` is the last hidden layer. It conditions more
    stably than concatenating labels to the input, and it is the form every bigtrain D shares.
    """

    def __init__(
        self,
        resolution: int,
        channels: int,
        num_classes: int = 0,
        width: int = 512,
        depth: int = 3,
        dropout: float = 0.3,
    ) -> None:
        super().__init__()
        if min(resolution, channels, width, depth) <= 0:
            raise ValueError("resolution, channels, width and depth must all be positive")
        self.resolution = resolution
        self.channels = channels
        self.num_classes = num_classes

        layers: list[nn.Module] = [nn.Flatten()]
        in_features = channels * resolution * resolution
        for _ in range(depth):
            layers += [nn.Linear(in_features, width), nn.LeakyReLU(0.2, inplace=True), nn.Dropout(dropout)]
            in_features = width
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(width, 1)
        self.embed = nn.Embedding(num_classes, width) if num_classes > 0 else None

    def forward(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        """Score images ``x: [B, C, H, W]`` (with labels ``y: [B]``); returns raw logits ``[B]``."""
        y = _labels(y, self.num_classes, x.shape[0])
        h = self.features(x)
        return projection(self.head(h).squeeze(1), self.embed, y, h)


@dataclass
class MLPGANArch:
    """The MLP pair has no options beyond the common ``model.*`` keys."""


@register_model("mlp_gan", kind="gan", arch=MLPGANArch, help="Goodfellow et al. 2014: fully connected")
def build_mlp_gan(shape: GANShape, arch: MLPGANArch) -> tuple[MLPGenerator, MLPDiscriminator]:  # noqa: ARG001
    """Goodfellow et al. 2014 MLP pair. Its D has no normalisation layers: any ``d_norm`` is moot
    (and WGAN-GP is safe with every one)."""
    s = shape
    g = MLPGenerator(s.z_dim, s.resolution, s.channels, s.num_classes, s.g_width)
    return g, MLPDiscriminator(s.resolution, s.channels, s.num_classes, s.d_width)
