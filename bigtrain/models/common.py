"""Pieces every GAN family shares: the label contract and the projection discriminator's term."""

from __future__ import annotations

from torch import Tensor, nn


def check_labels(y: Tensor | None, num_classes: int, batch: int) -> Tensor | None:
    """Return ``y`` for a conditional model, ``None`` for an unconditional one (which ignores y)."""
    if num_classes <= 0:
        return None
    if y is None:
        raise ValueError(f"this model is class-conditional (num_classes={num_classes}); pass labels y")
    if y.shape != (batch,):
        raise ValueError(f"labels must have shape [{batch}], got {list(y.shape)}")
    return y


def projection(logit: Tensor, embed: nn.Module | None, y: Tensor | None, h: Tensor) -> Tensor:
    """Add the projection discriminator's class term ``yᵀ V φ(x)`` (Miyato & Koyama 2018, eq. 3)."""
    if embed is None or y is None:
        return logit
    return logit + (embed(y) * h).sum(dim=1)
