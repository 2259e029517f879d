"""Image-to-image translation networks: pix2pix (Isola et al. 2017) and CycleGAN (Zhu et al. 2017).

The layouts are those of the authors' release (junyanz/pytorch-CycleGAN-and-pix2pix,
``models/networks.py``), so its checkpoints map one to one onto these modules
(``benchmarks/parity/pix2pix.py`` checks the outputs against its own code):

* :class:`UNetGenerator` (pix2pix's ``unet_256`` / ``unet_128``): ``num_downs`` 4x4 stride-2
  convolutions down to the bottleneck and as many 4x4 stride-2 transposed convolutions back, each
  decoder level fed the encoder's features of the same size concatenated with the level below;
* :class:`ResnetGenerator` (CycleGAN's ``resnet_9blocks`` / ``resnet_6blocks``, after Johnson et
  al. 2016): a 7x7 conv, two stride-2 downsamplings, residual blocks, two transposed-conv
  upsamplings and a 7x7 conv, reflection padding around the 3x3 and 7x7 convs;
* :class:`ConditionalPatchDiscriminator`: pix2pix's conditional PatchGAN, ``D(source, target)``
  on the two images concatenated along channels; CycleGAN's discriminators are the unconditional
  :class:`~bigtrain.models.patchgan.PatchDiscriminator`.

Normalisation (``norm``) is the release's ``get_norm_layer``: ``batch`` (BatchNorm, affine, running
statistics; pix2pix's default), ``instance`` (InstanceNorm without affine parameters or running
statistics; CycleGAN's) or ``none``. As in the release, convolutions followed by a norm layer get
a bias only with instance norm (so none either with ``norm="none"``); the output convolutions always
have one. Weights are drawn as the release's ``init_type=normal, init_gain=0.02``: conv and
transposed-conv weights N(0, 0.02), BatchNorm gains N(1, 0.02), every bias 0.

Dropout is pix2pix's only source of noise (the paper gives G no ``z``: it was ignored). The release
never puts its networks in eval mode at test time unless ``--eval`` is passed, so its samples are
drawn with dropout on (and BatchNorm on the test batch's statistics). Whether samples keep that
noise is the sampling task's choice (``task=pix2pix``: ``eval.dropout``), not a model option. The
generators offer it as ``dropout_at_eval`` (default off): while set, ``.eval()`` switches BatchNorm
to its running statistics but leaves the dropout layers sampling, for code that only calls
``.eval()``. The release's exact test behaviour is train mode under ``torch.no_grad()`` (BatchNorm's
running statistics then move).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor, nn

from bigtrain.config.typed import option
from bigtrain.errors import ConfigError
from bigtrain.models.patchgan import PATCH_NORMS, PatchDiscriminator, norm_layer
from bigtrain.models.registry import TranslationShape, register_model

PADDINGS = {"reflect": "reflect", "replicate": "replicate", "zero": "zeros"}
GENERATORS = ("unet", "resnet_6", "resnet_9")


def _check_norm(norm: str) -> None:
    if norm not in PATCH_NORMS:
        raise ValueError(f"unknown norm {norm!r}; choose one of {', '.join(PATCH_NORMS)}")


def _conv_bias(norm: str) -> bool:
    """The release's rule for a conv followed by a norm layer: a bias only before instance norm."""
    return norm == "instance"


def init_translation_weights(module: nn.Module) -> None:
    """The release's ``init_weights(init_type="normal", init_gain=0.02)``."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d | nn.ConvTranspose2d):
            nn.init.normal_(m.weight, 0.0, 0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.normal_(m.weight, 1.0, 0.02)
            nn.init.zeros_(m.bias)


class _DropoutNoise(nn.Module):
    """``dropout_at_eval``: eval mode leaves the dropout layers active (see the module docstring)."""

    _dropout_at_eval: bool = False

    @property
    def dropout_at_eval(self) -> bool:
        return self._dropout_at_eval

    @dropout_at_eval.setter
    def dropout_at_eval(self, value: bool) -> None:
        self._dropout_at_eval = bool(value)
        self.train(self.training)  # re-apply to the current mode

    def train(self, mode: bool = True) -> _DropoutNoise:
        super().train(mode)
        if not mode and self._dropout_at_eval:
            for m in self.modules():
                if isinstance(m, nn.Dropout):
                    m.train(True)
        return self

    @property
    def has_dropout(self) -> bool:
        return any(isinstance(m, nn.Dropout) for m in self.modules())


class UNetGenerator(_DropoutNoise):
    """pix2pix's U-Net generator: ``G(x [B, in, H, W]) -> [B, out, H, W]`` in [-1, 1].

    Level ``i`` (0 = outermost) halves the size with a 4x4 stride-2 conv to ``ngf * min(2^i, 8)``
    channels (LeakyReLU 0.2 before it, a norm after it except at the outermost and the innermost
    level); the decoder mirrors it with 4x4 stride-2 transposed convs (ReLU before, norm after),
    each fed the concatenation ``[encoder features of level i, decoder output from below]``. The
    outermost transposed conv ends in Tanh, without a norm. ``num_downs = log2(H)`` reaches a 1x1
    bottleneck (``unet_256``: 8; ``unet_128``: 7); H and W must be divisible by ``2^num_downs``.

    ``dropout`` (the release's 0.5 with ``use_dropout``) follows the norm of the decoder levels
    ``4 .. num_downs - 2``, the ``num_downs - 5`` 8*ngf levels between the four outer ones and the
    innermost (three at 256 px, none at 32 px). With ``num_downs >= 5`` the layout is exactly the
    release's; with fewer, the levels are the first ``num_downs`` of the same width schedule (the
    release always builds at least five).

    ``encoder[i]`` / ``decoder[i]`` hold level ``i``'s down and up steps.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        num_downs: int,
        ngf: int = 64,
        norm: str = "batch",
        dropout: float = 0.5,
        dropout_at_eval: bool = False,
    ) -> None:
        super().__init__()
        _check_norm(norm)
        if num_downs < 2:
            raise ValueError(f"UNetGenerator needs num_downs >= 2, got {num_downs}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.in_channels, self.out_channels, self.num_downs = in_channels, out_channels, num_downs
        bias = _conv_bias(norm)
        widths = [ngf * min(2**i, 8) for i in range(num_downs)]
        inner = num_downs - 1
        self.encoder = nn.ModuleList()
        self.decoder = nn.ModuleList()
        for i, w in enumerate(widths):
            down: list[nn.Module] = [] if i == 0 else [nn.LeakyReLU(0.2)]  # the skip must stay raw
            down.append(nn.Conv2d(in_channels if i == 0 else widths[i - 1], w, 4, 2, 1, bias=bias))
            if 0 < i < inner:
                down.append(norm_layer(norm, w))
            self.encoder.append(nn.Sequential(*down))

            up_in = w if i == inner else 2 * w  # the innermost level has no skip to concatenate
            if i == 0:
                up = [nn.ReLU(True), nn.ConvTranspose2d(up_in, out_channels, 4, 2, 1), nn.Tanh()]
            else:
                up = [
                    nn.ReLU(True),
                    nn.ConvTranspose2d(up_in, widths[i - 1], 4, 2, 1, bias=bias),
                    norm_layer(norm, widths[i - 1]),
                ]
                if 4 <= i < inner and dropout > 0:
                    up.append(nn.Dropout(dropout))
            self.decoder.append(nn.Sequential(*up))
        init_translation_weights(self)
        self.dropout_at_eval = dropout_at_eval

    def forward(self, x: Tensor) -> Tensor:
        step = 2**self.num_downs
        if x.shape[-1] % step or x.shape[-2] % step:
            raise ValueError(
                f"UNetGenerator with num_downs={self.num_downs} needs H and W divisible by {step}, "
                f"got {tuple(x.shape[-2:])}"
            )
        skips = []
        for down in self.encoder:
            x = down(x)
            skips.append(x)
        h = self.decoder[-1](skips[-1])
        for i in range(self.num_downs - 2, -1, -1):
            h = self.decoder[i](torch.cat([skips[i], h], dim=1))
        return h


class ResnetBlock(nn.Module):
    """``x + [conv3x3, norm, ReLU, (dropout), conv3x3, norm](x)`` with ``padding`` around each conv."""

    def __init__(self, dim: int, norm: str, dropout: float, bias: bool, padding: str = "reflect") -> None:
        super().__init__()
        mode = PADDINGS[padding]
        layers: list[nn.Module] = [
            nn.Conv2d(dim, dim, 3, padding=1, padding_mode=mode, bias=bias),
            norm_layer(norm, dim),
            nn.ReLU(True),
        ]
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        layers += [nn.Conv2d(dim, dim, 3, padding=1, padding_mode=mode, bias=bias), norm_layer(norm, dim)]
        self.body = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.body(x)


class ResnetGenerator(_DropoutNoise):
    """CycleGAN's ResNet generator: ``G(x [B, in, H, W]) -> [B, out, H, W]`` in [-1, 1].

    ``stem``: 7x7 conv to ``ngf`` (reflection padding 3), norm, ReLU; ``down``: two 3x3 stride-2
    convs (zero padding) to ``2 ngf`` and ``4 ngf``, each with norm and ReLU; ``blocks``: ``n_blocks``
    :class:`ResnetBlock` at ``4 ngf`` (``padding``: ``reflect`` as released, ``replicate`` or
    ``zero``); ``up``: two 3x3 stride-2 transposed convs (``output_padding=1``) back to ``ngf``, each
    with norm and ReLU; ``head``: 7x7 conv (reflection padding 3) to ``out_channels`` and Tanh. H and
    W divisible by 4 give an output of the input's size. ``dropout`` (the release's 0.5 with
    ``use_dropout``; CycleGAN trains without) sits between each block's two convs.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        ngf: int = 64,
        norm: str = "instance",
        n_blocks: int = 9,
        dropout: float = 0.0,
        padding: str = "reflect",
        dropout_at_eval: bool = False,
    ) -> None:
        super().__init__()
        _check_norm(norm)
        if padding not in PADDINGS:
            raise ValueError(f"unknown padding {padding!r}; choose one of {', '.join(PADDINGS)}")
        if n_blocks < 0:
            raise ValueError(f"n_blocks must be >= 0, got {n_blocks}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.in_channels, self.out_channels = in_channels, out_channels
        self.n_blocks, self.padding = n_blocks, padding
        bias = _conv_bias(norm)
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, ngf, 7, padding=3, padding_mode="reflect", bias=bias),
            norm_layer(norm, ngf),
            nn.ReLU(True),
        )
        down: list[nn.Module] = []
        for c in (ngf, 2 * ngf):
            down += [
                nn.Conv2d(c, 2 * c, 3, stride=2, padding=1, bias=bias),
                norm_layer(norm, 2 * c),
                nn.ReLU(True),
            ]
        self.down = nn.Sequential(*down)
        self.blocks = nn.Sequential(
            *(ResnetBlock(4 * ngf, norm, dropout, bias, padding) for _ in range(n_blocks))
        )
        up: list[nn.Module] = []
        for c in (4 * ngf, 2 * ngf):
            up += [
                nn.ConvTranspose2d(c, c // 2, 3, stride=2, padding=1, output_padding=1, bias=bias),
                norm_layer(norm, c // 2),
                nn.ReLU(True),
            ]
        self.up = nn.Sequential(*up)
        self.head = nn.Sequential(
            nn.Conv2d(ngf, out_channels, 7, padding=3, padding_mode="reflect"), nn.Tanh()
        )
        init_translation_weights(self)
        self.dropout_at_eval = dropout_at_eval

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.up(self.blocks(self.down(self.stem(x)))))


class ConditionalPatchDiscriminator(nn.Module):
    """pix2pix's conditional PatchGAN: ``D(source [B, in, H, W], target [B, out, H, W]) -> [B, 1, h, w]``
    patch logits of :class:`PatchDiscriminator` on ``cat([source, target], dim=1)`` (the release's
    ``cat((real_A, fake_B), 1)``); ``target`` is the real or the generated image."""

    def __init__(
        self,
        source_channels: int,
        target_channels: int,
        ndf: int = 64,
        n_layers: int = 3,
        norm: str = "batch",
    ) -> None:
        super().__init__()
        self.source_channels, self.target_channels = source_channels, target_channels
        self.net = PatchDiscriminator(
            source_channels + target_channels, ndf, n_layers, norm=norm, zero_bias=True
        )

    def forward(self, source: Tensor, target: Tensor) -> Tensor:
        return self.net(torch.cat([source, target], dim=1))


class CycleGANNets(NamedTuple):
    """The ``unpaired`` builder's networks. ``g_ab`` maps domain A (``in_channels``) to B
    (``out_channels``), ``g_ba`` B to A; ``d_a`` judges images of A (real ones against ``g_ba``'s),
    ``d_b`` images of B. The release names them by generator: its ``netG_A``/``netG_B`` are
    ``g_ab``/``g_ba`` and its ``netD_A`` (which judges G_A's outputs, images of B) is ``d_b``."""

    g_ab: nn.Module
    g_ba: nn.Module
    d_a: PatchDiscriminator
    d_b: PatchDiscriminator


def auto_num_downs(resolution: int) -> int:
    """U-Net levels for ``resolution``: as many halvings as it allows (``log2`` for a power of two,
    a 1x1 bottleneck: 8 at 256 px as ``unet_256``, 5 at 32 px)."""
    n = 0
    while resolution % 2 == 0 and resolution > 1:
        resolution //= 2
        n += 1
    return n


def _generator(
    shape: TranslationShape, arch: Pix2PixArch | CycleGANArch, in_ch: int, out_ch: int
) -> nn.Module:
    if arch.generator not in GENERATORS:
        raise ConfigError(
            f"model.arch.generator must be one of {', '.join(GENERATORS)}, got {arch.generator!r}"
        )
    if arch.norm not in PATCH_NORMS:
        raise ConfigError(f"model.arch.norm must be one of {', '.join(PATCH_NORMS)}, got {arch.norm!r}")
    if not 0.0 <= arch.dropout < 1.0:
        raise ConfigError(f"model.arch.dropout must be in [0, 1), got {arch.dropout}")
    if arch.generator == "unet":
        n = arch.num_downs or auto_num_downs(shape.resolution)
        if n < 2 or shape.resolution % 2**n:
            raise ConfigError(
                f"model.arch.num_downs={n}: the U-Net needs 2 or more levels and a resolution divisible "
                f"by 2^num_downs (resolution {shape.resolution}); 0 picks log2(resolution)"
            )
        return UNetGenerator(in_ch, out_ch, n, shape.g_width, arch.norm, arch.dropout)
    if arch.padding not in PADDINGS:
        raise ConfigError(f"model.arch.padding must be one of {', '.join(PADDINGS)}, got {arch.padding!r}")
    if shape.resolution % 4:
        raise ConfigError(f"the ResNet generator needs a resolution divisible by 4, got {shape.resolution}")
    blocks = int(arch.generator.removeprefix("resnet_"))
    return ResnetGenerator(in_ch, out_ch, shape.g_width, arch.norm, blocks, arch.dropout, arch.padding)


def _check_d(arch: Pix2PixArch | CycleGANArch) -> None:
    if arch.n_layers < 1:
        raise ConfigError(f"model.arch.n_layers must be >= 1, got {arch.n_layers}")


_HELP_G = "G: unet (pix2pix's U-Net) | resnet_6 | resnet_9 (CycleGAN's ResNet G with 6 or 9 residual blocks)"
_HELP_NORM = "normalisation of G and D: batch | instance | none (the release's get_norm_layer)"
_HELP_LAYERS = "PatchGAN stride-2 layers: 3 = 70x70 patches, 2 = 34x34, 1 = 16x16"
_HELP_DOWNS = "U-Net levels; 0 = every halving the resolution allows (log2: a 1x1 bottleneck, 8 at 256 px)"
_HELP_PAD = "padding of the ResNet blocks' 3x3 convs: reflect | replicate | zero"


@dataclass
class Pix2PixArch:
    """``model.arch`` of ``pix2pix``; the defaults are the release's (``--model pix2pix``)."""

    generator: str = option("unet", _HELP_G)
    norm: str = option("batch", _HELP_NORM)
    dropout: float = option(0.5, "G's dropout probability (pix2pix's noise); 0 = none")
    n_layers: int = option(3, _HELP_LAYERS)
    num_downs: int = option(0, _HELP_DOWNS)
    padding: str = option("reflect", _HELP_PAD)


@dataclass
class CycleGANArch:
    """``model.arch`` of ``cyclegan``; the defaults are the release's (``--model cycle_gan``)."""

    generator: str = option("resnet_9", _HELP_G)
    norm: str = option("instance", _HELP_NORM)
    dropout: float = option(0.0, "G's dropout probability (CycleGAN trains without: --no_dropout)")
    n_layers: int = option(3, _HELP_LAYERS)
    num_downs: int = option(0, _HELP_DOWNS)
    padding: str = option("reflect", _HELP_PAD)


@register_model(
    "pix2pix", kind="paired", arch=Pix2PixArch, help="Isola et al. 2017: U-Net G, conditional PatchGAN D"
)
def build_pix2pix(
    shape: TranslationShape, arch: Pix2PixArch
) -> tuple[nn.Module, ConditionalPatchDiscriminator]:
    """pix2pix's ``(G, D)``: ``G(source) -> target`` and ``D(source, target) -> [B, 1, h, w]`` logits."""
    _check_d(arch)
    g = _generator(shape, arch, shape.in_channels, shape.out_channels)
    d = ConditionalPatchDiscriminator(
        shape.in_channels, shape.out_channels, shape.d_width, arch.n_layers, arch.norm
    )
    return g, d


@register_model(
    "cyclegan", kind="unpaired", arch=CycleGANArch, help="Zhu et al. 2017: two ResNet Gs, two PatchGANs"
)
def build_cyclegan(shape: TranslationShape, arch: CycleGANArch) -> CycleGANNets:
    """CycleGAN's :class:`CycleGANNets` ``(g_ab, g_ba, d_a, d_b)``, unpackable as a tuple."""
    _check_d(arch)
    g_ab = _generator(shape, arch, shape.in_channels, shape.out_channels)
    g_ba = _generator(shape, arch, shape.out_channels, shape.in_channels)
    d_a = PatchDiscriminator(shape.in_channels, shape.d_width, arch.n_layers, norm=arch.norm, zero_bias=True)
    d_b = PatchDiscriminator(shape.out_channels, shape.d_width, arch.n_layers, norm=arch.norm, zero_bias=True)
    return CycleGANNets(g_ab, g_ba, d_a, d_b)


__all__ = [
    "GENERATORS",
    "PADDINGS",
    "ConditionalPatchDiscriminator",
    "CycleGANArch",
    "CycleGANNets",
    "Pix2PixArch",
    "ResnetBlock",
    "ResnetGenerator",
    "UNetGenerator",
    "auto_num_downs",
    "build_cyclegan",
    "build_pix2pix",
    "init_translation_weights",
]
