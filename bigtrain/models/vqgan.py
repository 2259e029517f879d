"""The VQ-GAN / VQ-VAE image tokenizer: encoder -> 1x1 conv -> vector quantiser -> 1x1 conv -> decoder.

Architecture of the release (CompVis/taming-transformers ``VQModel`` with its diffusion-style
``Encoder`` / ``Decoder``): ``ch`` base channels multiplied per level by ``ch_mult``, ``num_res_blocks``
residual blocks per level in the encoder (one more in the decoder), self-attention at the feature
resolutions listed in ``attn_resolutions`` and in the middle (res-attn-res), GroupNorm + swish
before the output convs. The downsampling factor is ``f = 2 ** (len(ch_mult) - 1)``: 16 for
``ch_mult = (1, 1, 2, 2, 4)``. VQ-VAE (van den Oord et al. 2017) is the same network trained
without the perceptual and adversarial terms; the discriminator lives in ``patchgan.py``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from bigtrain.config.typed import option
from bigtrain.models.quantizers import BETA_ON, QuantizerOutput, VectorQuantizer
from bigtrain.models.registry import build_model, register_model
from bigtrain.models.vq_layers import AttnBlock, Downsample, ResBlock, Upsample, group_norm


def _middle(channels: int, dropout: float, groups: int) -> nn.Module:
    """res-attn-res at the lowest resolution; attribute names as the release's, so its state dicts load."""
    mid = nn.Module()
    mid.block_1 = ResBlock(channels, channels, dropout, groups)
    mid.attn_1 = AttnBlock(channels, groups)
    mid.block_2 = ResBlock(channels, channels, dropout, groups)
    return mid


class Encoder(nn.Module):
    def __init__(
        self,
        in_channels: int,
        ch: int,
        ch_mult: Sequence[int],
        num_res_blocks: int,
        attn_resolutions: Sequence[int],
        resolution: int,
        z_channels: int,
        dropout: float = 0.0,
        groups: int = 32,
    ) -> None:
        super().__init__()
        self.conv_in = nn.Conv2d(in_channels, ch, 3, padding=1)
        self.down = nn.ModuleList()
        res, block_in = resolution, ch
        mults = (1, *ch_mult)
        for level, mult in enumerate(ch_mult):
            stage = nn.Module()
            stage.block = nn.ModuleList()
            stage.attn = nn.ModuleList()
            block_in, block_out = ch * mults[level], ch * mult
            for _ in range(num_res_blocks):
                stage.block.append(ResBlock(block_in, block_out, dropout, groups))
                block_in = block_out
                if res in attn_resolutions:
                    stage.attn.append(AttnBlock(block_in, groups))
            if level != len(ch_mult) - 1:
                stage.downsample = Downsample(block_in)
                res //= 2
            self.down.append(stage)
        self.mid = _middle(block_in, dropout, groups)
        self.norm_out = group_norm(block_in, groups)
        self.conv_out = nn.Conv2d(block_in, z_channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv_in(x)
        for stage in self.down:
            for i, block in enumerate(stage.block):
                h = block(h)
                if len(stage.attn) > 0:
                    h = stage.attn[i](h)
            if hasattr(stage, "downsample"):
                h = stage.downsample(h)
        h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(h)))
        return self.conv_out(F.silu(self.norm_out(h)))


class Decoder(nn.Module):
    def __init__(
        self,
        out_channels: int,
        ch: int,
        ch_mult: Sequence[int],
        num_res_blocks: int,
        attn_resolutions: Sequence[int],
        resolution: int,
        z_channels: int,
        dropout: float = 0.0,
        groups: int = 32,
    ) -> None:
        super().__init__()
        block_in = ch * ch_mult[-1]
        res = resolution // 2 ** (len(ch_mult) - 1)
        self.conv_in = nn.Conv2d(z_channels, block_in, 3, padding=1)
        self.mid = _middle(block_in, dropout, groups)
        # Built from the top level down, stored bottom-up (index = level) like the release, so a
        # state dict's "up.0" is the full-resolution level.
        levels: list[nn.Module] = []
        for level in reversed(range(len(ch_mult))):
            stage = nn.Module()
            stage.block = nn.ModuleList()
            stage.attn = nn.ModuleList()
            block_out = ch * ch_mult[level]
            for _ in range(num_res_blocks + 1):
                stage.block.append(ResBlock(block_in, block_out, dropout, groups))
                block_in = block_out
                if res in attn_resolutions:
                    stage.attn.append(AttnBlock(block_in, groups))
            if level != 0:
                stage.upsample = Upsample(block_in)
                res *= 2
            levels.insert(0, stage)
        self.up = nn.ModuleList(levels)
        self.norm_out = group_norm(block_in, groups)
        self.conv_out = nn.Conv2d(block_in, out_channels, 3, padding=1)

    def forward(self, z: Tensor) -> Tensor:
        h = self.conv_in(z)
        h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(h)))
        for stage in reversed(self.up):
            for i, block in enumerate(stage.block):
                h = block(h)
                if len(stage.attn) > 0:
                    h = stage.attn[i](h)
            if hasattr(stage, "upsample"):
                h = stage.upsample(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class VQModel(nn.Module):
    """``encode(x) -> (z_q, QuantizerOutput)``, ``decode(z_q) -> x_rec``, ``forward(x) -> (x_rec, q)``.

    Images are in [-1, 1]; ``x_rec`` is not squashed (as in the release: the L1 loss and LPIPS
    see the raw output, sampling clamps it).
    """

    def __init__(
        self,
        resolution: int,
        channels: int,
        ch: int = 128,
        ch_mult: Sequence[int] = (1, 1, 2, 2, 4),
        num_res_blocks: int = 2,
        attn_resolutions: Sequence[int] = (16,),
        z_channels: int = 256,
        embed_dim: int = 256,
        num_codes: int = 1024,
        dropout: float = 0.0,
        groups: int = 32,
        quantizer: VectorQuantizer | None = None,
    ) -> None:
        super().__init__()
        f = 2 ** (len(ch_mult) - 1)
        if resolution % f != 0:
            raise ValueError(f"resolution {resolution} is not divisible by the downsampling factor {f}")
        self.resolution, self.channels, self.factor = resolution, channels, f
        self.num_codes, self.embed_dim = num_codes, embed_dim
        attn = tuple(int(r) for r in attn_resolutions)
        self.encoder = Encoder(
            channels, ch, ch_mult, num_res_blocks, attn, resolution, z_channels, dropout, groups
        )
        self.decoder = Decoder(
            channels, ch, ch_mult, num_res_blocks, attn, resolution, z_channels, dropout, groups
        )
        self.quant_conv = nn.Conv2d(z_channels, embed_dim, 1)
        self.post_quant_conv = nn.Conv2d(embed_dim, z_channels, 1)
        self.quantize = quantizer if quantizer is not None else VectorQuantizer(num_codes, embed_dim)

    @property
    def token_grid(self) -> int:
        """Tokens per side: an image becomes ``token_grid ** 2`` codes."""
        return self.resolution // self.factor

    def encode(self, x: Tensor) -> tuple[Tensor, QuantizerOutput]:
        q = self.quantize(self.quant_conv(self.encoder(x)))
        return q.z_q, q

    def decode(self, z_q: Tensor) -> Tensor:
        return self.decoder(self.post_quant_conv(z_q))

    def encode_indices(self, x: Tensor) -> Tensor:
        """Token ids ``[B, h, w]`` of images ``x`` (what ``bigtrain tokenize`` writes and
        ``bigtrain.load``'s ``encode`` returns)."""
        return self.quantize.encode_indices(self.quant_conv(self.encoder(x)))

    def decode_indices(self, indices: Tensor) -> Tensor:
        """Images from token ids ``[B, h, w]`` (what the prior samples)."""
        return self.decode(self.quantize.lookup(indices))

    def forward(self, x: Tensor) -> tuple[Tensor, QuantizerOutput]:
        z_q, q = self.encode(x)
        return self.decode(z_q), q

    def last_layer(self) -> nn.Parameter:
        """The decoder's output conv weight: where the adaptive GAN weight compares gradients."""
        return self.decoder.conv_out.weight


@dataclass
class VQGANArch:
    """``model.arch`` of the tokenizer; the defaults are the release's ImageNet f16 model."""

    ch: int = option(128, "base width of the encoder and decoder")
    ch_mult: list[int] = option([1, 1, 2, 2, 4], "width multiple per level; f = 2^(levels - 1)")
    num_res_blocks: int = option(2, "residual blocks per level")
    attn_resolutions: list[int] = option([16], "feature-map sizes with attention")
    z_channels: int = option(256, "encoder output channels")
    embed_dim: int = option(256, "code vector width")
    num_codes: int = option(1024, "codebook size")
    dropout: float = option(0.0, "dropout in residual blocks")
    groups: int = option(32, "GroupNorm groups")
    beta: float = option(0.25, "weight of one straight-through term (beta_on)")
    beta_on: str = option(
        "codebook",
        "codebook: commitment + beta * codebook, as taming's released models (legacy=True) | "
        "commitment: codebook + beta * commitment, as the VQ-VAE paper (quantizer=st only)",
    )
    quantizer: str = option("st", "st: straight-through, learned codebook | ema: EMA codebook updates")
    ema_decay: float = option(0.99, "EMA codebook decay (quantizer=ema)")
    l2_normalize: bool = option(False, "cosine (unit-sphere) code matching")
    restart_after: int = option(0, "re-initialise codes unused for this many steps (0 = never)")


@register_model(
    "vqgan", kind="tokenizer", arch=VQGANArch, help="Esser et al. 2021, as released in taming-transformers"
)
def _build_vqgan_family(*, resolution: int, channels: int, arch: VQGANArch) -> VQModel:
    """A :class:`VQModel` from its typed options."""
    a = arch
    if a.quantizer not in ("st", "ema"):
        raise ValueError(f"model.arch.quantizer must be 'st' or 'ema', got {a.quantizer!r}")
    if a.beta_on not in BETA_ON:
        raise ValueError(f"model.arch.beta_on must be one of {', '.join(BETA_ON)}, got {a.beta_on!r}")
    quantizer = VectorQuantizer(
        a.num_codes,
        a.embed_dim,
        beta=float(a.beta),
        beta_on=a.beta_on,
        ema=a.quantizer == "ema",
        decay=float(a.ema_decay),
        l2_normalize=a.l2_normalize,
        restart_after=a.restart_after,
    )
    return VQModel(
        resolution,
        channels,
        ch=a.ch,
        ch_mult=tuple(a.ch_mult),
        num_res_blocks=a.num_res_blocks,
        attn_resolutions=tuple(a.attn_resolutions),
        z_channels=a.z_channels,
        embed_dim=a.embed_dim,
        num_codes=a.num_codes,
        dropout=float(a.dropout),
        groups=a.groups,
        quantizer=quantizer,
    )


def build_vqgan(*, resolution: int, channels: int, **arch: Any) -> VQModel:
    """A :class:`VQModel` from ``model.arch`` options as keywords; an unknown key is an error naming it."""
    return build_model("vqgan", arch, resolution=resolution, channels=channels)


__all__ = ["Decoder", "Encoder", "VQGANArch", "VQModel", "build_vqgan"]
