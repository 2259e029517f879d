"""What every explicit-density model (``kind="density"``: PixelCNN, PixelRNN, the VAE) is and gives.

GANs and the VQ-GAN prior are judged by their samples alone; these families also give a number
for each real image, ``-log p(x)``, which is why the lecture opens with them. They share one task
(``task=likelihood``) through the contract below, and the discrete likelihoods of pixels they
are built from.

**Pixels are discrete.** A model sees an image as integers in ``[0, levels)`` per sub-pixel:
``levels=256`` for 8-bit images, ``levels=2`` for binarised ones (a pixel above 127.5 is 1, the
fixed threshold, so every run and every evaluation sees the same bits). A density over these
values is a probability mass, so its negative log is a code length: nats per image, reported
as bits per dimension ``nats / (C * H * W * ln 2)``. A model that puts mass ``1/levels`` on every
value scores exactly ``log2(levels)`` bits/dim (8 for 8-bit images), the number every model
must beat.

**The contract** (:class:`DensityModel`): ``objective`` (what training minimises, nats per image),
``bounds`` (what evaluation reports: the exact NLL of an autoregressive model, a latent model's
ELBO and importance-weighted bound) and ``sample`` (images as levels). Optional parts, present
when the family has them: ``encode`` / ``decode`` and ``latent_dim`` (a latent space: reconstruction
grids, interpolation, latent arithmetic).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

LN2 = math.log(2.0)


@dataclass(frozen=True)
class DensityShape:
    """What every density family is built from besides its own ``model.arch`` options."""

    resolution: int
    channels: int
    num_classes: int = 0  # 0: unconditional; else class-conditional (a learned bias per class)
    levels: int = 256  # values per sub-pixel: 256 (8-bit) or 2 (binarised)

    @property
    def dims(self) -> int:
        """Sub-pixels per image, the ``D`` of bits per dimension."""
        return self.channels * self.resolution * self.resolution


class DensityModel(nn.Module, ABC):
    """A network with a tractable density (or a bound on it) over images of :class:`DensityShape`.

    ``x`` is always a long tensor ``[B, C, H, W]`` of levels, ``y`` a long tensor ``[B]`` of classes
    or None (unconditional models ignore it). Values per image are in nats, summed over the
    image's ``dims`` sub-pixels."""

    exact: ClassVar[bool] = True
    """True: :meth:`bounds` gives the exact ``nll`` (autoregressive models). False: only bounds
    (a VAE's ``elbo`` and ``iw``)."""

    shape: DensityShape

    @abstractmethod
    def objective(
        self, x: torch.Tensor, y: torch.Tensor | None, *, kl_weight: float = 1.0
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The training loss per image in nats ``[B]`` and its parts, each ``[B]``: the NLL of an
        autoregressive model (parts ``{}``), or a VAE's ``rec + kl_weight * kl`` (parts ``rec``,
        ``kl``; ``kl_weight`` is the warm-up's and beta's product)."""

    @abstractmethod
    def bounds(
        self,
        x: torch.Tensor,
        y: torch.Tensor | None,
        *,
        generator: torch.Generator | None = None,
        iw_samples: int = 0,
    ) -> dict[str, torch.Tensor]:
        """Evaluation's negative log-likelihoods per image in nats ``[B]``, by name: ``nll`` (exact)
        for an autoregressive model; ``elbo`` (the negative ELBO) and, with ``iw_samples`` K > 1,
        ``iw`` (the negative importance-weighted bound with K samples) for a latent model. Latent
        noise comes from ``generator``."""

    @abstractmethod
    def sample(self, n: int, labels: torch.Tensor | None, generator: torch.Generator) -> torch.Tensor:
        """``n`` images as levels ``[n, C, H, W]`` (long, on the model's device), one per label when
        the model is conditional (``labels`` ``[n]``), every random draw from ``generator``."""


class LatentDensityModel(DensityModel):
    """A density model around a latent ``z ~ N(0, I)`` with an encoder q(z|x) and a decoder p(x|z)
    (the VAE): what reconstructions, latent interpolation and latent arithmetic need. The task asks
    ``isinstance`` of this, not whether some attribute happens to exist."""

    latent_dim: int

    @abstractmethod
    def encode(self, x: torch.Tensor, y: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Levels ``[B, C, H, W]`` -> q(z|x)'s mean and log-variance, each ``[B, latent_dim]``."""

    @abstractmethod
    def mean_image(self, z: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        """Latents ``[B, latent_dim]`` -> the decoder's mean as float images in [-1, 1]."""

    @abstractmethod
    def sample_mean(self, n: int, labels: torch.Tensor | None, generator: torch.Generator) -> torch.Tensor:
        """``n`` decoder means at ``z ~ N(0, I)`` drawn from ``generator`` (float images in [-1, 1])."""


def _wide(t: torch.Tensor) -> torch.Tensor:
    """A likelihood is summed over thousands of sub-pixels: half precision is widened to float32
    (bf16 autocast's logits), float64 kept (the exactness tests)."""
    return t if t.dtype == torch.float64 else t.float()


def quantize(x: torch.Tensor, levels: int) -> torch.Tensor:
    """Images in [-1, 1] (``u / 127.5 - 1`` of uint8 ``u``) -> long levels: the uint8 value itself
    for 256 levels; 1 where ``u > 127.5`` for 2 (binarised)."""
    u = ((x.float() + 1.0) * 127.5).round().clamp(0, 255).long()
    if levels == 256:
        return u
    if levels == 2:
        return (u > 127).long()
    raise ValueError(f"levels must be 256 or 2, got {levels}")


PIXEL_LEVELS = {"8bit": 256, "binary": 2}
"""``density.pixels`` -> how many values a sub-pixel takes."""


def levels_from_uint8(u: torch.Tensor, levels: int) -> torch.Tensor:
    """uint8 pixels (a decoded image, ``[B, C, H, W]``) -> long levels, without the float round trip
    through [-1, 1]: exactly :func:`quantize` of ``u / 127.5 - 1`` (tested for all 256 values)."""
    if levels == 256:
        return u.long()
    if levels == 2:
        return (u > 127).long()
    raise ValueError(f"levels must be 256 or 2, got {levels}")


def to_unit(levels_x: torch.Tensor, levels: int) -> torch.Tensor:
    """Levels -> float images in [-1, 1] (0 -> -1, levels-1 -> 1)."""
    return levels_x.float() * (2.0 / (levels - 1)) - 1.0


def bits_per_dim(nats: torch.Tensor | float, dims: int) -> torch.Tensor | float:
    """Nats per image -> bits per sub-pixel."""
    return nats / (dims * LN2)


def categorical_nll(logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``logits`` ``[B, L, C, H, W]`` (a softmax over L levels per sub-pixel), ``x`` ``[B, C, H, W]``
    levels -> nats per image ``[B]``."""
    return F.cross_entropy(_wide(logits), x, reduction="none").flatten(1).sum(1)


def sample_categorical(logits: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """One draw per row of ``logits`` ``[N, L]`` -> ``[N]`` levels."""
    probs = torch.softmax(logits.float(), dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def _bin_edges(x: torch.Tensor, levels: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Each level's bin in [-1, 1] (half a step either side of its centre)."""
    centre = to_unit(x, levels)
    half = 1.0 / (levels - 1)
    return centre - half, centre + half


def discretized_logistic_log_prob(
    x: torch.Tensor, mean: torch.Tensor, log_scale: torch.Tensor, levels: int
) -> torch.Tensor:
    """log P(x) per sub-pixel under a logistic of ``mean`` and ``exp(log_scale)`` in [-1, 1]
    discretised into ``levels`` bins (Salimans et al. 2017, PixelCNN++: the edge bins take the
    tails, so the masses sum to one). All arguments broadcast to ``x``'s shape."""
    lo, hi = _bin_edges(x, levels)
    inv = torch.exp(-_wide(log_scale).clamp(min=-7.0))
    m = _wide(mean)
    cdf_hi = torch.where(x >= levels - 1, torch.ones_like(m), torch.sigmoid((hi - m) * inv))
    cdf_lo = torch.where(x <= 0, torch.zeros_like(m), torch.sigmoid((lo - m) * inv))
    mass = cdf_hi - cdf_lo
    # the mass in log space where it underflows: the density at the centre times the bin width
    centre = to_unit(x, levels)
    z = (centre - m) * inv
    log_density = z - _wide(log_scale).clamp(min=-7.0) - 2.0 * F.softplus(z) + math.log(2.0 / (levels - 1))
    # the edge bins' log-mass in closed form: log sigmoid(t) and log(1 - sigmoid(t))
    log_lo_edge = F.logsigmoid((hi - m) * inv)
    log_hi_edge = -F.softplus((lo - m) * inv)
    inner = torch.where(mass > 1e-5, torch.log(mass.clamp(min=1e-12)), log_density)
    return torch.where(x <= 0, log_lo_edge, torch.where(x >= levels - 1, log_hi_edge, inner))


def discretized_logistic_mixture_log_prob(
    x: torch.Tensor, logit_weights: torch.Tensor, means: torch.Tensor, log_scales: torch.Tensor, levels: int
) -> torch.Tensor:
    """log P(x) per sub-pixel under a mixture of K discretised logistics: ``x`` ``[...]``, the
    others ``[..., K]``."""
    comp = discretized_logistic_log_prob(x.unsqueeze(-1), means, log_scales, levels)
    return torch.logsumexp(comp + F.log_softmax(_wide(logit_weights), dim=-1), dim=-1)


def sample_discretized_logistic_mixture(
    logit_weights: torch.Tensor,
    means: torch.Tensor,
    log_scales: torch.Tensor,
    levels: int,
    generator: torch.Generator,
) -> torch.Tensor:
    """One draw of levels from each mixture (``[..., K]`` parameters -> ``[...]`` long levels)."""
    k = torch.multinomial(
        torch.softmax(logit_weights.float().reshape(-1, logit_weights.shape[-1]), dim=-1),
        1,
        generator=generator,
    ).reshape(logit_weights.shape[:-1] + (1,))
    m = means.float().gather(-1, k).squeeze(-1)
    s = log_scales.float().clamp(min=-7.0).gather(-1, k).squeeze(-1).exp()
    u = torch.rand(m.shape, generator=generator, device=m.device).clamp(1e-5, 1 - 1e-5)
    v = m + s * (torch.log(u) - torch.log1p(-u))  # the logistic's inverse CDF
    return ((v.clamp(-1, 1) + 1.0) * (levels - 1) / 2.0).round().long()


__all__ = [
    "LN2",
    "DensityModel",
    "DensityShape",
    "PIXEL_LEVELS",
    "LatentDensityModel",
    "bits_per_dim",
    "categorical_nll",
    "discretized_logistic_log_prob",
    "discretized_logistic_mixture_log_prob",
    "levels_from_uint8",
    "quantize",
    "sample_categorical",
    "sample_discretized_logistic_mixture",
    "to_unit",
]
