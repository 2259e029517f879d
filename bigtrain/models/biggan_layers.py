"""Building blocks of BigGAN (Brock, Donahue & Simonyan 2019, "Large Scale GAN Training for High
Fidelity Natural Image Synthesis").

The layer choices follow the authors' PyTorch release (ajbrock/BigGAN-PyTorch, ``layers.py``), which
differs from the paper's text in a few places (e.g. the self-attention channel reductions and the
max-pooling in its key/value paths); where it does, the release is followed and the docstring says so.

* Spectral normalisation (Miyato et al. 2018) is one power iteration per training forward pass on a
  persistent left singular vector ``u``, kept as a *buffer*: only the raw weight is learnable, so
  parameter counts match the release's.
* :class:`ConditionalBatchNorm` is BatchNorm without affine parameters followed by a per-sample gain
  ``1 + W_g c`` and bias ``W_b c`` (paper section 3 and appendix B), ``c`` being a class embedding,
  optionally concatenated with a chunk of ``z`` ("hierarchical latent space").
* the paper's off-diagonal orthogonal regularisation (section 3.1) is
  :func:`bigtrain.losses.regularizers.orthogonal_penalty`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils import parametrize

from bigtrain.config.typed import option
from bigtrain.config.validate import ATTENTION_KERNELS

NormFactory = Callable[[int], nn.Module]
"""``make_norm(num_channels) -> norm layer``; a :class:`ConditionalBatchNorm` or a plain BN layer."""


# --------------------------------------------------------------------------------------------------
# Spectral normalisation
# --------------------------------------------------------------------------------------------------


class SpectralNorm(nn.Module):
    """Parametrization ``W -> W / sigma(W)`` with ``sigma`` estimated by power iteration.

    ``W`` is viewed as a matrix ``[out, -1]`` (for an embedding, ``[num_embeddings, dim]``). As in the
    BigGAN release, only the top singular value is estimated (``num_svs = 1``), the left singular
    vector ``u`` persists across steps (so one iteration per step suffices once it has converged,
    Miyato et al. 2018, section 2.1) and is only updated in training mode; in eval mode one iteration
    is still run from the stored ``u`` but nothing is written back. ``eps`` guards the normalisations
    (the release uses 1e-6 for both networks in its ImageNet scripts; its default is 1e-8).

    ``u`` and ``v`` are treated as constants in the backward pass: gradients flow through
    ``sigma = v W^T u^T`` only via ``W``, as in the paper and the release.
    """

    u: Tensor
    sv: Tensor

    def __init__(self, out_features: int, num_itrs: int = 1, eps: float = 1e-6) -> None:
        super().__init__()
        if num_itrs < 1:
            raise ValueError(f"num_itrs must be >= 1, got {num_itrs}")
        self.num_itrs = num_itrs
        self.eps = eps
        self.register_buffer("u", torch.randn(1, out_features))
        # Last estimate of the top singular value, for logging only (the release keeps it as well).
        self.register_buffer("sv", torch.ones(1))

    def forward(self, weight: Tensor) -> Tensor:
        w = weight.flatten(1)
        with torch.no_grad():
            u = self.u
            # In eval mode ``u`` is never written back, so iterating more than once from the same
            # start would repeat the same step: one iteration gives the release's eval behaviour.
            for _ in range(self.num_itrs if self.training else 1):
                v = F.normalize(u @ w, dim=1, eps=self.eps)
                u = F.normalize(v @ w.t(), dim=1, eps=self.eps)
        sigma = (v @ w.t() @ u.t()).squeeze()
        if self.training:
            with torch.no_grad():
                self.u.copy_(u)
                self.sv.copy_(sigma.detach())
        return weight / sigma

    def extra_repr(self) -> str:
        return f"num_itrs={self.num_itrs}, eps={self.eps}"


def spectral_norm(module: nn.Module, *, num_itrs: int = 1, eps: float = 1e-6) -> nn.Module:
    """Spectrally normalise ``module.weight`` in place (via ``torch.nn.utils.parametrize``).

    The module stays a plain ``nn.Conv2d`` / ``nn.Linear`` / ``nn.Embedding``, so generic code
    (init, ``convert_sync_batchnorm``, state-dict tools) keeps working; the learnable tensor becomes
    ``module.parametrizations.weight.original``.
    """
    weight = module.weight
    if not isinstance(weight, Tensor):
        raise TypeError(f"{type(module).__name__} has no weight tensor to normalise")
    parametrize.register_parametrization(
        module, "weight", SpectralNorm(weight.shape[0], num_itrs=num_itrs, eps=eps)
    )
    return module


def raw_weight(module: nn.Module) -> Tensor:
    """The learnable weight of ``module``: the un-normalised one if it is spectrally normalised."""
    if parametrize.is_parametrized(module, "weight"):
        return module.parametrizations.weight.original
    return module.weight


def sn_conv2d(
    in_channels: int,
    out_channels: int,
    kernel_size: int = 3,
    padding: int | None = None,
    bias: bool = True,
    *,
    sn_eps: float = 1e-6,
    sn_itrs: int = 1,
) -> nn.Conv2d:
    """Spectrally normalised conv; ``padding`` defaults to "same" for odd kernels (3x3 -> 1)."""
    pad = kernel_size // 2 if padding is None else padding
    conv = nn.Conv2d(in_channels, out_channels, kernel_size, padding=pad, bias=bias)
    spectral_norm(conv, num_itrs=sn_itrs, eps=sn_eps)
    return conv


def sn_linear(
    in_features: int, out_features: int, bias: bool = True, *, sn_eps: float = 1e-6, sn_itrs: int = 1
) -> nn.Linear:
    """Spectrally normalised linear layer."""
    linear = nn.Linear(in_features, out_features, bias=bias)
    spectral_norm(linear, num_itrs=sn_itrs, eps=sn_eps)
    return linear


def sn_embedding(
    num_embeddings: int, embedding_dim: int, *, sn_eps: float = 1e-6, sn_itrs: int = 1
) -> nn.Embedding:
    """Spectrally normalised embedding (the projection discriminator's class matrix).

    The matrix is ``[num_embeddings, dim]`` and normalised as is, i.e. ``u`` has ``num_embeddings``
    entries, as in the release.
    """
    embedding = nn.Embedding(num_embeddings, embedding_dim)
    spectral_norm(embedding, num_itrs=sn_itrs, eps=sn_eps)
    return embedding


# --------------------------------------------------------------------------------------------------
# Normalisation
# --------------------------------------------------------------------------------------------------


def batch_norm_2d(
    num_features: int, *, affine: bool, eps: float = 1e-5, momentum: float = 0.1, cross_replica: bool = False
) -> nn.BatchNorm2d:
    """``nn.BatchNorm2d``. Cross-replica statistics (paper appendix C) are applied from outside:
    the model only records ``cross_replica_bn`` and the trainer swaps these layers with
    ``bigtrain.distributed.sync_bn.convert_cross_replica_bn`` when several processes train, so
    model code stays single-device. ``cross_replica`` is accepted for the call sites' clarity.
    """
    del cross_replica
    return nn.BatchNorm2d(num_features, eps=eps, momentum=momentum, affine=affine)


class ConditionalBatchNorm(nn.Module):
    """BatchNorm whose scale and shift are predicted from a conditioning input.

    ``out = BN(x) * (1 + gain(c)) + bias(c)`` (de Vries et al. 2017; Dumoulin et al. 2017), with the
    BN itself non-affine. The ``1 +`` makes the layer start near plain BN when ``gain(c)`` is small.

    * ``embedding=False``: ``c`` is a float vector of ``cond_dim`` (shared class embedding, possibly
      concatenated with a ``z`` chunk, or a ``z`` chunk alone) and ``gain`` / ``bias`` are bias-free
      linear maps, spectrally normalised like every other G layer in the release.
    * ``embedding=True``: ``c`` is a class index and ``gain`` / ``bias`` are ``nn.Embedding`` tables
      of ``cond_dim`` rows, the release's layout when G has no shared embedding.

    The statistics live in a child ``nn.BatchNorm2d(affine=False)``, so a converter (cross-replica
    BN, ``nn.SyncBatchNorm.convert_sync_batchnorm``) finds and replaces it.
    """

    def __init__(
        self,
        num_features: int,
        cond_dim: int,
        *,
        embedding: bool = False,
        eps: float = 1e-5,
        momentum: float = 0.1,
        cross_replica: bool = False,
        sn_eps: float = 1e-6,
        sn_itrs: int = 1,
    ) -> None:
        super().__init__()
        if cond_dim <= 0:
            raise ValueError(f"cond_dim must be positive, got {cond_dim}")
        self.num_features = num_features
        self.cond_dim = cond_dim
        self.embedding = embedding
        self.gain: nn.Module
        self.bias: nn.Module
        if embedding:
            self.gain = nn.Embedding(cond_dim, num_features)
            self.bias = nn.Embedding(cond_dim, num_features)
        else:
            self.gain = sn_linear(cond_dim, num_features, bias=False, sn_eps=sn_eps, sn_itrs=sn_itrs)
            self.bias = sn_linear(cond_dim, num_features, bias=False, sn_eps=sn_eps, sn_itrs=sn_itrs)
        self.bn = batch_norm_2d(
            num_features, affine=False, eps=eps, momentum=momentum, cross_replica=cross_replica
        )

    def forward(self, x: Tensor, cond: Tensor) -> Tensor:
        gain = 1.0 + self.gain(cond)
        bias = self.bias(cond)
        return self.bn(x) * gain[:, :, None, None] + bias[:, :, None, None]

    def extra_repr(self) -> str:
        kind = "embedding" if self.embedding else "linear"
        return f"num_features={self.num_features}, cond_dim={self.cond_dim}, {kind}"


# --------------------------------------------------------------------------------------------------
# Self-attention
# --------------------------------------------------------------------------------------------------


class SelfAttention(nn.Module):
    """SAGAN non-local block (Zhang et al. 2019) as released with BigGAN.

    Query (``theta``) and key (``phi``) use ``ch / 8`` channels, value (``g``) ``ch / 2``, and an
    output 1x1 conv maps back to ``ch``; all four are bias-free spectrally normalised 1x1 convs. Keys
    and values are 2x2 max-pooled, so each of the ``H*W`` queries attends over ``H*W/4`` positions
    (4x cheaper than the paper's description). ``gamma`` starts at 0, so the block is the identity at
    init and the network learns how much non-local evidence to mix in.
    """

    def __init__(self, channels: int, *, sn_eps: float = 1e-6, sn_itrs: int = 1) -> None:
        super().__init__()
        if channels % 8 != 0:
            raise ValueError(f"SelfAttention needs channels divisible by 8, got {channels}")
        self.channels = channels
        # "matmul": the release's three ops (its exact arithmetic); "sdpa": one fused kernel
        # (set by :func:`use_attention_kernel`, i.e. ``trainer.attention_kernel``)
        self.kernel = "matmul"
        kw = {"kernel_size": 1, "padding": 0, "bias": False, "sn_eps": sn_eps, "sn_itrs": sn_itrs}
        self.theta = sn_conv2d(channels, channels // 8, **kw)
        self.phi = sn_conv2d(channels, channels // 8, **kw)
        self.g = sn_conv2d(channels, channels // 2, **kw)
        self.o = sn_conv2d(channels // 2, channels, **kw)
        self.gamma = nn.Parameter(torch.zeros(()))

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        theta = self.theta(x).flatten(2)  # [B, C/8, HW]
        phi = F.max_pool2d(self.phi(x), 2).flatten(2)  # [B, C/8, HW/4]
        g = F.max_pool2d(self.g(x), 2).flatten(2)  # [B, C/2, HW/4]
        if self.kernel == "sdpa":
            out = _fused_attention(theta, phi, g).view(b, c // 2, h, w)
        else:
            attn = torch.softmax(theta.transpose(1, 2) @ phi, dim=-1)  # [B, HW, HW/4]
            out = (g @ attn.transpose(1, 2)).view(b, c // 2, h, w)
        return x + self.gamma * self.o(out)

    def extra_repr(self) -> str:
        return f"channels={self.channels}, kernel={self.kernel}"


def _fused_attention(theta: Tensor, phi: Tensor, g: Tensor) -> Tensor:
    """``g @ softmax(theta^T phi)^T`` as one ``scaled_dot_product_attention`` call: a single head,
    scale 1 (the release does not divide by sqrt(d)). The [HW, HW/4] weights are never stored, which
    is what saves time and memory at 64x64 (a 4096 x 1024 matrix per image, forward and backward).

    Query and key get zero channels up to a multiple of 8: the dot products are unchanged, and the
    GPU's fused kernels want 16-byte aligned rows (BigGAN-128's D attends with 96 / 8 = 12).
    Inputs are ``[B, C, N]``; the result is ``[B, C_g, HW]`` like the matmul path's.
    """
    q, k, v = attention_heads(theta, phi, g)
    out = F.scaled_dot_product_attention(q, k, v, scale=1.0)  # [B, 1, HW, C_g]
    return out.squeeze(1).transpose(1, 2)


def attention_heads(theta: Tensor, phi: Tensor, g: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Query, key and value ``[B, 1, N, C]`` as the fused kernels take them: channels last in
    memory (their rows must be dense: from NCHW maps this copies, from channels_last ones it is a
    view) and the query and key widths zero-padded to a multiple of 8."""
    q, k, v = (t.transpose(1, 2).unsqueeze(1).contiguous() for t in (theta, phi, g))
    pad = -q.shape[-1] % 8
    if pad:
        q, k = F.pad(q, (0, pad)), F.pad(k, (0, pad))
    return q, k, v


def use_attention_kernel(model: nn.Module, kernel: str) -> int:
    """Switch every :class:`SelfAttention` in ``model`` to ``kernel`` ("matmul" or "sdpa"); returns
    how many were switched. The parameters and the function are the same (the outputs agree to
    float rounding, ``tests/unit/test_gan_speed_levers.py``), so checkpoints move freely between the two."""
    if kernel not in ATTENTION_KERNELS:
        raise ValueError(f"attention kernel must be one of {', '.join(ATTENTION_KERNELS)}, got '{kernel}'")
    n = 0
    for m in model.modules():
        if isinstance(m, SelfAttention):
            m.kernel = kernel
            n += 1
    return n


# --------------------------------------------------------------------------------------------------
# Residual blocks
# --------------------------------------------------------------------------------------------------


def run_blocks(
    h: Tensor,
    blocks: nn.ModuleList,
    attention: nn.ModuleDict,
    cond: Tensor | list | None = None,
    start: int = 0,
    stop: int | None = None,
) -> Tensor:
    """Residual blocks ``start .. stop - 1`` in order (all by default; a growing network runs part),
    each followed by its self-attention when ``attention`` has one under the block's index.
    ``cond``: one conditioning tensor for every G block, a list with one per block, or None (D)."""
    for index in range(start, len(blocks) if stop is None else stop):
        block = blocks[index]
        h = block(h) if cond is None else block(h, cond[index] if isinstance(cond, list) else cond)
        key = str(index)
        if key in attention:
            h = attention[key](h)
    return h


class RGBHead(nn.Module):
    """A growing G's output head at a lower resolution, shaped like the final one:
    BN -> ReLU -> SN-conv3x3 -> tanh."""

    def __init__(self, in_ch: int, channels: int, bn: nn.Module, sn_eps: float, sn_itrs: int) -> None:
        super().__init__()
        self.bn, self.conv = bn, sn_conv2d(in_ch, channels, sn_eps=sn_eps, sn_itrs=sn_itrs)

    def forward(self, h: Tensor) -> Tensor:
        return torch.tanh(self.conv(F.relu(self.bn(h))))


def grown_images(
    h: Tensor,
    net: nn.Module,
    cond: Tensor | list | None,
    ends: list[int],
    to_image: Callable[[int, Tensor], Tensor],
) -> Tensor:
    """A BigGAN(-deep) G from its 4x4 map at its stage resolution ``4 * 2^j``: the blocks up to
    ``ends[j]``, then stage j's head (the final head when not growing); while fading, blended
    with stage j - 1's image, upsampled."""
    j = int(math.log2(net.stage_resolution // 4))  # type: ignore[operator]
    if not net.fading:
        return to_image(j, run_blocks(h, net.blocks, net.attention, cond, stop=ends[j]))  # type: ignore[arg-type]
    prev = run_blocks(h, net.blocks, net.attention, cond, stop=ends[j - 1])  # type: ignore[arg-type]
    new = run_blocks(prev, net.blocks, net.attention, cond, start=ends[j - 1], stop=ends[j])  # type: ignore[arg-type]
    return net.fade_images(to_image(j - 1, prev), to_image(j, new))  # type: ignore[operator]


def grown_features(x: Tensor, net: nn.Module, from_image: Callable[[int, Tensor], Tensor]) -> Tensor:
    """A growing BigGAN(-deep) D up to its last block: the image of the stage's resolution enters
    through ``from_image`` at the first block taking that resolution (``net.entry``); while fading,
    the new blocks' output is blended with the previous stage's path on the pooled image."""
    r = net.stage_resolution
    h, first = from_image(r, x), net.entry[r]  # type: ignore[index]
    if net.fading:
        half = net.entry[r // 2]  # type: ignore[index]
        new = run_blocks(h, net.blocks, net.attention, start=first, stop=half)  # type: ignore[arg-type]
        h, first = net.fade(from_image(r // 2, F.avg_pool2d(x, 2)), new), half  # type: ignore[operator]
    return run_blocks(h, net.blocks, net.attention, start=first)  # type: ignore[arg-type]


class ProjectionDiscriminator(nn.Module):
    """The scoring shared by BigGAN's and BigGAN-deep's D: ``linear(phi(x)) + <embed(y), phi(x)>``
    (Miyato & Koyama 2018, eq. 3) on the features that the subclass's ``features`` computes."""

    num_classes: int
    linear: nn.Module
    embed: nn.Module | None

    def features(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def forward(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        """Score images ``x: [B, C, H, W]`` (with labels ``y: [B]``); returns raw logits ``[B]``."""
        from bigtrain.models.common import check_labels, projection

        y = check_labels(y, self.num_classes, x.shape[0])
        h = self.features(x)
        return projection(self.linear(h).squeeze(1), self.embed, y, h)


def apply_norm(norm: nn.Module, x: Tensor, cond: Tensor | None) -> Tensor:
    """Apply a conditional BN with ``cond``, or any plain (possibly Sync-converted) BN without."""
    if isinstance(norm, ConditionalBatchNorm):
        if cond is None:
            raise ValueError("a conditional BatchNorm layer needs a conditioning input")
        return norm(x, cond)
    return norm(x)


class GBlock(nn.Module):
    """BigGAN generator residual block (paper figure 15(b), appendix B).

    ``BN -> ReLU -> upsample -> conv3x3 -> BN -> ReLU -> conv3x3``, plus a shortcut that is
    upsampled and, when the shape changes, passed through a learnable 1x1 conv. Upsampling is
    nearest-neighbour; both BNs see the same conditioning vector.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        make_norm: NormFactory,
        upsample: bool = True,
        sn_eps: float = 1e-6,
        sn_itrs: int = 1,
    ) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.upsample = upsample
        self.bn1 = make_norm(in_channels)
        self.conv1 = sn_conv2d(in_channels, out_channels, sn_eps=sn_eps, sn_itrs=sn_itrs)
        self.bn2 = make_norm(out_channels)
        self.conv2 = sn_conv2d(out_channels, out_channels, sn_eps=sn_eps, sn_itrs=sn_itrs)
        self.conv_sc = (
            sn_conv2d(in_channels, out_channels, kernel_size=1, sn_eps=sn_eps, sn_itrs=sn_itrs)
            if in_channels != out_channels or upsample
            else None
        )

    def forward(self, x: Tensor, cond: Tensor | None = None) -> Tensor:
        h = F.relu(apply_norm(self.bn1, x, cond))
        if self.upsample:
            h = F.interpolate(h, scale_factor=2.0, mode="nearest")
            x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        h = self.conv1(h)
        h = self.conv2(F.relu(apply_norm(self.bn2, h, cond)))
        if self.conv_sc is not None:
            x = self.conv_sc(x)
        return h + x


class DBlock(nn.Module):
    """BigGAN discriminator residual block (paper figure 15(c)).

    ``[ReLU] -> conv3x3 -> ReLU -> conv3x3 -> [avgpool 2x2]`` plus a shortcut with a learnable 1x1
    conv when the shape changes.

    * ``wide=True`` (BigGAN / SAGAN) gives the first conv ``out_channels`` outputs; ``wide=False``
      keeps ``in_channels`` (SNGAN's "skinny" D).
    * ``preactivation=False`` is for the first block, which sees images: no leading ReLU, and the
      shortcut pools *before* its 1x1 conv (cheaper on the 3-channel input, SNGAN's "optimised
      block"); later blocks apply the 1x1 conv first, then pool, as the release does.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        wide: bool = True,
        preactivation: bool = True,
        downsample: bool = True,
        sn_eps: float = 1e-6,
        sn_itrs: int = 1,
    ) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.preactivation = preactivation
        self.downsample = downsample
        hidden = out_channels if wide else in_channels
        self.conv1 = sn_conv2d(in_channels, hidden, sn_eps=sn_eps, sn_itrs=sn_itrs)
        self.conv2 = sn_conv2d(hidden, out_channels, sn_eps=sn_eps, sn_itrs=sn_itrs)
        self.conv_sc = (
            sn_conv2d(in_channels, out_channels, kernel_size=1, sn_eps=sn_eps, sn_itrs=sn_itrs)
            if in_channels != out_channels or downsample
            else None
        )

    def _shortcut(self, x: Tensor) -> Tensor:
        if self.preactivation:
            if self.conv_sc is not None:
                x = self.conv_sc(x)
            if self.downsample:
                x = F.avg_pool2d(x, 2)
        else:
            if self.downsample:
                x = F.avg_pool2d(x, 2)
            if self.conv_sc is not None:
                x = self.conv_sc(x)
        return x

    def forward(self, x: Tensor) -> Tensor:
        # Out-of-place ReLU: the shortcut still needs the un-rectified ``x``.
        h = F.relu(x) if self.preactivation else x
        h = self.conv2(F.relu(self.conv1(h)))
        if self.downsample:
            h = F.avg_pool2d(h, 2)
        return h + self._shortcut(x)


# --------------------------------------------------------------------------------------------------
# Init and regularisation
# --------------------------------------------------------------------------------------------------


def init_orthogonal(model: nn.Module) -> None:
    """Orthogonal init (Saxe et al. 2014) of every conv / linear / embedding weight.

    This is the release's ``G_init = D_init = 'ortho'`` (paper section 4 / appendix C); biases keep
    PyTorch's default init, as there. For spectrally normalised layers the raw weight is initialised.
    Tensors on the meta device are skipped (they hold no data; only used to count parameters).
    """
    for m in model.modules():
        if isinstance(m, nn.Conv2d | nn.Linear | nn.Embedding):
            weight = raw_weight(m)
            if not weight.is_meta:
                with torch.no_grad():
                    nn.init.orthogonal_(weight)


def init_normal(model: nn.Module, std: float) -> None:
    """N(0, std) for every conv / linear / embedding weight (the raw weight under spectral norm)."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d | nn.Linear | nn.Embedding):
            weight = raw_weight(m)
            if not weight.is_meta:
                with torch.no_grad():
                    nn.init.normal_(weight, 0.0, std)


def apply_init(nets: Iterable[nn.Module], init: str) -> None:
    """Re-initialise ``nets`` by the release's ``G_init`` / ``D_init`` name.

    The networks are built with ``ortho`` already; ``N02`` (N(0, 0.02), the reference's CIFAR recipe)
    overwrites it. Any other name is a config error.
    """
    if init == "N02":
        for net in nets:
            init_normal(net, std=0.02)
    elif init != "ortho":
        raise ValueError(f"model.arch.init must be 'ortho' or 'N02', got {init!r}")


def attention_resolutions(value: object) -> frozenset[int]:
    """Parse where self-attention goes: ``(32, 64)``, one int, or the release's ``"32_64"`` string.

    ``""`` or an empty sequence means none. Every entry must be a power of two >= 4 (a feature-map
    size the networks can produce).
    """
    if isinstance(value, str):
        res = [int(v) for v in value.split("_") if v]
    elif isinstance(value, int):
        res = [value]
    elif isinstance(value, Iterable):  # tuples, lists, sets, OmegaConf ListConfig
        res = [int(v) for v in value]
    else:
        raise TypeError(
            f"attention resolutions must be ints, a sequence of ints or 'a_b' strings, got {value!r}"
        )
    bad = sorted(r for r in res if r < 4 or r & (r - 1) != 0)
    if bad:
        raise ValueError(f"attention resolutions must be powers of two >= 4, got {bad}")
    return frozenset(res)


__all__ = [
    "BigGANFamilyArch",
    "ConditionalBatchNorm",
    "DBlock",
    "GBlock",
    "NormFactory",
    "ProjectionDiscriminator",
    "RGBHead",
    "SelfAttention",
    "SpectralNorm",
    "apply_init",
    "apply_norm",
    "attention_resolutions",
    "batch_norm_2d",
    "grown_features",
    "grown_images",
    "init_normal",
    "init_orthogonal",
    "raw_weight",
    "run_blocks",
    "sn_conv2d",
    "sn_embedding",
    "sn_linear",
    "spectral_norm",
]


@dataclass
class BigGANFamilyArch:
    """``model.arch`` options BigGAN and BigGAN-deep share (defaults: the release's 128x128 ImageNet)."""

    shared_dim: int = option(128, "shared class embedding width (0 = per-layer class embeddings)")
    attention: list[int] = option([64], "feature-map sizes with self-attention, both networks")
    g_attention: list[int] | None = option(None, "G's attention sizes (default: attention)")
    d_attention: list[int] | None = option(None, "D's attention sizes (default: attention)")
    sn_eps: float = option(1e-6, "spectral norm epsilon, both networks")
    g_sn_eps: float | None = option(None, "G's spectral norm epsilon (default: sn_eps)")
    d_sn_eps: float | None = option(None, "D's spectral norm epsilon (default: sn_eps)")
    sn_itrs: int = option(1, "power iterations per spectral-norm update")
    bn_eps: float = option(1e-5, "BatchNorm epsilon")
    cross_replica_bn: bool = option(False, "synchronised BatchNorm across processes (multi-GPU)")
    init: str = option("ortho", "ortho | N02 (the reference's CIFAR recipe)")
    grow: bool = option(False, "progressive resolution stages (stages.schedule) with blocks faded in")

    def attention_of(self, net: str) -> frozenset[int]:
        own = self.g_attention if net == "G" else self.d_attention
        return attention_resolutions(self.attention if own is None else own)

    def sn_eps_of(self, net: str) -> float:
        own = self.g_sn_eps if net == "G" else self.d_sn_eps
        return float(self.sn_eps if own is None else own)
