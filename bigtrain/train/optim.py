"""Optimizers from the ``optim.<name>`` config blocks, and the learning-rate schedule
(``optim.schedule``), shared by every task.

The schedule is a pure function of the step: each task sets its optimizers' learning rates from it
before the update (``OptimizerStep.schedule``), so a resumed run needs no scheduler state to continue
the curve exactly."""

from __future__ import annotations

import math
from typing import Any

import torch


def build_optimizer(params: Any, c: Any) -> torch.optim.Optimizer:
    """The optimizer an ``optim.<name>`` block names (``name``: adam, the default, or rmsprop)."""
    name = str(getattr(c, "name", "adam"))
    fused = bool(getattr(c, "fused", False))
    if fused and name != "adam":
        raise ValueError(f"optim fused=true is Adam's fused kernel; {name} has none (set fused=false)")
    if name == "rmsprop":
        return torch.optim.RMSprop(params, lr=c.lr, alpha=c.alpha, eps=c.eps, weight_decay=c.weight_decay)
    if name != "adam":
        raise ValueError(f"unknown optimizer {name!r}; choose adam or rmsprop")
    return torch.optim.Adam(
        params, lr=c.lr, betas=tuple(c.betas), eps=c.eps, weight_decay=c.weight_decay, fused=fused or None
    )


def lr_factor(step: int, schedule: Any, max_steps: int) -> float:
    """The multiplier of the base learning rate at ``step`` (1-based): linear warm-up over
    ``warmup_steps``, then constant, cosine or linear decay to ``min_lr_ratio`` at ``max_steps``
    (held until ``decay_start`` when that is later than the warm-up)."""
    warm = int(schedule.warmup_steps)
    if warm > 0 and step <= warm:
        return step / warm
    name = str(schedule.name)
    if name == "constant":
        return 1.0
    start = max(warm, int(schedule.get("decay_start", 0) or 0))
    progress = min(1.0, max(0.0, (step - start) / max(1, max_steps - start)))
    floor = float(schedule.min_lr_ratio)
    shape = 0.5 * (1.0 + math.cos(math.pi * progress)) if name == "cosine" else 1.0 - progress
    return floor + (1.0 - floor) * shape


__all__ = ["build_optimizer", "lr_factor"]
