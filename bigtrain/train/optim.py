"""Optimizers from the ``optim.g`` / ``optim.d`` config blocks, shared by every task."""

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


__all__ = ["adam", "apply_hparams"]
