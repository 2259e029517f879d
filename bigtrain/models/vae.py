"""A convolutional variational autoencoder (Kingma & Welling 2014) as a ``density`` family, with
the importance-weighted bound of Burda, Grosse & Salakhutdinov 2016 for evaluation.

**The model.** A latent ``z ~ N(0, I)`` of ``latent_dim`` numbers and a decoder ``p(x|z)`` that is
independent per sub-pixel given ``z``. ``log p(x)`` has no closed form, so an encoder ``q(z|x)``
(a diagonal Gaussian) is trained with the decoder to maximise the evidence lower bound

    ELBO = E_q[log p(x|z)] - KL(q(z|x) || p(z)) <= log p(x).

Training minimises ``rec + kl_weight * kl`` (:meth:`VAE.objective`) with one reparameterised
sample ``z = mu + sigma * eps``; ``kl_weight`` (beta, KL warm-up) is the task's business, not the
architecture's. With ``kl_weight != 1`` the loss is no longer a bound, which is why evaluation
(:meth:`VAE.bounds`) always reports the negative ELBO at weight 1 and, with K samples, the
negative importance-weighted bound ``-log (1/K) sum_k p(x, z_k) / q(z_k|x)``: never looser than
the ELBO in expectation, and tending to ``-log p(x)`` as K grows, so it is the number to compare
with an autoregressive model's exact NLL.

**The decoder's likelihood** (``model.arch.likelihood``), a probability mass over each
sub-pixel's levels so that its negative log is a code length (``bigtrain.models.density``):

* ``bernoulli`` for binarised images (``levels=2``): one logit per sub-pixel;
* ``logistic``: a logistic in [-1, 1] discretised into the ``levels`` bins, the edge bins taking
  the tails (Salimans et al. 2017);
* ``gaussian``: the same with a Normal, i.e. the Normal CDF integrated over each bin. Not the
  Gaussian *density* of many VAE implementations, whose log is not a code length (it grows
  without bound as the variance shrinks on constant pixels such as MNIST's background); here
  every mass is at most 1.

The two location-scale likelihoods take a log-scale either from the decoder, one per sub-pixel
(``scale=pixel``: sharp where the image is predictable from ``z``), or as one learned constant per
channel (``scale=channel``: the classic fixed-variance decoder with the variance learned).

**Architecture.** The encoder is a 3x3 stem and ``depth`` stride-2 4x4 convolutions (channels
doubling, at most ``8 * width``) with SiLU, flattened to a linear head giving ``mu`` and
``log sigma^2``; the decoder mirrors it with transposed convolutions. There is no normalisation
layer, so an image's bound does not depend on the other images of its batch. With classes the
model is a conditional VAE (Sohn et al. 2015): a learned class embedding is concatenated to the
encoder's flat features and to ``z``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from bigtrain.config.typed import option
from bigtrain.models.common import check_labels
from bigtrain.models.density import (
    DensityShape,
    LatentDensityModel,
    discretized_logistic_log_prob,
    to_unit,
)
from bigtrain.models.registry import register_model

LIKELIHOODS = ("auto", "bernoulli", "logistic", "gaussian")
SCALES = ("pixel", "channel")
MIN_LOG_SCALE = -7.0
"""The smallest log-scale a location-scale decoder may use (the logistic helper's clamp): a scale of
about 1e-3, an eighth of an 8-bit bin, already puts nearly all of a bin's mass in it."""
_LOG_2PI = math.log(2.0 * math.pi)


@dataclass
class VAEArch:
    latent_dim: int = option(32, "size of the latent z (a diagonal Gaussian q(z|x), prior N(0, I))")
    width: int = option(
        32, "channels after the encoder's stem; each stride-2 stage doubles them (at most 8x)"
    )
    depth: int | None = option(
        None, "stride-2 stages (default: halve while the side stays even and >= 4: 32->4, 28->7)"
    )
    likelihood: str = option(
        "auto", "p(x|z): bernoulli (levels=2), logistic or gaussian (discretised); auto picks by levels"
    )
    scale: str = option(
        "pixel", "logistic/gaussian log-scale: pixel (decoded per sub-pixel) or channel (learned)"
    )


def default_depth(resolution: int) -> int:
    """Halvings while the side is even and its half at least 4 (32 -> 4x4 in 3, 28 -> 7x7 in 2):
    small enough that the flat features stay a few thousand numbers, large enough
    that the decoder's first map still has spatial structure."""
    depth = 0
    while resolution % 2 == 0 and resolution // 2 >= 4:
        resolution //= 2
        depth += 1
    return depth


def gaussian_kl(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, exp(logvar)) || N(0, I)) per row ``[B]`` in nats, in closed form (Kingma & Welling
    2014, appendix B): lower variance than any sampled estimate."""
    return 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar).sum(dim=-1)


def discretized_gaussian_log_prob(
    x: torch.Tensor, mean: torch.Tensor, log_scale: torch.Tensor, levels: int
) -> torch.Tensor:
    """log P(x) per sub-pixel under a Normal of ``mean`` and ``exp(log_scale)`` in [-1, 1] discretised
    into ``levels`` bins: the Normal's mass over each bin, the edge bins taking the tails, so the
    masses sum to one. All arguments broadcast to ``x``'s shape.

    A bin's mass is a difference of CDFs, which cancels badly far from the mean, so it is taken
    in whichever tail the bin lies (``Phi(b) - Phi(a)`` or ``Phi(-a) - Phi(-b)``) from log-CDFs.
    Where the bin holds under 1% of the tail beyond it (a bin much narrower than the scale) the
    difference of logs loses precision too, and the midpoint rule (density times width, relative
    error below 1e-5 there) is used instead."""
    dtype = torch.float64 if mean.dtype == torch.float64 else torch.float32
    half = 1.0 / (levels - 1)
    centre = to_unit(x, levels).to(dtype)
    ls = log_scale.to(dtype).clamp(min=MIN_LOG_SCALE)
    inv = torch.exp(-ls)
    m = mean.to(dtype)
    a = (centre - half - m) * inv  # the bin's edges, standardised
    b = (centre + half - m) * inv
    upper = (a + b) > 0  # the bin lies above the mean: use the upper tail
    big = torch.where(upper, torch.special.log_ndtr(-a), torch.special.log_ndtr(b))
    small = torch.where(upper, torch.special.log_ndtr(-b), torch.special.log_ndtr(a))
    frac = -torch.expm1(small - big)  # the bin's share of the tail beyond its inner edge
    inner = big + torch.log(frac.clamp(min=1e-30))
    z = (centre - m) * inv
    midpoint = -0.5 * z.pow(2) - 0.5 * _LOG_2PI - ls + math.log(2.0 * half)
    inner = torch.where(frac > 1e-2, inner, midpoint)
    lowest = torch.special.log_ndtr(b)  # P(X <= the first bin's upper edge)
    highest = torch.special.log_ndtr(-a)  # P(X > the last bin's lower edge)
    return torch.where(x <= 0, lowest, torch.where(x >= levels - 1, highest, inner))


def _to_levels(v: torch.Tensor, levels: int) -> torch.Tensor:
    """A real value in [-1, 1] units -> the level whose bin holds it (values beyond the range fall
    in the edge bins, as the edge bins' masses include the tails)."""
    return ((v.clamp(-1.0, 1.0) + 1.0) * ((levels - 1) / 2.0)).round().long()


def _at_least_f32(t: torch.Tensor) -> torch.Tensor:
    """``t`` in float32, or float64 if it is: under mixed precision the latent's log-densities and
    the per-image sums of log-likelihoods (hundreds of nats, compared to a fraction of one) would
    lose their digits in bfloat16."""
    return t if t.dtype == torch.float64 else t.float()


class VAE(LatentDensityModel):
    """Convolutional (conditional) VAE over images of :class:`DensityShape` (module docstring).

    The decoder's parameters (:meth:`decode`) are one tensor ``[B, P, C, H, W]``: ``P = 1`` (the
    Bernoulli logits) or ``P = 2`` (location in [-1, 1] units, log-scale; with ``scale=channel``
    the learned per-channel log-scale broadcast over pixels), so :meth:`log_px` needs nothing else."""

    exact = False

    eval_chunk: int = 2048
    """Most images (batch x samples) decoded at once by :meth:`bounds`: K importance samples of a
    whole batch would otherwise multiply the decoder's activations by K."""

    def __init__(self, shape: DensityShape, arch: VAEArch | None = None) -> None:
        super().__init__()
        arch = arch or VAEArch()
        likelihood = arch.likelihood
        if likelihood not in LIKELIHOODS:
            raise ValueError(f"unknown VAE likelihood {likelihood!r}; choose one of {', '.join(LIKELIHOODS)}")
        if likelihood == "auto":
            likelihood = "bernoulli" if shape.levels == 2 else "logistic"
        if likelihood == "bernoulli" and shape.levels != 2:
            raise ValueError(
                f"VAE likelihood 'bernoulli' needs binarised data (levels=2), got levels={shape.levels}; "
                "use logistic or gaussian"
            )
        if likelihood != "bernoulli" and shape.levels <= 2:
            raise ValueError(
                f"VAE likelihood {likelihood!r} needs more than 2 levels (8-bit data), got "
                f"levels={shape.levels}; use bernoulli for binarised data"
            )
        if arch.scale not in SCALES:
            raise ValueError(f"unknown VAE scale {arch.scale!r}; choose one of {', '.join(SCALES)}")
        if arch.latent_dim <= 0 or arch.width <= 0:
            raise ValueError(
                f"VAE latent_dim and width must be positive, got latent_dim={arch.latent_dim}, width={arch.width}"
            )
        depth = default_depth(shape.resolution) if arch.depth is None else arch.depth
        if depth < 0 or shape.resolution % (2**depth) != 0:
            raise ValueError(
                f"VAE depth must be >= 0 with resolution divisible by 2**depth, got depth={depth} "
                f"for resolution {shape.resolution}"
            )
        self.shape = shape
        self.latent_dim = arch.latent_dim
        self.likelihood = likelihood
        self.scale = arch.scale
        self.depth = depth
        c, k = shape.channels, shape.num_classes
        chans = [arch.width * min(2**i, 8) for i in range(depth + 1)]
        self.bottom = shape.resolution // 2**depth  # the smallest map's side
        flat = chans[-1] * self.bottom**2

        enc: list[nn.Module] = [nn.Conv2d(c, chans[0], 3, padding=1), nn.SiLU()]
        for cin, cout in zip(chans[:-1], chans[1:], strict=True):
            enc += [nn.Conv2d(cin, cout, 4, stride=2, padding=1), nn.SiLU()]
        self.encoder = nn.Sequential(*enc, nn.Flatten())
        # the class embeddings have z's size, so y weighs about as much as z does in both heads
        self.enc_embed = nn.Embedding(k, arch.latent_dim) if k > 0 else None
        self.dec_embed = nn.Embedding(k, arch.latent_dim) if k > 0 else None
        cond = arch.latent_dim if k > 0 else 0
        self.to_posterior = nn.Linear(flat + cond, 2 * arch.latent_dim)

        self.from_latent = nn.Linear(arch.latent_dim + cond, flat)
        dec: list[nn.Module] = [nn.SiLU()]
        for cin, cout in zip(chans[:0:-1], chans[-2::-1], strict=True):
            dec += [nn.ConvTranspose2d(cin, cout, 4, stride=2, padding=1), nn.SiLU()]
        self.params_per_subpixel = 1 if likelihood == "bernoulli" or arch.scale == "channel" else 2
        dec.append(nn.Conv2d(chans[0], c * self.params_per_subpixel, 3, padding=1))
        self.decoder = nn.Sequential(*dec)
        self.channel_log_scale = (
            nn.Parameter(torch.zeros(c)) if likelihood != "bernoulli" and arch.scale == "channel" else None
        )

    # --- the two networks ---

    def encode(self, x: torch.Tensor, y: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Levels ``[B, C, H, W]`` -> q(z|x)'s ``mu`` and ``logvar`` (``log sigma^2``), each ``[B, latent_dim]``."""
        s = self.shape
        if tuple(x.shape[1:]) != (s.channels, s.resolution, s.resolution):
            raise ValueError(
                f"VAE expects images [B, {s.channels}, {s.resolution}, {s.resolution}], got {list(x.shape)}"
            )
        h = self.encoder(to_unit(x, s.levels).to(self.to_posterior.weight.dtype))
        y = check_labels(y, s.num_classes, x.shape[0])
        if self.enc_embed is not None and y is not None:
            h = torch.cat([h, self.enc_embed(y)], dim=1)
        mu, logvar = _at_least_f32(self.to_posterior(h)).chunk(2, dim=1)
        return mu, logvar

    def decode(self, z: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        """Latents ``[B, latent_dim]`` -> p(x|z)'s parameters ``[B, P, C, H, W]`` (class docstring)."""
        y = check_labels(y, self.shape.num_classes, z.shape[0])
        if self.dec_embed is not None and y is not None:
            z = torch.cat([z, self.dec_embed(y)], dim=1)
        h = self.from_latent(z).view(z.shape[0], -1, self.bottom, self.bottom)
        s = self.shape
        out = self.decoder(h).view(
            z.shape[0], self.params_per_subpixel, s.channels, s.resolution, s.resolution
        )
        if self.channel_log_scale is not None:
            log_scale = self.channel_log_scale.view(1, 1, -1, 1, 1).expand_as(out)
            out = torch.cat([out, log_scale], dim=1)
        return out

    # --- the decoder's likelihood ---

    def log_prob_subpixels(self, x: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        """log p(x|z) per sub-pixel ``[B, C, H, W]`` (nats) from :meth:`decode`'s ``params``."""
        if self.likelihood == "bernoulli":
            logits = _at_least_f32(params[:, 0])
            return -F.binary_cross_entropy_with_logits(logits, x.to(logits.dtype), reduction="none")
        loc, log_scale = params[:, 0], params[:, 1]
        if self.likelihood == "logistic":
            return discretized_logistic_log_prob(x, loc, log_scale, self.shape.levels)
        return discretized_gaussian_log_prob(x, loc, log_scale, self.shape.levels)

    def log_px(self, x: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        """log p(x|z) per image ``[B]`` in nats: the sub-pixels are independent given z."""
        return self.log_prob_subpixels(x, params).flatten(1).sum(1)

    def mean_image(self, z: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        """The decoder's mean as float images ``[B, C, H, W]`` in [-1, 1]: a Bernoulli's probability
        mapped to [-1, 1], or the logistic/Gaussian location clamped to it (the level it rounds to
        is the most likely one). Smooth pictures for reconstructions, interpolation and latent
        arithmetic; not a draw from the model (:meth:`sample` is)."""
        params = self.decode(z, y)
        if self.likelihood == "bernoulli":
            return torch.sigmoid(params[:, 0]) * 2.0 - 1.0
        return params[:, 0].clamp(-1.0, 1.0)

    def draw(self, params: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """One draw of levels ``[B, C, H, W]`` from p(x|z) given :meth:`decode`'s ``params``."""
        levels = self.shape.levels
        first = params[:, 0].float()
        if self.likelihood == "bernoulli":
            u = torch.rand(first.shape, generator=generator, device=first.device)
            return (u < torch.sigmoid(first)).long()
        scale = params[:, 1].float().clamp(min=MIN_LOG_SCALE).exp()
        if self.likelihood == "logistic":
            u = torch.rand(first.shape, generator=generator, device=first.device).clamp(1e-6, 1.0 - 1e-6)
            noise = torch.log(u) - torch.log1p(-u)  # the standard logistic's inverse CDF
        else:
            noise = torch.randn(first.shape, generator=generator, device=first.device)
        return _to_levels(first + scale * noise, levels)

    # --- the latent ---

    def reparameterize(
        self, mu: torch.Tensor, logvar: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """``z = mu + sigma * eps``, so gradients reach ``mu`` and ``logvar`` through a fixed ``eps``;
        ``eps`` from ``generator`` (evaluation) or the global RNG (training, seeded by the loop)."""
        eps = torch.randn(mu.shape, generator=generator, device=mu.device, dtype=mu.dtype)
        return mu + torch.exp(0.5 * logvar) * eps

    def _prior(self, n: int, generator: torch.Generator) -> torch.Tensor:
        device = self.to_posterior.weight.device
        dtype = self.to_posterior.weight.dtype
        return torch.randn(n, self.latent_dim, generator=generator, device=device, dtype=dtype)

    # --- the DensityModel contract ---

    def objective(
        self, x: torch.Tensor, y: torch.Tensor | None, *, kl_weight: float = 1.0
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``rec + kl_weight * kl`` per image in nats ``[B]``: ``rec = -log p(x|z)`` for one
        reparameterised ``z`` (global RNG), ``kl`` the closed-form KL(q(z|x) || N(0, I))."""
        mu, logvar = self.encode(x, y)
        z = self.reparameterize(mu, logvar)
        rec = -self.log_px(x, self.decode(z, y))
        kl = gaussian_kl(mu, logvar)
        return rec + kl_weight * kl, {"rec": rec, "kl": kl}

    def log_weights(
        self,
        x: torch.Tensor,
        y: torch.Tensor | None,
        samples: int,
        *,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Importance weights of ``samples`` K draws ``z_k ~ q(z|x)``: ``log p(x|z_k) + log p(z_k) -
        log q(z_k|x)`` and ``log p(x|z_k)``, each ``[B, K]``.

        ``eps`` is drawn as one ``[K, B, latent_dim]`` tensor from ``generator`` (so draw ``k`` of
        image ``b`` does not depend on the chunking, and K=1 is :meth:`reparameterize`'s draw), and
        the K x B images are decoded :attr:`eval_chunk` at a time."""
        mu, logvar = self.encode(x, y)
        return self._log_weights(x, y, mu, logvar, samples, generator)

    def _log_weights(
        self,
        x: torch.Tensor,
        y: torch.Tensor | None,
        mu: torch.Tensor,
        logvar: torch.Tensor,
        samples: int,
        generator: torch.Generator | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if samples < 1:
            raise ValueError(f"need at least one importance sample, got {samples}")
        b = x.shape[0]
        std = torch.exp(0.5 * logvar)
        eps = torch.randn((samples, *mu.shape), generator=generator, device=mu.device, dtype=mu.dtype)
        # log q(z|x) and log p(z) at z = mu + std * eps, without the log(2 pi) terms that cancel
        log_q = -0.5 * (eps.pow(2) + logvar).sum(-1)  # [K, B]
        per_chunk = max(1, self.eval_chunk // max(b, 1))
        log_pxz, log_w = [], []
        for k0 in range(0, samples, per_chunk):
            k1 = min(samples, k0 + per_chunk)
            z = mu + std * eps[k0:k1]  # [k, B, latent]
            yk = None if y is None else y.repeat(k1 - k0)
            xk = x.repeat(k1 - k0, 1, 1, 1)
            lp = self.log_px(xk, self.decode(z.reshape(-1, self.latent_dim), yk)).view(k1 - k0, b)
            log_pxz.append(lp)
            log_w.append(lp - 0.5 * z.pow(2).sum(-1) - log_q[k0:k1])
        return torch.cat(log_w).T, torch.cat(log_pxz).T

    @torch.no_grad()
    def bounds(
        self,
        x: torch.Tensor,
        y: torch.Tensor | None,
        *,
        generator: torch.Generator | None = None,
        iw_samples: int = 0,
    ) -> dict[str, torch.Tensor]:
        """Per image ``[B]``, nats: ``elbo`` (the negative ELBO: ``-log p(x|z)`` averaged over the K
        samples plus the closed-form KL) and, with ``iw_samples`` K > 1, ``iw`` =
        ``-log (1/K) sum_k w_k`` over the same samples. Evaluation only (no gradients): train with
        :meth:`objective`.

        The ELBO uses the exact KL rather than the samples' ``log q - log p``, so it has less
        variance; the IW bound is therefore tighter than it in expectation, not draw by draw
        (draw by draw it is tighter than the sampled ELBO, ``-mean_k log w_k``, by Jensen), and
        for an encoder that has learnt nothing (q = prior) the two agree up to that noise."""
        k = max(1, iw_samples)
        mu, logvar = self.encode(x, y)
        log_w, log_pxz = self._log_weights(x, y, mu, logvar, k, generator)
        out = {"elbo": -log_pxz.mean(1) + gaussian_kl(mu, logvar)}
        if iw_samples > 1:
            out["iw"] = -(torch.logsumexp(log_w, dim=1) - math.log(k))
        return out

    @torch.no_grad()
    def sample(self, n: int, labels: torch.Tensor | None, generator: torch.Generator) -> torch.Tensor:
        """``n`` images as levels ``[n, C, H, W]``: ``z ~ N(0, I)``, then a draw from p(x|z), both
        from ``generator``. These are the model's samples, noise included (speckled for a
        per-pixel likelihood); :meth:`sample_mean` shows the decoder's mean instead."""
        return self.draw(self.decode(self._prior(n, generator), labels), generator)

    @torch.no_grad()
    def sample_mean(self, n: int, labels: torch.Tensor | None, generator: torch.Generator) -> torch.Tensor:
        """``n`` float images ``[n, C, H, W]`` in [-1, 1]: the decoder's mean at ``z ~ N(0, I)``
        (:meth:`mean_image`). Nicer pictures than :meth:`sample`, but not draws from p(x): they
        leave out the pixel noise the likelihood is scored with."""
        return self.mean_image(self._prior(n, generator), labels)


@register_model(
    "vae",
    kind="density",
    arch=VAEArch,
    help="Kingma & Welling 2014 conv VAE (conditional with classes); ELBO and IW bound (Burda et al. 2016)",
)
def build_vae(shape: DensityShape, arch: VAEArch) -> VAE:
    """A convolutional VAE over ``shape``'s images with ``arch``'s options."""
    return VAE(shape, arch)


__all__ = [
    "LIKELIHOODS",
    "SCALES",
    "VAE",
    "VAEArch",
    "build_vae",
    "default_depth",
    "discretized_gaussian_log_prob",
    "gaussian_kl",
]
