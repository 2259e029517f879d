"""What a growing network shares, whatever its family (ProGAN, or DCGAN / BigGAN / BigGAN-deep
with ``model.arch.grow=true``): it is built whole for the final resolution and runs at one of its
``stage_resolutions`` with a fade weight ``alpha`` for the block that resolution added.

Fade-in (Karras et al. 2018, sec. 2): while ``alpha < 1`` the generator's image is
``lerp(up2(rgb_prev(h_prev)), rgb_new(block(h_prev)), alpha)`` and the discriminator's features
after the new block are ``lerp(from_rgb_prev(pool2(x)), block(from_rgb_new(x)), alpha)``; at
``alpha = 0`` both compute exactly the previous stage's function, so growing never changes what
the networks do at the moment it happens. Blocks above the current stage are not run, so they get
no gradients: Adam skips them and the EMA keeps them at their initial values until they enter.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import Tensor


class Growing:
    """Mixin for an ``nn.Module``: the stage state, set by the trainer before every step.

    The forward pass branches only on the stage and on whether a fade is under way (a bool), and
    blends with the 0-d buffer ``fade_weight``: under ``torch.compile`` a new alpha each step is
    then a new input value, not a new constant to specialise on, so the fade does not recompile.
    """

    stage_resolutions: tuple[int, ...] = ()
    stage_resolution: int = 0
    alpha: float = 1.0
    _fading: bool = False
    fade_weight: Tensor

    def init_growing(self, resolutions: Iterable[int], final: int) -> None:
        self.stage_resolutions = tuple(sorted(set(resolutions)))
        self.stage_resolution, self.alpha, self._fading = final, 1.0, False
        self.register_buffer("fade_weight", torch.ones(()), persistent=False)  # type: ignore[attr-defined]

    @property
    def growing(self) -> bool:
        return len(self.stage_resolutions) > 1

    def set_resolution(self, resolution: int, alpha: float = 1.0) -> None:
        if resolution not in self.stage_resolutions:
            known = ", ".join(map(str, self.stage_resolutions)) or "none: build it with grow=true"
            raise ValueError(f"resolution {resolution} is not one of this network's stages ({known})")
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {alpha}")
        self.stage_resolution, self.alpha = int(resolution), float(alpha)
        self._fading = self.alpha < 1.0 and self.stage_index > 0
        with torch.no_grad():
            self.fade_weight.fill_(self.alpha)

    @property
    def current_resolution(self) -> int:
        return self.stage_resolution

    @property
    def stage_index(self) -> int:
        return self.stage_resolutions.index(self.stage_resolution)

    @property
    def at_final_stage(self) -> bool:
        """The whole network runs, faded in: the plain (non-growing) forward pass applies."""
        return self.stage_resolution == self.stage_resolutions[-1] and not self._fading

    @property
    def fading(self) -> bool:
        """A block is being faded in: the stage is not the first and alpha < 1."""
        return self._fading

    def fade(self, old: Tensor, new: Tensor) -> Tensor:
        """``old`` blended towards ``new`` by the fade weight alpha."""
        return torch.lerp(old, new, self.fade_weight.to(new.dtype))

    def fade_images(self, old_small: Tensor, new: Tensor) -> Tensor:
        """The generator's blend: the previous stage's image, upsampled (nearest), towards the new one."""
        return self.fade(F.interpolate(old_small, scale_factor=2, mode="nearest").to(new.dtype), new)


__all__ = ["Growing"]
