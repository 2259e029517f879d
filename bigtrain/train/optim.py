"""Optimizers from the ``optim.g`` / ``optim.d`` config blocks, and the learning-rate schedule
(``optim.schedule``), shared by every task.

The schedule is a pure function of the step: each task sets its optimizers' learning rates from it
before the update, so a resumed run needs no scheduler state to continue the curve exactly."""

from __future__ import annotations

from typing import Any

import torch
from omegaconf import DictConfig


def adam(params: Any, c: DictConfig) -> torch.optim.Adam:
    return torch.optim.Adam(params, lr=c.lr, betas=tuple(c.betas), eps=c.eps, weight_decay=c.weight_decay)


def apply_hparams(opt: torch.optim.Optimizer, c: DictConfig) -> None:
    """After loading an optimizer's state, the config's hyper-parameters win over the saved ones,
    so a resumed run can lower its learning rate (PyTorch would silently restore the old one)."""
    for group in opt.param_groups:
        group.update(lr=c.lr, betas=tuple(c.betas), eps=c.eps, weight_decay=c.weight_decay)


def lr_factor(step: int, schedule: DictConfig, max_steps: int) -> float:
    """The multiplier of the base learning rate at ``step`` (1-based): linear warm-up over
    ``warmup_steps``, then constant, cosine or linear decay to ``min_lr_ratio`` at ``max_steps``."""
    import math

    warm = int(schedule.warmup_steps)
    if warm > 0 and step <= warm:
        return step / warm
    name = str(schedule.name)
    if name == "constant":
        return 1.0
    progress = min(1.0, max(0.0, (step - warm) / max(1, max_steps - warm)))
    floor = float(schedule.min_lr_ratio)
    shape = 0.5 * (1.0 + math.cos(math.pi * progress)) if name == "cosine" else 1.0 - progress
    return floor + (1.0 - floor) * shape


def set_lr(opt: Any, c: DictConfig, factor: float, base: float | None = None) -> float:
    """Every parameter group of ``opt`` (a torch or DeepSpeed optimizer) at ``c.lr * factor``
    (``base * factor`` when a resolution stage sets its own rate)."""
    lr = float(c.lr if base is None else base) * factor
    for group in opt.param_groups:
        group["lr"] = lr
    return lr


__all__ = ["adam", "apply_hparams", "lr_factor", "set_lr"]
