"""GAN model families, looked up by name from configs.

A registry (instead of an if-chain in the trainer) lets a new family, e.g. BigGAN, add itself
with one ``register_gan`` call next to its own code. Every builder returns ``(G, D)`` obeying one
contract that the trainers, samplers and evaluators rely on:

* ``G(z: [B, z_dim], y: LongTensor[B] | None) -> [B, C, H, W]`` with values in [-1, 1];
* ``D(x: [B, C, H, W], y: LongTensor[B] | None) -> [B]`` raw logits (not ``[B, 1]``);
* both expose ``num_classes``, ``resolution`` and ``channels``; G also exposes ``z_dim``;
* with ``num_classes == 0`` labels are ignored, so ``y`` may be ``None``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from torch import nn

from bigtrain.models.biggan import build_biggan
from bigtrain.models.biggan_deep import build_biggan_deep
from bigtrain.models.dcgan import D_NORMS, DCGANDiscriminator, DCGANGenerator
from bigtrain.models.mlp_gan import MLPDiscriminator, MLPGenerator
from bigtrain.models.progan import build_progan

GANBuilder = Callable[..., tuple[nn.Module, nn.Module]]
"""``builder(*, resolution, channels, num_classes, z_dim, g_width, d_width, d_norm) -> (G, D)``."""

GAN_MODELS: dict[str, GANBuilder] = {}


def register_gan(name: str) -> Callable[[GANBuilder], GANBuilder]:
    """Decorator adding a ``(G, D)`` builder to :data:`GAN_MODELS` under ``name``.

    Registering a name twice raises: silently replacing a family would make configs build a
    different model depending on import order.
    """

    def decorator(builder: GANBuilder) -> GANBuilder:
        if name in GAN_MODELS:
            raise ValueError(f"GAN model {name!r} is already registered")
        GAN_MODELS[name] = builder
        return builder

    return decorator


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
) -> tuple[nn.Module, nn.Module]:
    """Build the ``(G, D)`` pair of family ``name``; see the module docstring for their contract.

    ``arch`` holds a family's own options (``model.arch.*`` in the config, e.g. BigGAN's
    attention resolutions); a key the family does not take is an error naming it.
    """
    if name not in GAN_MODELS:
        raise ValueError(f"unknown GAN model {name!r}; known: {', '.join(sorted(GAN_MODELS))}")
    if d_norm not in D_NORMS:  # checked here once for every family, used or not by its D
        raise ValueError(f"unknown D norm {d_norm!r}; choose one of {', '.join(D_NORMS)}")
    builder = GAN_MODELS[name]
    accepted = inspect.signature(builder).parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in accepted.values())
    unknown = sorted(k for k in arch if k not in accepted and not takes_any)
    if unknown:
        raise ValueError(f"model {name!r} has no option(s) {', '.join('model.arch.' + k for k in unknown)}")
    return builder(
        resolution=resolution,
        channels=channels,
        num_classes=num_classes,
        z_dim=z_dim,
        g_width=g_width,
        d_width=d_width,
        d_norm=d_norm,
        **arch,
    )


@register_gan("mlp_gan")
def _build_mlp(
    *,
    resolution: int,
    channels: int,
    num_classes: int,
    z_dim: int,
    g_width: int,
    d_width: int,
    d_norm: str,
) -> tuple[nn.Module, nn.Module]:
    """Goodfellow et al. 2014 MLP pair. Its D has no normalisation layers, so ``d_norm`` is moot:
    any of the DCGAN choices is accepted (``build_gan`` checks it), and WGAN-GP is safe with every one."""
    g = MLPGenerator(z_dim, resolution, channels, num_classes, g_width)
    d = MLPDiscriminator(resolution, channels, num_classes, d_width)
    return g, d


@register_gan("dcgan")
def _build_dcgan(
    *,
    resolution: int,
    channels: int,
    num_classes: int,
    z_dim: int,
    g_width: int,
    d_width: int,
    d_norm: str,
    grow: bool = False,
) -> tuple[nn.Module, nn.Module]:
    """Radford et al. 2016 DCGAN pair; ``d_norm`` picks D's normalisation (see ``dcgan``);
    ``grow`` adds the layers for progressive resolution stages (``stages.schedule``)."""
    g = DCGANGenerator(z_dim, resolution, channels, num_classes, g_width, grow=grow)
    d = DCGANDiscriminator(resolution, channels, num_classes, d_width, norm=d_norm, grow=grow)
    return g, d


__all__ = [
    "GAN_MODELS",
    "DCGANDiscriminator",
    "DCGANGenerator",
    "GANBuilder",
    "MLPDiscriminator",
    "MLPGenerator",
    "build_gan",
    "register_gan",
]


@register_gan("progan")
def _build_progan(
    *,
    resolution: int,
    channels: int,
    num_classes: int,
    z_dim: int,
    g_width: int,  # noqa: ARG001 - ProGAN's widths come from fmap_base / fmap_max
    d_width: int,  # noqa: ARG001
    d_norm: str,  # noqa: ARG001 - its D has no normalisation (WGAN-GP's penalty is per sample)
    fmap_base: int = 8192,
    fmap_max: int = 512,
    mbstd_group: int = 4,
) -> tuple[nn.Module, nn.Module]:
    """Karras et al. 2018, growing with fade-in (``bigtrain.models.progan``); unconditional."""
    if num_classes:
        raise ValueError("model=progan is unconditional (as in the paper): set model.conditional=false")
    return build_progan(
        resolution=resolution, channels=channels, z_dim=z_dim, fmap_base=fmap_base, fmap_max=fmap_max,
        mbstd_group=mbstd_group,
    )  # fmt: skip


# BigGAN and BigGAN-deep (Brock et al. 2019) register from their own modules' builders.
register_gan("biggan")(build_biggan)
register_gan("biggan_deep")(build_biggan_deep)
