"""Model families by name (``model.name``), each with its typed ``model.arch`` options.

A family registers a builder with :func:`register_model` next to its own code, naming the kind of
task that trains it (``gan``, ``tokenizer``, ``prior``, ``paired``, ``unpaired``, ``text``, ``density``) and the dataclass of
its options. Every
module of ``bigtrain.models`` is imported on the first lookup, so a new family is one new file.

Builders take their kind's fixed arguments plus ``arch`` (the parsed dataclass):

* ``gan``: ``(shape: GANShape, arch) -> (G, D)`` with ``G(z [B, z_dim], y [B] | None) -> [B, C, H, W]``
  in [-1, 1] and ``D(x, y) -> [B]`` logits; both expose ``num_classes``, ``resolution`` and
  ``channels``; unconditional ones ignore ``y``;
* ``tokenizer``: ``(resolution=, channels=, arch=) -> VQModel``;
* ``prior``: ``(vocab=, seq_len=, num_classes=, arch=) -> TokenPrior``;
* ``paired`` (image-to-image translation from aligned pairs, pix2pix): ``(shape: TranslationShape,
  arch) -> (G, D)`` with ``G(x [B, in, H, W]) -> [B, out, H, W]`` in [-1, 1] and the conditional
  ``D(source [B, in, H, W], target [B, out, H, W]) -> [B, 1, h, w]`` patch logits;
* ``unpaired`` (translation between two unaligned image sets, CycleGAN): ``(shape: TranslationShape,
  arch) -> (G_AB, G_BA, D_A, D_B)`` (a named tuple): ``G_AB`` maps domain A (``in_channels``) to B
  (``out_channels``), ``G_BA`` back, and ``D_A(x)`` / ``D_B(x)`` -> ``[B, 1, h, w]`` patch logits judge
  images of A and of B.
* ``text`` (text-to-image, GAN-CLS): ``(shape: TextGANShape, arch) -> (G, D)`` with
  ``G(z [B, z_dim], e [B, text_dim])`` and ``D(x, e) -> [B]`` logits, ``e`` a text encoder's embedding.
* ``density`` (explicit likelihood: PixelCNN, PixelRNN, VAE): ``(shape: DensityShape, arch) ->
  DensityModel`` (``bigtrain.models.density``: ``objective``, ``bounds``, ``sample`` over pixel levels).

:func:`build_gan` and :func:`build_translation` build the GAN and translation kinds from plain
keywords.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from bigtrain.config.typed import parse_options
from bigtrain.errors import ConfigError

D_NORMS = ("batch", "layer", "none")
"""``model.d_norm``: what a GAN discriminator normalises with (families without norms accept any)."""


@dataclass(frozen=True)
class GANShape:
    """What every GAN family is built from besides its own options (``model.*`` and the data)."""

    resolution: int
    channels: int
    num_classes: int  # 0: unconditional
    z_dim: int
    g_width: int
    d_width: int
    d_norm: str = "batch"  # for families whose D has normalisation layers (DCGAN)


@dataclass(frozen=True)
class TranslationShape:
    """What every image-to-image translation family (kinds ``paired`` and ``unpaired``) is built
    from besides its own options: the image size, the source (domain A) and target (domain B)
    channels, and the base widths of G (pix2pix's ``ngf``) and D (``ndf``)."""

    resolution: int
    in_channels: int
    out_channels: int
    g_width: int = 64
    d_width: int = 64


TRANSLATION_KINDS = ("paired", "unpaired")


@dataclass(frozen=True)
class TextGANShape:
    """What every text-to-image GAN family (kind ``text``, GAN-CLS) is built from besides its own
    options: the image size, the latent size, the text encoder's embedding size and the base widths."""

    resolution: int
    channels: int
    z_dim: int
    text_dim: int
    g_width: int = 64
    d_width: int = 64


@dataclass(frozen=True)
class ModelFamily:
    name: str
    kind: str
    arch: type
    build: Callable[..., Any]
    help: str


MODELS: dict[str, ModelFamily] = {}


def register_model(
    name: str, *, kind: str, arch: type, help: str = ""
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator: ``builder`` becomes family ``name``. Registering a name twice raises (which family
    a config builds must not depend on import order)."""

    def deco(builder: Callable[..., Any]) -> Callable[..., Any]:
        if name in MODELS and MODELS[name].build is not builder:
            raise ValueError(f"model {name!r} is already registered")
        MODELS[name] = ModelFamily(name, kind, arch, builder, help or (builder.__doc__ or "").split("\n")[0])
        return builder

    return deco


_discovered = False


def _discover() -> None:
    global _discovered
    if _discovered:
        return
    package = importlib.import_module("bigtrain.models")
    for info in pkgutil.iter_modules(package.__path__):
        importlib.import_module(f"{package.__name__}.{info.name}")
    _discovered = True


def families(kind: str | None = None) -> dict[str, ModelFamily]:
    _discover()
    return {n: f for n, f in sorted(MODELS.items()) if kind is None or f.kind == kind}


def model_family(name: str, kind: str | None = None) -> ModelFamily:
    """The family ``name`` (of ``kind``, when given); unknown names are a one-line error."""
    known = families(kind)
    if name not in known:
        what = f"{kind} model" if kind else "model"
        raise ConfigError(f"unknown {what} '{name}'; known: {', '.join(known)}")
    return known[name]


def parse_arch(name: str, raw: Mapping[str, Any] | Any | None) -> Any:
    """``model.arch`` of family ``name`` as its dataclass (an instance passes through)."""
    fam = model_family(name)
    if isinstance(raw, fam.arch):
        return raw
    return parse_options(fam.arch, raw, "model.arch", f"model={name}")


def build_model(name: str, arch: Mapping[str, Any] | Any | None = None, **fixed: Any) -> Any:
    """Build family ``name`` from its kind's fixed arguments and its ``model.arch`` options."""
    return model_family(name).build(arch=parse_arch(name, arch), **fixed)


def build_gan(
    name: str,
    *,
    resolution: int,
    channels: int,
    num_classes: int,
    z_dim: int,
    g_width: int,
    d_width: int,
    d_norm: str = "batch",
    **arch: Any,
) -> tuple[Any, Any]:
    """A GAN family's ``(G, D)``; ``arch`` holds its ``model.arch`` options as keywords."""
    family = model_family(name, "gan")
    if d_norm not in D_NORMS:  # checked once for every family, used or not by its D
        raise ConfigError(f"unknown D norm {d_norm!r}; choose one of {', '.join(D_NORMS)}")
    shape = GANShape(resolution, channels, num_classes, z_dim, g_width, d_width, d_norm)
    return family.build(shape, parse_arch(name, arch))


def build_translation(
    name: str,
    *,
    resolution: int,
    in_channels: int,
    out_channels: int,
    g_width: int = 64,
    d_width: int = 64,
    kind: str | None = None,
    **arch: Any,
) -> Any:
    """A translation family's networks (``(G, D)`` for ``paired``, ``(G_AB, G_BA, D_A, D_B)`` for
    ``unpaired``); ``kind`` (when given) must be the family's; ``arch`` holds its ``model.arch``
    options as keywords."""
    if kind is not None and kind not in TRANSLATION_KINDS:
        raise ConfigError(f"unknown translation kind {kind!r}; choose one of {', '.join(TRANSLATION_KINDS)}")
    family = model_family(name, kind)
    if family.kind not in TRANSLATION_KINDS:
        raise ConfigError(f"model '{name}' is a {family.kind} model, not an image-to-image translation one")
    shape = TranslationShape(resolution, in_channels, out_channels, g_width, d_width)
    return family.build(shape, parse_arch(name, arch))


def build_text_gan(
    name: str,
    *,
    resolution: int,
    channels: int,
    z_dim: int,
    text_dim: int,
    g_width: int = 64,
    d_width: int = 64,
    **arch: Any,
) -> tuple[Any, Any]:
    """A text-to-image family's ``(G, D)`` (kind ``text``): ``G(z [B, z_dim], e [B, text_dim])`` ->
    ``[B, C, H, W]`` in [-1, 1] and ``D(x, e) -> [B]`` logits; ``arch`` holds its ``model.arch``
    options as keywords."""
    family = model_family(name, "text")
    shape = TextGANShape(resolution, channels, z_dim, text_dim, g_width, d_width)
    return family.build(shape, parse_arch(name, arch))


__all__ = [
    "D_NORMS",
    "GANShape",
    "MODELS",
    "ModelFamily",
    "TRANSLATION_KINDS",
    "TextGANShape",
    "TranslationShape",
    "build_gan",
    "build_model",
    "build_text_gan",
    "build_translation",
    "families",
    "model_family",
    "parse_arch",
    "register_model",
]
