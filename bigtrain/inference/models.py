"""The three inference objects, each rebuilt from a *description*: a JSON-able dict of what the
network is (``config.json`` of an export) and its weights (``model.safetensors``).

Description keys shared by all kinds: ``kind`` (``generator`` | ``tokenizer`` | ``prior`` | ``density``),
``model`` (``name``, ``arch`` and the kind's shape keys), ``data`` (``resolution``, ``channels``,
``classes``), ``source`` (checkpoint, step) and ``metrics``.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Mapping
from typing import Any, ClassVar

import torch
from torch import nn

from bigtrain.errors import CheckpointError, ConfigError
from bigtrain.models import build_gan, build_model
from bigtrain.models.density import (
    DensityModel,
    DensityShape,
    LatentDensityModel,
    levels_from_uint8,
    quantize,
)
from bigtrain.models.growing import Growing
from bigtrain.train.density_sampling import draw_images, draw_labels
from bigtrain.train.gan_sampling import GeneratorSampling
from bigtrain.train.prior_sampling import SETTINGS, PriorSampling

Weights = Mapping[str, torch.Tensor]


def _device(device: str | torch.device | None) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _load_weights(net: nn.Module, weights: Weights, what: str) -> None:
    """``load_state_dict(strict)``, a misfit as one :class:`CheckpointError` line."""
    try:
        net.load_state_dict(dict(weights))
    except RuntimeError as exc:
        lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
        raise CheckpointError(f"the {what} weights do not fit its config: {lines[-1]}") from None


def _class_pool(classes: list[int] | torch.Tensor | None, num_classes: int, what: str) -> list[int] | None:
    """``classes`` as a list of valid class indices (a pool to draw labels from), or None; one
    :class:`ConfigError` line for an unconditional model or a class out of range."""
    if classes is None:
        return None
    if not num_classes:
        raise ConfigError(f"classes: this {what} is unconditional")
    pool = [int(c) for c in torch.as_tensor(classes).reshape(-1).tolist()]
    bad = [c for c in pool if not 0 <= c < num_classes]
    if bad:
        raise ConfigError(f"class {bad[0]} is out of range: the model has {num_classes} classes")
    return pool


def _generator(seed: int | None) -> torch.Generator:
    return torch.Generator().manual_seed(torch.seed() if seed is None else int(seed))


class InferenceModel:
    """What every loaded model has: ``kind``, ``description`` (its ``config.json``), ``device``."""

    kind: ClassVar[str]

    def __init__(self, description: Mapping[str, Any], device: torch.device) -> None:
        self.description = dict(description)
        self.device = device
        data = description["data"]
        # the images' size: a growing generator below its last stage draws smaller ones than the data's
        self.resolution = int(description.get("output_resolution", data["resolution"]))
        self.channels = int(data["channels"])
        self.classes: list[str] = list(data.get("classes") or [])

    @property
    def step(self) -> int:
        return int(self.description.get("source", {}).get("step", 0))

    def __repr__(self) -> str:
        m = self.description["model"]
        return (
            f"{type(self).__name__}({m['name']}, {self.resolution}px, {self.channels} channel(s), "
            f"{len(self.classes) if self.num_classes else 'no'} classes, step {self.step})"
        )

    num_classes: int = 0


class GeneratorModel(InferenceModel):
    """A GAN generator (the EMA generator when the run kept one), sampled as evaluation samples it:
    ``sampling.g_bn`` BatchNorm statistics, the checkpoint's resolution stage."""

    kind = "generator"

    def __init__(
        self, description: Mapping[str, Any], weights: Weights, device: str | torch.device | None = None
    ):
        super().__init__(description, _device(device))
        m, s = description["model"], description["sampling"]
        self.num_classes = int(m["num_classes"])
        self.z_dim = int(m["z_dim"])
        self.G = build_generator(description, weights).to(self.device).requires_grad_(False)
        self.sampling = GeneratorSampling(
            lambda: self.G,
            z_dim=self.z_dim,
            num_classes=self.num_classes,
            device=self.device,
            g_bn=str(s["g_bn"]),
            standing_passes=int(s["standing_passes"]),
            standing_batch=int(s["standing_batch"]),
            seed=int(s["seed"]),
        )

    def sample(
        self,
        n: int | None = None,
        classes: list[int] | torch.Tensor | None = None,
        truncation: float | None = None,
        seed: int | None = None,
        *,
        z: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``n`` images ``[n, C, H, W]`` in [-1, 1] on the CPU.

        ``seed`` gives the images ``bigtrain sample --seed`` draws (no seed: a fresh one). ``classes``
        is a pool labels are drawn from uniformly (as ``bigtrain sample --class``); with ``z``
        (``[n, z_dim]`` latents of your own) it is one label per latent, or a pool as before."""
        if z is not None:
            z = torch.as_tensor(z, dtype=torch.float32)
            if z.ndim != 2 or z.shape[1] != self.z_dim:
                raise ConfigError(f"z must be [n, {self.z_dim}], got {list(z.shape)}")
            y = self._labels_for(z.shape[0], classes, seed)
            return self.sampling.generate(z, y)
        if n is None or n < 1:
            raise ConfigError("sample(n): give how many images (n >= 1), or z=latents")
        pool = self._pool(classes)
        return self.sampling.sample(n, _generator(seed), classes=pool, truncation=truncation or 0.0)

    def _pool(self, classes: list[int] | torch.Tensor | None) -> list[int] | None:
        return _class_pool(classes, self.num_classes, "generator")

    def _labels_for(
        self, n: int, classes: list[int] | torch.Tensor | None, seed: int | None
    ) -> torch.Tensor | None:
        if not self.num_classes:
            if classes is not None:
                raise ConfigError("classes: this generator is unconditional")
            return None
        pool = self._pool(classes)
        if pool is not None and len(pool) == n:
            return torch.tensor(pool)
        choices = torch.tensor(pool if pool else range(self.num_classes))
        return choices[torch.randint(0, len(choices), (n,), generator=_generator(seed))]


class TokenizerModel(InferenceModel):
    """A VQ tokenizer's autoencoder: images <-> code grids."""

    kind = "tokenizer"

    def __init__(
        self, description: Mapping[str, Any], weights: Weights, device: str | torch.device | None = None
    ):
        super().__init__(description, _device(device))
        m = description["model"]
        with torch.random.fork_rng(devices=[]):  # building draws initial weights: leave the caller's RNG
            vq = build_model(m["name"], m["arch"], resolution=self.resolution, channels=self.channels)
        _load_weights(vq, weights, "tokenizer")
        self.vq = vq.to(self.device).eval().requires_grad_(False)
        self.token_grid = int(self.vq.token_grid)
        self.vocab = int(self.vq.num_codes)

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Images ``[B, C, H, W]`` in [-1, 1] -> codes ``[B, h, w]`` (long), as ``bigtrain tokenize`` makes them."""
        x = torch.as_tensor(images, dtype=torch.float32)
        if x.ndim != 4 or tuple(x.shape[1:]) != (self.channels, self.resolution, self.resolution):
            raise ConfigError(
                f"encode: images must be [B, {self.channels}, {self.resolution}, {self.resolution}], got {list(x.shape)}"
            )
        return self.vq.encode_indices(x.to(self.device)).long().cpu()

    @torch.no_grad()
    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """Codes ``[B, h, w]`` (or ``[B, h*w]``) -> images ``[B, C, H, W]`` in [-1, 1] on the CPU."""
        c = torch.as_tensor(codes).long().reshape(-1, self.token_grid, self.token_grid)
        return self.vq.decode_indices(c.to(self.device)).float().clamp(-1, 1).cpu()

    @torch.no_grad()
    def reconstruct(self, images: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(images))


class PriorModel(InferenceModel):
    """An autoregressive prior over a tokenizer's codes, with that tokenizer to decode them."""

    kind = "prior"

    def __init__(
        self,
        description: Mapping[str, Any],
        weights: Weights,
        tokenizer: TokenizerModel,
        device: str | torch.device | None = None,
    ):
        super().__init__(description, _device(device))
        m = description["model"]
        self.num_classes = int(m["num_classes"])
        self.tokenizer = tokenizer
        with torch.random.fork_rng(devices=[]):
            net = build_model(m["name"], m["arch"], vocab=int(m["vocab"]), seq_len=int(m["seq_len"]),
                              num_classes=self.num_classes)  # fmt: skip
        _load_weights(net, weights, "prior")
        self.net = net.to(self.device).eval().requires_grad_(False)
        self.sampling = PriorSampling(
            lambda: self.net,
            lambda: self.tokenizer.vq,
            num_classes=self.num_classes,
            seq_len=int(m["seq_len"]),
            device=self.device,
            defaults=description["sampling"],
        )

    def generate(
        self,
        n: int,
        classes: list[int] | torch.Tensor | None = None,
        *,
        cfg_scale: float | None = None,
        top_k: int | None = None,
        top_p: float | None = None,
        temperature: float | None = None,
        seed: int | None = None,
        return_codes: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """``n`` decoded images ``[n, C, H, W]`` in [-1, 1] (and the codes with ``return_codes``).
        Unset settings are the run's ``prior.*``; ``classes`` is a pool labels are drawn from."""
        if n < 1:
            raise ConfigError("generate(n): n must be >= 1")
        pool = _class_pool(classes, self.num_classes, "prior")
        g = _generator(seed)
        opts = dict(zip(SETTINGS, (temperature, top_k, top_p, cfg_scale), strict=True))
        codes = self.sampling.tokens(self.sampling.labels(n, g, pool), n, g, **opts)
        images = self.sampling.decode(codes)
        return (images, codes.cpu()) if return_codes else images

    def sample(
        self, n: int, classes: list[int] | None = None, seed: int | None = None, **settings: Any
    ) -> torch.Tensor:
        """Same as :meth:`generate` (the name generators use)."""
        out = self.generate(n, classes, seed=seed, **settings)
        assert isinstance(out, torch.Tensor)
        return out


class DensityInference(InferenceModel):
    """A ``task=likelihood`` model (PixelCNN, PixelRNN, VAE): samples as ``bigtrain sample`` draws
    them, and what only an explicit density gives: the likelihood of images, and for a latent model
    its encoder and decoder."""

    kind = "density"

    def __init__(
        self, description: Mapping[str, Any], weights: Weights, device: str | torch.device | None = None
    ):
        super().__init__(description, _device(device))
        m, s = description["model"], description["sampling"]
        self.num_classes = int(m["num_classes"])
        self.levels = int(m["levels"])
        self.vae_samples = str(s["vae_samples"])
        shape = DensityShape(self.resolution, self.channels, self.num_classes, self.levels)
        with torch.random.fork_rng(devices=[]):  # building draws initial weights: leave the caller's RNG
            net = build_model(m["name"], m["arch"], shape=shape)
        _load_weights(net, weights, "density model")
        self.net: DensityModel = net.to(self.device).eval().requires_grad_(False)

    def sample(
        self, n: int, classes: list[int] | torch.Tensor | None = None, seed: int | None = None
    ) -> torch.Tensor:
        """``n`` images ``[n, C, H, W]`` in [-1, 1] on the CPU, the ones ``bigtrain sample --seed``
        draws; ``classes``: a pool labels are drawn from."""
        if n < 1:
            raise ConfigError("sample(n): n must be >= 1")
        g = _generator(seed)
        labels = draw_labels(n, self.num_classes, _class_pool(classes, self.num_classes, "model"), g)
        return draw_images(self.net, n, labels, g, levels=self.levels, vae_samples=self.vae_samples,
                           device=self.device)  # fmt: skip

    def _levels(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 images, or floats in [-1, 1], ``[B, C, H, W]`` -> the model's levels."""
        x = torch.as_tensor(images)
        if x.ndim != 4 or tuple(x.shape[1:]) != (self.channels, self.resolution, self.resolution):
            raise ConfigError(
                f"images must be [B, {self.channels}, {self.resolution}, {self.resolution}], got {list(x.shape)}"
            )
        x = levels_from_uint8(x, self.levels) if x.dtype == torch.uint8 else quantize(x, self.levels)
        return x.to(self.device)

    def _labels(self, labels: torch.Tensor | list[int] | None, n: int) -> torch.Tensor | None:
        if not self.num_classes:
            return None
        if labels is None:
            raise ConfigError("labels: this model is class-conditional; give one class per image")
        y = torch.as_tensor(labels).long().reshape(-1)
        if len(y) != n:
            raise ConfigError(f"labels: {len(y)} for {n} images")
        return y.to(self.device)

    @torch.no_grad()
    def log_likelihood(
        self,
        images: torch.Tensor,
        labels: torch.Tensor | list[int] | None = None,
        *,
        iw_samples: int = 0,
        seed: int = 0,
    ) -> dict[str, torch.Tensor]:
        """Negative log-likelihoods per image in nats ``[B]`` (CPU, float64), by name, as evaluation
        computes them: ``nll`` (exact, autoregressive models) or ``elbo`` and, with ``iw_samples``
        K > 1, ``iw`` (the importance-weighted bound; a VAE), each with ``<name>_bpd`` in bits per
        sub-pixel. Images as uint8 or floats in [-1, 1]; latent noise from ``seed``."""
        x = self._levels(images)
        g = torch.Generator(device=self.device).manual_seed(int(seed))
        out = self.net.bounds(x, self._labels(labels, len(x)), generator=g, iw_samples=iw_samples)
        dims = self.channels * self.resolution * self.resolution
        nats = {k: v.double().cpu() for k, v in out.items()}
        return nats | {f"{k}_bpd": v / (dims * math.log(2)) for k, v in nats.items()}

    def _latent(self) -> LatentDensityModel:
        if not isinstance(self.net, LatentDensityModel):
            raise ConfigError(f"model={self.description['model']['name']} has no latent space")
        return self.net

    @torch.no_grad()
    def encode(self, images: torch.Tensor, labels: torch.Tensor | list[int] | None = None) -> torch.Tensor:
        """A latent model's posterior means ``[B, latent_dim]`` (CPU) of the images."""
        x = self._levels(images)
        mu, _ = self._latent().encode(x, self._labels(labels, len(x)))
        return mu.float().cpu()

    @torch.no_grad()
    def decode(self, z: torch.Tensor, labels: torch.Tensor | list[int] | None = None) -> torch.Tensor:
        """A latent model's decoder means ``[B, C, H, W]`` in [-1, 1] (CPU) at latents ``z``."""
        net = self._latent()
        z = torch.as_tensor(z, dtype=torch.float32)
        if z.ndim != 2 or z.shape[1] != net.latent_dim:
            raise ConfigError(f"z must be [n, {net.latent_dim}], got {list(z.shape)}")
        y = self._labels(labels, len(z))
        return net.mean_image(z.to(self.device), y).float().clamp(-1, 1).cpu()

    def reconstruct(
        self, images: torch.Tensor, labels: torch.Tensor | list[int] | None = None
    ) -> torch.Tensor:
        """Decoder means at the images' posterior means (a VAE's reconstructions grid)."""
        return self.decode(self.encode(images, labels), labels)


def build_generator(description: Mapping[str, Any], weights: Weights) -> nn.Module:
    """The generator alone, on the CPU, with ``weights`` loaded and the recorded stage set.

    A GAN family builds ``(G, D)`` as a pair; here the pair is built on PyTorch's meta device (shapes
    only: no memory, no initialisation), D is dropped, and G's storage is made and filled from the
    weights. What a state dict does not hold (non-persistent buffers) must be restored here: the
    only one in a generator is a growing network's fade weight, set again by ``set_resolution``."""
    m = description["model"]
    data = description["data"]
    with torch.device("meta"):
        G, _ = build_gan(
            m["name"],
            resolution=int(data["resolution"]),
            channels=int(data["channels"]),
            num_classes=int(m["num_classes"]),
            z_dim=int(m["z_dim"]),
            g_width=int(m["g_width"]),
            d_width=int(m["d_width"]),
            d_norm=str(m["d_norm"]),
            **dict(m["arch"]),
        )
    G = G.to_empty(device="cpu")
    _load_weights(G, weights, "generator")
    stage = description.get("sampling", {}).get("stage")
    for mod in G.modules():
        if isinstance(mod, Growing):
            res, alpha = (
                (int(stage["resolution"]), float(stage["alpha"]))
                if stage
                else (mod.stage_resolution, mod.alpha)
            )
            mod.set_resolution(res, alpha)
        unset = set(getattr(mod, "_non_persistent_buffers_set", ())) - (
            {"fade_weight"} if isinstance(mod, Growing) else set()
        )
        if unset:  # a new family with a buffer the state dict does not hold: refuse, never sample garbage
            raise CheckpointError(
                f"{type(mod).__name__} has non-persistent buffers {sorted(unset)} that loading cannot restore"
            )
    with contextlib.suppress(AttributeError):
        G.eval()
    return G


__all__ = [
    "DensityInference",
    "GeneratorModel",
    "InferenceModel",
    "PriorModel",
    "TokenizerModel",
    "build_generator",
]
