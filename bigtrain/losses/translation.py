"""The GAN term of image translation (pix2pix, CycleGAN), scaled as the reference scales it.

junyanz/pytorch-CycleGAN-and-pix2pix's ``GANLoss`` compares a PatchGAN's logits with a target of
1 (real) or 0 (generated), as a BCE on the logits (``vanilla``) or a squared error (``lsgan``), and
its models combine the terms as ``D = (real + fake) * 0.5`` and ``G = loss(D(fake), 1)``. The GAN
registry's ``lsgan`` carries Mao et al.'s 1/2 in both players' losses, which would halve G's GAN
term against the L1 and cycle terms; these objectives keep the reference's weights, so
``l1_weight=100`` and ``cycle_weight=10`` mean what they mean there.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

TRANSLATION_LOSSES = ("non_saturating", "lsgan")
"""``non_saturating`` is the reference's ``vanilla`` (BCE; G's target is 1), ``lsgan`` its ``lsgan``."""


class PatchObjective:
    """``loss(logits, real)``: the mean over every patch of the distance to the target 1 or 0."""

    def __init__(self, name: str) -> None:
        if name not in TRANSLATION_LOSSES:
            raise ValueError(f"unknown translation GAN loss {name!r}; choose {', '.join(TRANSLATION_LOSSES)}")
        self.name = name

    def __call__(self, logits: Tensor, real: bool) -> Tensor:
        if self.name == "lsgan":
            return (logits - (1.0 if real else 0.0)).pow(2).mean()
        # BCE on the logits against 1 is softplus(-l), against 0 softplus(l) (the GAN registry's
        # finite forms, the same arithmetic as its non_saturating loss)
        return F.softplus(-logits if real else logits).mean()

    def d_loss(self, real_logits: Tensor, fake_logits: Tensor) -> Tensor:
        """The discriminator's loss, halved as in the reference (D learns at half G's pace)."""
        return 0.5 * (self(real_logits, True) + self(fake_logits, False))

    def g_loss(self, fake_logits: Tensor) -> Tensor:
        return self(fake_logits, True)


__all__ = ["TRANSLATION_LOSSES", "PatchObjective"]
