"""PatchGAN discriminator (Isola et al. 2017, pix2pix; used by VQ-GAN as released).

``n_layers`` stride-2 4x4 convs (widths ``ndf * min(2^i, 8)``), one stride-1 4x4 conv, and a 4x4 conv
to one logit per patch: with 3 layers each logit sees a 70x70 receptive field. BatchNorm after
every conv but the first and the last, LeakyReLU 0.2, weights N(0, 0.02) and BN gains N(1, 0.02) as
in the release. Output ``[B, 1, h, w]`` patch logits.
"""

from __future__ import annotations

from torch import Tensor, nn


class PatchDiscriminator(nn.Module):
    def __init__(self, in_channels: int = 3, ndf: int = 64, n_layers: int = 3) -> None:
        super().__init__()
        layers: list[nn.Module] = [
            nn.Conv2d(in_channels, ndf, 4, stride=2, padding=1),
            nn.LeakyReLU(0.2, True),
        ]
        mult = 1
        for n in range(1, n_layers + 1):
            prev, mult = mult, min(2**n, 8)
            stride = 2 if n < n_layers else 1
            layers += [
                nn.Conv2d(ndf * prev, ndf * mult, 4, stride=stride, padding=1, bias=False),
                nn.BatchNorm2d(ndf * mult),
                nn.LeakyReLU(0.2, True),
            ]
        layers.append(nn.Conv2d(ndf * mult, 1, 4, stride=1, padding=1))
        self.main = nn.Sequential(*layers)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0.0, 0.02)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.normal_(m.weight, 1.0, 0.02)
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.main(x)


__all__ = ["PatchDiscriminator"]
