"""BigGAN (Brock, Donahue & Simonyan 2019, "Large Scale GAN Training for High Fidelity Natural Image
Synthesis"), following the authors' PyTorch release (ajbrock/BigGAN-PyTorch, ``BigGAN.py``).

Generator: ``z`` (optionally split into chunks, "hierarchical latents") -> SN-linear -> 4x4 map ->
residual up-blocks with conditional BatchNorm -> BN -> ReLU -> SN-conv3x3 -> tanh. Class information
enters only through the BN gains and biases, predicted from a shared class embedding (concatenated
with a ``z`` chunk when ``hier``).

Discriminator: residual down-blocks (SN everywhere) -> ReLU -> global sum pooling -> SN-linear, plus
the projection term ``<embed(y), h>`` of Miyato & Koyama 2018 (eq. 3) for conditional models.

With ``ch = 96``, ``z_dim = 120``, ``shared_dim = 128``, ``hier = True``, attention at 64x64 and
1000 classes, the 128x128 pair has exactly the release's 70,433,988 (G) and 87,982,370 (D)
learnable parameters; spectral-norm power-iteration vectors are buffers, not parameters.

``grow=True`` (``model.arch.grow``) lets both networks train in progressive resolution stages
(``bigtrain.models.growing``) with their residual blocks faded in: G gets an output head (BN ->
ReLU -> SN-conv3x3 -> tanh, like its own) for every lower resolution, D an SN 1x1 from-image conv
into the first block at each lower input resolution (that block's leading ReLU acts on it). At the
final stage both compute exactly the non-growing networks, whose parameters keep their names.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bigtrain.config.typed import option
from bigtrain.models.biggan_layers import (
    BigGANFamilyArch,
    ConditionalBatchNorm,
    DBlock,
    GBlock,
    NormFactory,
    ProjectionDiscriminator,
    RGBHead,
    SelfAttention,
    apply_init,
    attention_resolutions,
    batch_norm_2d,
    grown_features,
    grown_images,
    init_orthogonal,
    sn_conv2d,
    sn_embedding,
    sn_linear,
)
from bigtrain.models.common import check_labels as _labels
from bigtrain.models.growing import Growing
from bigtrain.models.registry import GANShape, register_model

BOTTOM_WIDTH = 4
"""Spatial size of G's first feature map (and of D's last)."""


@dataclass(frozen=True)
class _Stage:
    """One residual block of an architecture table: channels and the resolution it outputs."""

    in_mult: int
    out_mult: int
    resolution: int
    resample: bool


# Channel multipliers (of ``ch``) per block, from the release's ``G_arch`` / ``D_arch``. G blocks all
# upsample; the resolution listed is each block's output resolution.
_G_ARCH: dict[int, tuple[list[int], list[int]]] = {
    512: ([16, 16, 8, 8, 4, 2, 1], [16, 8, 8, 4, 2, 1, 1]),
    256: ([16, 16, 8, 8, 4, 2], [16, 8, 8, 4, 2, 1]),
    128: ([16, 16, 8, 4, 2], [16, 8, 4, 2, 1]),
    64: ([16, 16, 8, 4], [16, 8, 4, 2]),
    32: ([4, 4, 4], [4, 4, 4]),
}
# D: input multipliers exclude the image (first block), ``True`` marks a downsampling block. The 512
# table is not in the release's ``BigGAN.py``; it is the paper's appendix-B 512x512 D (one more
# ``ch -> ch`` down-block in front of the 256x256 one), as in the TF-Hub BigGAN-512 model.
_D_ARCH: dict[int, tuple[list[int], list[int], list[bool]]] = {
    512: ([1, 1, 2, 4, 8, 8, 16], [1, 1, 2, 4, 8, 8, 16, 16], [True] * 7 + [False]),
    256: ([1, 2, 4, 8, 8, 16], [1, 2, 4, 8, 8, 16, 16], [True] * 6 + [False]),
    128: ([1, 2, 4, 8, 16], [1, 2, 4, 8, 16, 16], [True] * 5 + [False]),
    64: ([1, 2, 4, 8], [1, 2, 4, 8, 16], [True] * 4 + [False]),
    32: ([4, 4, 4], [4, 4, 4, 4], [True, True, False, False]),
}

SUPPORTED_RESOLUTIONS = tuple(sorted(_G_ARCH))


def _g_stages(resolution: int) -> list[_Stage]:
    if resolution not in _G_ARCH:
        raise ValueError(f"BigGAN resolution must be one of {SUPPORTED_RESOLUTIONS}, got {resolution}")
    ins, outs = _G_ARCH[resolution]
    return [
        _Stage(i, o, BOTTOM_WIDTH * 2 ** (k + 1), True)
        for k, (i, o) in enumerate(zip(ins, outs, strict=True))
    ]


def _d_stages(resolution: int) -> list[_Stage]:
    """D blocks with the resolution each one *outputs*.

    The release's 32x32 table labels all four blocks "16" although the second downsamples to 8x8, so
    ``attention=(16,)`` there would add attention after every block; here it goes after the first
    only. The other tables agree with the computed resolutions.
    """
    if resolution not in _D_ARCH:
        raise ValueError(f"BigGAN resolution must be one of {SUPPORTED_RESOLUTIONS}, got {resolution}")
    ins, outs, downs = _D_ARCH[resolution]
    stages, res = [], resolution
    for i, o, down in zip([0, *ins], outs, downs, strict=True):
        res = res // 2 if down else res
        stages.append(_Stage(i, o, res, down))
    return stages


class BigGANGenerator(Growing, nn.Module):
    """BigGAN generator; ``forward(z [B, z_dim], y [B] | None) -> [B, channels, R, R]`` in [-1, 1].

    Conditioning of the BN layers (each residual block's two BNs share one vector):

    * conditional, ``shared_dim > 0``: one ``nn.Embedding(num_classes, shared_dim)`` shared by all
      blocks (not spectrally normalised: the release found SN on it hurt G); with ``hier`` each block
      gets ``[embed(y), z_chunk]`` (embedding first, as in the release).
    * conditional, ``shared_dim == 0``: every BN has its own class-embedding gain/bias tables (the
      release with ``G_shared=False``, e.g. its CIFAR setting); incompatible with ``hier``.
    * unconditional: with ``hier`` the BNs are conditioned on the ``z`` chunk alone; without it they
      are ordinary affine BNs.

    ``hier``: ``z`` is split into one chunk per block plus one for the input linear (paper
    section 4 / appendix B), so each resolution gets its own latent. The release truncates
    ``z_dim`` to a multiple of the number of chunks; to keep ``z_dim`` exactly as configured, the
    remainder goes to the first (input-linear) chunk instead, which is the same split whenever
    ``z_dim`` divides evenly (e.g. 120 at 128x128: six chunks of 20; 140 at 256x256).

    ``attention`` lists the resolutions after whose block a :class:`SelfAttention` is inserted
    (resolutions the model does not produce are ignored, as in the release). ``sn_eps`` is the
    spectral-norm epsilon (release default 1e-8, its ImageNet scripts 1e-6), ``bn_eps`` the BN one.
    ``cross_replica_bn`` marks the model (attribute ``cross_replica_bn``) so that the trainer swaps
    its BatchNorm layers for cross-replica ones when several processes train
    (``bigtrain.distributed.sync_bn``); the model itself stays single-device.
    """

    def __init__(
        self,
        resolution: int,
        channels: int,
        num_classes: int,
        z_dim: int = 120,
        ch: int = 96,
        shared_dim: int = 128,
        hier: bool = True,
        attention: Iterable[int] = (64,),
        sn_eps: float = 1e-6,
        bn_eps: float = 1e-5,
        cross_replica_bn: bool = False,
        sn_itrs: int = 1,
        grow: bool = False,
    ) -> None:
        super().__init__()
        stages = _g_stages(resolution)
        attn = attention_resolutions(attention)
        self.resolution = resolution
        self.channels = channels
        self.num_classes = num_classes
        self.z_dim = z_dim
        self.ch = ch
        self.hier = hier
        conditional = num_classes > 0
        self.shared_dim = shared_dim if conditional else 0
        if conditional and shared_dim <= 0 and hier:
            raise ValueError(
                "hierarchical z needs a shared class embedding (shared_dim > 0) in a conditional G; "
                "set hier=False for per-layer class embeddings"
            )

        num_blocks = len(stages)
        if hier:
            chunk = z_dim // (num_blocks + 1)
            if chunk < 1:
                raise ValueError(f"z_dim={z_dim} is too small to split into {num_blocks + 1} chunks")
            self.z_splits: list[int] = [z_dim - chunk * num_blocks] + [chunk] * num_blocks
        else:
            chunk = 0
            self.z_splits = [z_dim]

        self.cross_replica_bn = cross_replica_bn
        bn_kw = {"eps": bn_eps, "cross_replica": cross_replica_bn}
        self.shared: nn.Embedding | None = None
        make_norm: NormFactory
        if conditional and self.shared_dim > 0:
            self.shared = nn.Embedding(num_classes, self.shared_dim)
            make_norm = functools.partial(
                _cbn,
                cond_dim=self.shared_dim + chunk,
                embedding=False,
                sn_eps=sn_eps,
                sn_itrs=sn_itrs,
                **bn_kw,
            )
        elif conditional:
            make_norm = functools.partial(
                _cbn, cond_dim=num_classes, embedding=True, sn_eps=sn_eps, sn_itrs=sn_itrs, **bn_kw
            )
        elif hier:
            make_norm = functools.partial(
                _cbn, cond_dim=chunk, embedding=False, sn_eps=sn_eps, sn_itrs=sn_itrs, **bn_kw
            )
        else:
            make_norm = functools.partial(batch_norm_2d, affine=True, **bn_kw)

        self.linear = sn_linear(
            self.z_splits[0], ch * stages[0].in_mult * BOTTOM_WIDTH**2, sn_eps=sn_eps, sn_itrs=sn_itrs
        )
        self.blocks = nn.ModuleList()
        self.attention = nn.ModuleDict()
        for index, stage in enumerate(stages):
            self.blocks.append(
                GBlock(
                    ch * stage.in_mult,
                    ch * stage.out_mult,
                    make_norm=make_norm,
                    upsample=stage.resample,
                    sn_eps=sn_eps,
                    sn_itrs=sn_itrs,
                )
            )
            if stage.resolution in attn:
                self.attention[str(index)] = SelfAttention(
                    ch * stage.out_mult, sn_eps=sn_eps, sn_itrs=sn_itrs
                )
        out_ch = ch * stages[-1].out_mult
        # Output head: affine BN -> ReLU -> SN conv3x3 (tanh applied in forward).
        self.out_bn = batch_norm_2d(out_ch, affine=True, **bn_kw)
        self.out_conv = sn_conv2d(out_ch, channels, sn_eps=sn_eps, sn_itrs=sn_itrs)
        # growing: a head on the 4x4 map and after every block but the last (keyed by resolution)
        widths = [ch * stages[0].in_mult] + [ch * st.out_mult for st in stages[:-1]]
        self.to_rgb = nn.ModuleDict(
            {
                str(BOTTOM_WIDTH * 2**j): RGBHead(
                    w, channels, batch_norm_2d(w, affine=True, **bn_kw), sn_eps, sn_itrs
                )
                for j, w in enumerate(widths if grow else [])
            }
        )
        self.init_growing(
            [BOTTOM_WIDTH * 2**j for j in range(len(stages) + 1)] if grow else [resolution], resolution
        )
        init_orthogonal(self)

    def _to_image(self, j: int, h: Tensor) -> Tensor:
        """The image after ``j`` blocks (``4 * 2^j`` px)."""
        if j == len(self.blocks):
            return torch.tanh(self.out_conv(F.relu(self.out_bn(h))))
        return self.to_rgb[str(BOTTOM_WIDTH * 2**j)](h)

    def block_conditions(self, z: Tensor, y: Tensor | None) -> tuple[Tensor, list[Tensor | None]]:
        """Split ``z`` into the input-linear latent and the per-block BN conditioning inputs."""
        zs = list(torch.split(z, self.z_splits, dim=1))
        z0, chunks = zs[0], zs[1:]
        n = len(self.blocks)
        if self.num_classes > 0 and self.shared is not None:
            assert y is not None
            emb = self.shared(y)
            if self.hier:
                return z0, [torch.cat([emb, c], dim=1) for c in chunks]
            return z0, [emb] * n
        if self.num_classes > 0:
            return z0, [y] * n
        if self.hier:
            return z0, list(chunks)
        return z0, [None] * n

    def forward(self, z: Tensor, y: Tensor | None = None) -> Tensor:
        """Map noise ``z: [B, z_dim]`` (and labels ``y: [B]``) to images ``[B, C, H, W]`` in [-1, 1]."""
        if z.ndim != 2 or z.shape[1] != self.z_dim:
            raise ValueError(f"z must have shape [B, {self.z_dim}], got {list(z.shape)}")
        y = _labels(y, self.num_classes, z.shape[0])
        z0, conds = self.block_conditions(z, y)
        h = self.linear(z0).view(z.shape[0], -1, BOTTOM_WIDTH, BOTTOM_WIDTH)
        return grown_images(h, self, conds, list(range(len(self.blocks) + 1)), self._to_image)


def _cbn(
    num_features: int,
    *,
    cond_dim: int,
    embedding: bool,
    eps: float,
    cross_replica: bool,
    sn_eps: float,
    sn_itrs: int,
) -> ConditionalBatchNorm:
    return ConditionalBatchNorm(
        num_features,
        cond_dim,
        embedding=embedding,
        eps=eps,
        cross_replica=cross_replica,
        sn_eps=sn_eps,
        sn_itrs=sn_itrs,
    )


class BigGANDiscriminator(Growing, ProjectionDiscriminator):
    """BigGAN discriminator; ``forward(x [B, C, R, R], y [B] | None) -> [B]`` raw logits.

    Every conv, the output linear and the projection embedding are spectrally normalised. The first
    block is not pre-activated (it sees images); ``wide`` picks the SAGAN/BigGAN channel pattern in
    the blocks (see :class:`~bigtrain.models.biggan_layers.DBlock`). Features are rectified and
    sum-pooled (SNGAN), then scored by a linear layer plus, for conditional models, the projection
    ``<embed(y), h>`` (Miyato & Koyama 2018, eq. 3).
    """

    def __init__(
        self,
        resolution: int,
        channels: int,
        num_classes: int,
        ch: int = 96,
        attention: Iterable[int] = (64,),
        sn_eps: float = 1e-6,
        wide: bool = True,
        sn_itrs: int = 1,
        grow: bool = False,
    ) -> None:
        super().__init__()
        stages = _d_stages(resolution)
        attn = attention_resolutions(attention)
        self.resolution = resolution
        self.channels = channels
        self.num_classes = num_classes
        self.ch = ch
        self.blocks = nn.ModuleList()
        self.attention = nn.ModuleDict()
        for index, stage in enumerate(stages):
            in_ch = channels if index == 0 else ch * stage.in_mult
            self.blocks.append(
                DBlock(
                    in_ch,
                    ch * stage.out_mult,
                    wide=wide,
                    preactivation=index > 0,
                    downsample=stage.resample,
                    sn_eps=sn_eps,
                    sn_itrs=sn_itrs,
                )
            )
            if stage.resolution in attn:
                self.attention[str(index)] = SelfAttention(
                    ch * stage.out_mult, sn_eps=sn_eps, sn_itrs=sn_itrs
                )
        out_ch = ch * stages[-1].out_mult
        self.linear = sn_linear(out_ch, 1, sn_eps=sn_eps, sn_itrs=sn_itrs)
        self.embed = (
            sn_embedding(num_classes, out_ch, sn_eps=sn_eps, sn_itrs=sn_itrs) if num_classes > 0 else None
        )
        # growing: the first block that takes each input resolution, and an SN 1x1 from-image conv
        # into it for every resolution below the full one
        self.entry: dict[int, int] = {}
        for index, stage in enumerate(stages):
            self.entry.setdefault(stage.resolution * 2 if stage.resample else stage.resolution, index)
        self.from_rgb = nn.ModuleDict(
            {
                str(r): sn_conv2d(
                    channels, ch * stages[i].in_mult, kernel_size=1, sn_eps=sn_eps, sn_itrs=sn_itrs
                )
                for r, i in self.entry.items()
                if grow and r < resolution
            }
        )
        self.init_growing(list(self.entry) if grow else [resolution], resolution)
        init_orthogonal(self)

    def _from_image(self, r: int, x: Tensor) -> Tensor:
        return x if r == self.resolution else self.from_rgb[str(r)](x)

    def features(self, x: Tensor) -> Tensor:
        """Rectified, globally sum-pooled features ``[B, 16 ch]`` that the logit is computed from."""
        return F.relu(grown_features(x, self, self._from_image)).sum(dim=(2, 3))


@dataclass
class BigGANArch(BigGANFamilyArch):
    hier: bool = option(True, "hierarchical z: a chunk of z into every G block")
    wide: bool = option(True, "D's blocks widen on their first conv (the release's D_wide)")


@register_model(
    "biggan", kind="gan", arch=BigGANArch, help="Brock et al. 2019, as released in BigGAN-PyTorch"
)
def build_biggan(shape: GANShape, arch: BigGANArch) -> tuple[BigGANGenerator, BigGANDiscriminator]:
    """A BigGAN ``(G, D)`` pair. ``g_width`` / ``d_width`` are the release's ``G_ch`` / ``D_ch``;
    the ``arch`` defaults are its 128x128 ImageNet settings, its CIFAR ones ``hier=False,
    shared_dim=0, attention=[]`` with widths 64 and ``z_dim=128``. D has spectral norm only, so
    ``d_norm`` is moot (and per-sample penalties such as WGAN-GP's are safe)."""
    g = BigGANGenerator(
        shape.resolution,
        shape.channels,
        shape.num_classes,
        z_dim=shape.z_dim,
        ch=shape.g_width,
        shared_dim=arch.shared_dim,
        hier=arch.hier,
        attention=arch.attention_of("G"),
        sn_eps=arch.sn_eps_of("G"),
        bn_eps=float(arch.bn_eps),
        cross_replica_bn=arch.cross_replica_bn,
        sn_itrs=arch.sn_itrs,
        grow=arch.grow,
    )
    d = BigGANDiscriminator(
        shape.resolution,
        shape.channels,
        shape.num_classes,
        ch=shape.d_width,
        attention=arch.attention_of("D"),
        sn_eps=arch.sn_eps_of("D"),
        wide=arch.wide,
        sn_itrs=arch.sn_itrs,
        grow=arch.grow,
    )
    apply_init((g, d), arch.init)
    return g, d


__all__ = ["SUPPORTED_RESOLUTIONS", "BigGANArch", "BigGANDiscriminator", "BigGANGenerator", "build_biggan"]
