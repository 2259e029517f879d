"""Exponential moving average of a network's weights (the "EMA generator").

Before ``start_step`` the EMA copy simply follows the live weights (early weights are poor, so
averaging them in only delays a useful EMA); after it, each update is
``ema <- d * ema + (1 - d) * w`` with ``d = min(decay, (1 + n) / (10 + n))`` during the warm-up
(``n`` = updates since the start), the ramp TensorFlow's ExponentialMovingAverage uses with
``num_updates``, so the average is not dominated by its first snapshot.

Buffers (BatchNorm running statistics, spectral-norm vectors) are, with ``buffers="copy"``, the
live network's: the averaged weights are then normalised with statistics of the current weights.
With ``buffers="average"`` they are averaged with the same decay as the weights, which is what
BigGAN-PyTorch's ``utils.ema`` does (it averages the whole state dict); integer buffers (BatchNorm's
step counter) are copied either way.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn


@dataclass
class EMAConfig:
    """``ema.*`` of the tasks that keep an EMA copy of a network (the GAN's generator)."""

    enabled: bool = True
    decay: float = 0.999
    start_step: int = 0  # the EMA copy follows the live weights until this step
    warmup: bool = True  # TensorFlow's num_updates ramp of the decay
    # BatchNorm statistics and other buffers: "copy" the live G's every step, or "average" them with
    # the weights' decay (BigGAN-PyTorch's whole-state-dict EMA; the BigGAN presets)
    buffers: str = "copy"


EMA_BUFFERS = ("copy", "average")


class EMA:
    def __init__(
        self,
        model: nn.Module,
        decay: float = 0.999,
        start_step: int = 0,
        warmup: bool = True,
        buffers: str = "copy",
    ):
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"ema.decay must be in [0, 1), got {decay}")
        if buffers not in EMA_BUFFERS:
            raise ValueError(f"ema.buffers must be one of {', '.join(EMA_BUFFERS)}, got {buffers!r}")
        self.decay, self.start_step, self.warmup, self.buffers = decay, start_step, warmup, buffers
        self.model = copy.deepcopy(model).eval().requires_grad_(False)

    def current_decay(self, step: int) -> float:
        if step < self.start_step:
            return 0.0
        if not self.warmup:
            return self.decay
        n = step - self.start_step
        return min(self.decay, (1.0 + n) / (10.0 + n))

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        """One EMA step over every parameter and buffer, with one foreach kernel per kind of update
        (``torch._foreach_lerp_`` / ``_foreach_copy_``) rather than two kernels per tensor: BigGAN's
        G has hundreds of tensors, and on a GPU the launches, not the arithmetic, were the cost. The
        foreach kernels compute each element exactly as the per-tensor ``lerp_``/``copy_`` do."""
        d = self.current_decay(step)
        live = [p.detach() for p in model.parameters()]
        mine = list(self.model.parameters())
        if len(live) != len(mine):
            raise ValueError(f"EMA of {len(mine)} parameters updated from a network with {len(live)}")
        self._apply(mine, live, lerp=d > 0.0, weight=1.0 - d)
        average = self.buffers == "average" and d > 0.0
        ebufs, lbufs = list(self.model.buffers()), list(model.buffers())
        if len(ebufs) != len(lbufs):
            raise ValueError(f"EMA of {len(ebufs)} buffers updated from a network with {len(lbufs)}")
        floats = [i for i, e in enumerate(ebufs) if average and e.is_floating_point()]
        rest = sorted(set(range(len(ebufs))) - set(floats))
        self._apply([ebufs[i] for i in floats], [lbufs[i] for i in floats], lerp=True, weight=1.0 - d)
        self._apply([ebufs[i] for i in rest], [lbufs[i] for i in rest], lerp=False, weight=0.0)

    @staticmethod
    def _apply(mine: list[torch.Tensor], live: list[torch.Tensor], *, lerp: bool, weight: float) -> None:
        """``mine <- lerp(mine, live, weight)`` (or a copy), grouped by device and dtype as the
        foreach kernels require; a live tensor of another dtype is cast first, as before."""
        if not mine:
            return
        live = [b if b.dtype == e.dtype else b.to(e.dtype) for e, b in zip(mine, live, strict=True)]
        if lerp:
            torch._foreach_lerp_(mine, live, weight)
        else:
            torch._foreach_copy_(mine, live)

    def state_dict(self) -> dict[str, Any]:
        return self.model.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state)
