"""PatchGAN discriminator (Isola et al. 2017, pix2pix; used by VQ-GAN as released).

``n_layers`` stride-2 4x4 convs (widths ``ndf * min(2^i, 8)``), one stride-1 4x4 conv, and a 4x4 conv
to one logit per patch: each logit sees a 16x16 (1 layer), 34x34 (2) or 70x70 (3, pix2pix's
"70x70 PatchGAN") window of the input. A normalisation layer after every conv but the first and
the last, LeakyReLU 0.2, weights N(0, 0.02) and BatchNorm gains N(1, 0.02) as in the releases.
Output ``[B, 1, h, w]`` patch logits.

``norm`` follows the pix2pix/CycleGAN release's ``get_norm_layer``: ``"batch"`` (the default, and
what taming's VQ-GAN uses), ``"instance"`` (``InstanceNorm2d`` without affine parameters or running
statistics: CycleGAN's default) or ``"none"``. The hidden convs carry a bias only with instance
norm, as the release decides it (``use_bias = norm is InstanceNorm2d``); with ``"none"`` the release
also leaves them without one, and so does this class, so its checkpoints map one to one.

``zero_bias``: the pix2pix/CycleGAN release sets the first and last convs' biases to 0
(``init_weights``), while taming's VQ-GAN leaves them at PyTorch's default init; the default
(False) is taming's. It draws no random numbers, so the weights are the same either way.
"""

from __future__ import annotations

from torch import Tensor, nn

PATCH_NORMS = ("batch", "instance", "none")


def norm_layer(kind: str, channels: int) -> nn.Module:
    """The release's ``get_norm_layer(kind)(channels)``: BatchNorm with affine gains and running
    statistics, InstanceNorm with neither, or an identity."""
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "instance":
        return nn.InstanceNorm2d(channels, affine=False, track_running_stats=False)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"unknown norm {kind!r}; choose one of {', '.join(PATCH_NORMS)}")


class PatchDiscriminator(nn.Module):
    def __init__(
        self,
        in_channels: int = 3,
        ndf: int = 64,
        n_layers: int = 3,
        norm: str = "batch",
        zero_bias: bool = False,
    ) -> None:
        super().__init__()
        if norm not in PATCH_NORMS:
            raise ValueError(f"unknown norm {norm!r}; choose one of {', '.join(PATCH_NORMS)}")
        if n_layers < 1:
            raise ValueError(f"PatchDiscriminator needs n_layers >= 1, got {n_layers}")
        self.in_channels = in_channels
        self.norm = norm
        bias = norm == "instance"  # the release's rule (see the module docstring)
        layers: list[nn.Module] = [
            nn.Conv2d(in_channels, ndf, 4, stride=2, padding=1),
            nn.LeakyReLU(0.2, True),
        ]
        mult = 1
        for n in range(1, n_layers + 1):
            prev, mult = mult, min(2**n, 8)
            stride = 2 if n < n_layers else 1
            layers += [
                nn.Conv2d(ndf * prev, ndf * mult, 4, stride=stride, padding=1, bias=bias),
                norm_layer(norm, ndf * mult),
                nn.LeakyReLU(0.2, True),
            ]
        layers.append(nn.Conv2d(ndf * mult, 1, 4, stride=1, padding=1))
        self.main = nn.Sequential(*layers)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0.0, 0.02)
                if zero_bias and m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.normal_(m.weight, 1.0, 0.02)
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.main(x)


__all__ = ["PATCH_NORMS", "PatchDiscriminator", "norm_layer"]
