"""Which BatchNorm statistics a generator samples with (``eval.g_bn`` of ``task=gan``).

A generator with BatchNorm can be sampled three ways, and FID depends on the choice:

* ``running``: eval mode, the stored running statistics (BigGAN-PyTorch's ``--G_eval_mode``; with
  an EMA generator they are the live G's or their average, see ``ema.buffers``).
* ``batch``: train mode, every sampling batch normalised by its own statistics: what
  BigGAN-PyTorch does without ``--G_eval_mode``, and so its CIFAR protocol
  (``scripts/launch_cifar_ema.sh``). The result depends on the sampling batch size.
* ``standing``: "standing statistics" (BigGAN-PyTorch's ``--accumulate_stats``,
  ``--num_standing_accumulations 16``): the statistics are re-estimated as the plain average over
  ``passes`` forward passes of ``batch`` random samples in train mode, then G samples in eval mode.

Both train-mode choices run on a private copy of the generator, refreshed from it before use, so
the EMA generator's checkpointed buffers (and its spectral-norm vectors, which a train-mode forward
moves) never change by sampling, and the same call gives the same images whatever was sampled
before. The copy's cross-replica BN layers use the sampling rank's batch only.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from bigtrain.distributed.sync_bn import set_local_bn

G_BN_MODES = ("running", "batch", "standing")

# (z, labels or None) of one batch of random inputs, from a seeded generator
DrawInputs = Callable[[int, torch.Generator], tuple[torch.Tensor, torch.Tensor | None]]


class Sampler:
    """The network to sample from under one of :data:`G_BN_MODES`; :meth:`network` is called before
    each sampling batch with the source network (the EMA generator, or G without EMA)."""

    def __init__(
        self, mode: str, *, passes: int = 16, batch: int = 64, seed: int = 0, draw: DrawInputs | None = None
    ):
        if mode not in G_BN_MODES:
            raise ValueError(f"eval.g_bn must be one of {', '.join(G_BN_MODES)}, got {mode!r}")
        if mode == "standing" and (passes < 1 or batch < 1 or draw is None):
            raise ValueError("standing statistics need passes >= 1, batch >= 1 and an input sampler")
        self.mode, self.passes, self.batch, self.seed, self.draw = mode, passes, batch, seed, draw
        self._copy: nn.Module | None = None
        self._standing_of: int | None = None  # the version the standing statistics were estimated at

    def _refresh(self, source: nn.Module) -> nn.Module:
        if self._copy is None:
            self._copy = set_local_bn(copy.deepcopy(source)).requires_grad_(False)
        with torch.no_grad():
            for mine, theirs in zip(
                self._copy.state_dict().values(), source.state_dict().values(), strict=True
            ):
                mine.copy_(theirs)
        return self._copy

    def network(self, source: nn.Module, version: int) -> nn.Module:
        """The module to call, in the mode it must run in. ``version`` changes whenever the source's
        weights may have (the training step): standing statistics are re-estimated only then."""
        if self.mode == "running":
            return source.eval()
        if self.mode == "batch":
            return self._refresh(source).train()
        if self._standing_of != version or self._copy is None:
            self._estimate(self._refresh(source))
            self._standing_of = version
        assert self._copy is not None
        return self._copy.eval()

    @torch.no_grad()
    def _estimate(self, net: nn.Module) -> None:
        """Reset every BN layer's statistics, then average them over ``passes`` train-mode batches
        (momentum None: PyTorch's cumulative average, i.e. the reference's sum / count)."""
        norms = [m for m in net.modules() if isinstance(m, _BatchNorm) and m.track_running_stats]
        for m in norms:
            m.reset_running_stats()
            m.momentum = None
        assert self.draw is not None
        g = torch.Generator().manual_seed(self.seed)
        net.train()
        for _ in range(self.passes):
            z, y = self.draw(self.batch, g)
            net(z, y)
        net.eval()


__all__ = ["G_BN_MODES", "Sampler"]
