"""Drawing images from a density model (``task=likelihood``), shared by the task and by
``bigtrain.load`` of its checkpoints and exports, so that a seed gives the same images in both.

A class-conditional model's labels are drawn uniformly from a pool (``--class``, or every class)
with the caller's generator; the images are the model's draws as levels mapped to [-1, 1], or a
latent model's decoder means (``density.vae_samples=mean``: smooth pictures, not draws of p(x))."""

from __future__ import annotations

import torch

from bigtrain.errors import ConfigError
from bigtrain.models.density import DensityModel, LatentDensityModel, to_unit


def draw_labels(
    n: int, num_classes: int, classes: list[int] | None, generator: torch.Generator
) -> torch.Tensor | None:
    """``n`` labels (CPU, long) drawn uniformly from ``classes`` (default: all), or None for an
    unconditional model, which refuses ``classes``."""
    if not num_classes:
        if classes:
            raise ConfigError("the model is unconditional: --class does not apply")
        return None
    pool = torch.tensor(classes if classes else list(range(num_classes)))
    return pool[torch.randint(0, len(pool), (n,), generator=generator, device=generator.device).cpu()]


@torch.no_grad()
def draw_images(
    net: DensityModel,
    n: int,
    labels: torch.Tensor | None,
    generator: torch.Generator,
    *,
    levels: int,
    vae_samples: str = "mean",
    device: torch.device | None = None,
) -> torch.Tensor:
    """``n`` images (one per label when ``labels`` is given) in [-1, 1] on the CPU, from ``net`` in
    eval mode: its draws, or a latent model's decoder means with ``vae_samples="mean"``."""
    y = labels.to(device) if labels is not None and device is not None else labels
    if isinstance(net, LatentDensityModel) and vae_samples == "mean":
        return net.sample_mean(n, y, generator).float().clamp(-1, 1).cpu()
    return to_unit(net.sample(n, y, generator), levels).cpu()


__all__ = ["draw_images", "draw_labels"]
