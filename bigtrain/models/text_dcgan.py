"""The text-conditional DCGAN of GAN-CLS (Reed et al. 2016, "Generative Adversarial Text to Image
Synthesis", section 4.1), ``model=text_dcgan``.

* G(z, e): the text embedding ``e`` is projected by a fully-connected layer and LeakyReLU(0.2) to
  ``proj_dim`` (128 in the paper), concatenated with ``z`` and decoded as DCGAN decodes its latent
  (fractionally-strided convs, BatchNorm, ReLU, tanh).
* D(x, e): DCGAN's strided convs (BatchNorm, LeakyReLU 0.2) down to 4x4; the embedding, projected
  as in G (D's own projection), is replicated over the 4x4 positions and concatenated depth-wise;
  a 1x1 conv (with BatchNorm and LeakyReLU) mixes image and text, and the final 4x4 conv gives one
  logit per image.

Weights are initialised as DCGAN's (N(0, 0.02) convs, BatchNorm scales N(1, 0.02)).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from bigtrain.config.typed import option
from bigtrain.models.dcgan import _init_weights, _num_stages
from bigtrain.models.registry import TextGANShape, register_model


def _projection(text_dim: int, proj_dim: int) -> nn.Sequential:
    """Reed et al.'s compression of the text embedding: FC, then LeakyReLU(0.2)."""
    return nn.Sequential(nn.Linear(text_dim, proj_dim), nn.LeakyReLU(0.2, inplace=True))


class TextDCGANGenerator(nn.Module):
    """``[z, proj(e)]`` -> 4x4 -> ... -> ``resolution``, halving channels as resolution doubles."""

    def __init__(
        self, z_dim: int, text_dim: int, resolution: int, channels: int, width: int = 64, proj_dim: int = 128
    ) -> None:
        super().__init__()
        stages = _num_stages(resolution)
        self.z_dim, self.text_dim, self.resolution, self.channels = z_dim, text_dim, resolution, channels
        self.num_classes = 0
        self.project = _projection(text_dim, proj_dim)
        ch = width * 2 ** (stages - 1)
        layers: list[nn.Module] = [
            nn.ConvTranspose2d(z_dim + proj_dim, ch, 4, 1, 0, bias=False),
            nn.BatchNorm2d(ch),
            nn.ReLU(inplace=True),
        ]
        for _ in range(stages - 1):
            layers += [
                nn.ConvTranspose2d(ch, ch // 2, 4, 2, 1, bias=False),
                nn.BatchNorm2d(ch // 2),
                nn.ReLU(True),
            ]
            ch //= 2
        layers += [nn.ConvTranspose2d(ch, channels, 4, 2, 1), nn.Tanh()]
        self.net = nn.Sequential(*layers)
        _init_weights(self)

    def forward(self, z: Tensor, e: Tensor) -> Tensor:
        """Noise ``z: [B, z_dim]`` and text embeddings ``e: [B, text_dim]`` -> images in [-1, 1]."""
        h = torch.cat([z, self.project(e.to(z.dtype))], dim=1)
        return self.net(h[:, :, None, None])


class TextDCGANDiscriminator(nn.Module):
    """Strided convs to 4x4, the projected text replicated over 4x4 and concatenated, a 1x1 conv,
    then the 4x4 conv to one logit ``[B]``."""

    def __init__(
        self,
        text_dim: int,
        resolution: int,
        channels: int,
        width: int = 64,
        proj_dim: int = 128,
        minibatch_std: bool = False,
    ) -> None:
        super().__init__()
        stages = _num_stages(resolution)
        self.text_dim, self.resolution, self.channels = text_dim, resolution, channels
        self.minibatch_std = minibatch_std
        self.num_classes = 0
        layers: list[nn.Module] = [nn.Conv2d(channels, width, 4, 2, 1), nn.LeakyReLU(0.2, inplace=True)]
        ch = width
        for _ in range(stages - 1):
            layers += [
                nn.Conv2d(ch, ch * 2, 4, 2, 1, bias=False),
                nn.BatchNorm2d(ch * 2),
                nn.LeakyReLU(0.2, True),
            ]
            ch *= 2
        self.features = nn.Sequential(*layers)
        self.project = _projection(text_dim, proj_dim)
        self.joint = nn.Sequential(
            nn.Conv2d(ch + proj_dim + int(minibatch_std), ch, 1, 1, 0, bias=False),
            nn.BatchNorm2d(ch),
            nn.LeakyReLU(0.2, True),
        )
        self.head = nn.Conv2d(ch, 1, 4, 1, 0)
        _init_weights(self)

    def forward(self, x: Tensor, e: Tensor) -> Tensor:
        """Images ``x: [B, C, H, W]`` and text embeddings ``e: [B, text_dim]`` -> logits ``[B]``."""
        h = self.features(x)
        t = self.project(e.to(h.dtype))[:, :, None, None].expand(-1, -1, h.shape[2], h.shape[3])
        parts = [h, t]
        if self.minibatch_std:  # ProGAN's feature: the batch's mean std, so D can see a collapse
            s = h.std(dim=0, unbiased=False).mean() if len(h) > 1 else h.new_zeros(())
            parts.append(s.expand(h.shape[0], 1, h.shape[2], h.shape[3]))
        return self.head(self.joint(torch.cat(parts, dim=1))).flatten()


@dataclass
class TextDCGANArch:
    minibatch_std: bool = option(
        False,
        "D sees the batch's mean feature std at 4x4 (ProGAN's minibatch std; not in Reed et al.): against "
        "G ignoring z",
    )
    proj_dim: int = option(
        128, "the text embedding's projection (FC + LeakyReLU 0.2) in G and in D; Reed et al.: 128"
    )


@register_model(
    "text_dcgan", kind="text", arch=TextDCGANArch, help="Reed et al. 2016 GAN-CLS: DCGAN conditioned on text"
)
def build_text_dcgan(
    shape: TextGANShape, arch: TextDCGANArch
) -> tuple[TextDCGANGenerator, TextDCGANDiscriminator]:
    """Reed et al. 2016's text-conditional DCGAN pair (``arch.proj_dim``: the text projection)."""
    s = shape
    g = TextDCGANGenerator(s.z_dim, s.text_dim, s.resolution, s.channels, s.g_width, arch.proj_dim)
    d = TextDCGANDiscriminator(
        s.text_dim, s.resolution, s.channels, s.d_width, arch.proj_dim, minibatch_std=arch.minibatch_std
    )
    return g, d
