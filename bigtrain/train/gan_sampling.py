"""How a GAN generator is sampled: latents, labels, truncation and the BatchNorm statistics mode.

One object used by both the training task (``task=gan``: grids, FID samples, ``bigtrain sample``)
and the inference model (``bigtrain.load``: a generator without its discriminator or optimizers),
so the same seed gives the same images through either door.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from bigtrain.train.bn_modes import Sampler


class GeneratorSampling:
    """Samples from ``network()`` (the EMA generator, or G without EMA).

    ``version()`` changes whenever the network's weights may have changed (a training step, a load):
    ``eval.g_bn=standing`` statistics are re-estimated only then."""

    def __init__(
        self,
        network: Callable[[], nn.Module],
        *,
        z_dim: int,
        num_classes: int,
        device: torch.device,
        g_bn: str = "running",
        standing_passes: int = 16,
        standing_batch: int = 64,
        seed: int = 0,
        version: Callable[[], int] = lambda: 0,
    ) -> None:
        self.network, self.version = network, version
        self.z_dim, self.num_classes, self.device = int(z_dim), int(num_classes), device
        self.sampler = Sampler(
            g_bn, passes=standing_passes, batch=standing_batch, seed=seed, draw=self.draw_inputs
        )

    def draw_inputs(self, n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Random G inputs for standing statistics: z ~ N(0, I), labels uniform."""
        z = torch.randn(n, self.z_dim, generator=generator).to(self.device)
        if not self.num_classes:
            return z, None
        return z, torch.randint(0, self.num_classes, (n,), generator=generator).to(self.device)

    @torch.no_grad()
    def generate(self, z: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        """The generator on ``z`` and labels ``y`` with the BatchNorm statistics ``eval.g_bn``
        names (see ``bigtrain.train.bn_modes``); images in [-1, 1] on the CPU."""
        source = self.network()
        was_training = source.training
        try:
            G = self.sampler.network(source, self.version())
            return G(z.to(self.device), None if y is None else y.to(self.device)).float().clamp(-1, 1).cpu()
        finally:
            source.train(was_training)

    def grid(self, seed: int, rows: int) -> tuple[torch.Tensor, int]:
        """Fixed z; when conditional, one row per class for the first min(classes, max(rows, 10)) classes, the same z across rows."""
        g = torch.Generator().manual_seed(seed)
        if self.num_classes:
            nrows = min(self.num_classes, max(rows, 10))
            return self.per_class(list(range(nrows)), rows, g), rows
        return self.generate(torch.randn(rows * rows, self.z_dim, generator=g), None), rows

    def sample(
        self, n: int, generator: torch.Generator, *, classes: list[int] | None = None, **options: Any
    ) -> torch.Tensor:
        """``truncation > 0`` redraws |z| > t (the truncation trick, Brock et al. 2019 sec. 3.1).
        Noise is drawn on the generator's device, so FID samples are the same wherever evaluation
        runs."""
        dev = generator.device
        z = truncated_normal(n, self.z_dim, float(options.get("truncation") or 0.0), generator, dev)
        y = None
        if self.num_classes:
            pool = torch.tensor(classes if classes else range(self.num_classes), device=dev)
            y = pool[torch.randint(0, len(pool), (n,), generator=generator, device=dev)]
        return self.generate(z, y)

    def per_class(
        self, classes: list[int], per_class: int, generator: torch.Generator, **options: Any
    ) -> torch.Tensor:
        """A row per class with the same ``per_class`` latents in every row."""
        z = truncated_normal(
            per_class, self.z_dim, float(options.get("truncation") or 0.0), generator, generator.device
        )
        return self.generate(z.repeat(len(classes), 1), torch.tensor(classes).repeat_interleave(per_class))

    def for_labels(self, labels: torch.Tensor, generator: torch.Generator, **options: Any) -> torch.Tensor:
        z = truncated_normal(
            len(labels), self.z_dim, float(options.get("truncation") or 0.0), generator, generator.device
        )
        return self.generate(z, labels if self.num_classes else None)

    def interpolate(self, rows: int, steps: int, generator: torch.Generator) -> torch.Tensor:
        """Straight lines in z between two random points per row (Radford et al. 2016, sec. 6.1)."""
        ends = torch.randn(rows, 2, self.z_dim, generator=generator)
        t = torch.linspace(0, 1, steps).view(1, -1, 1)
        z = (ends[:, :1] * (1 - t) + ends[:, 1:] * t).reshape(-1, self.z_dim)
        y = None
        if self.num_classes:
            y = torch.randint(0, self.num_classes, (rows,), generator=generator).repeat_interleave(steps)
        return self.generate(z, y)


def truncated_normal(
    n: int, dim: int, truncation: float, generator: torch.Generator, device: torch.device
) -> torch.Tensor:
    """N(0, I) samples; with ``truncation > 0`` every entry with |z| > truncation is redrawn."""
    z = torch.randn(n, dim, generator=generator, device=device)
    if truncation > 0:
        for _ in range(1000):
            bad = z.abs() > truncation
            if not bad.any():
                break
            z[bad] = torch.randn(int(bad.sum()), generator=generator, device=device)
    return z


__all__ = ["GeneratorSampling", "truncated_normal"]
