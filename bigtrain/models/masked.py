"""Masked convolutions and the per-sub-pixel output head that autoregressive image models share
(PixelCNN and PixelRNN, van den Oord et al. 2016).

**The order.** Sub-pixels are generated row by row, left to right, and within a pixel in channel
order (R, then G, then B). An output at pixel ``(i, j)`` for channel ``c`` may see every channel of
the pixels before ``(i, j)`` and, at ``(i, j)`` itself, only channels before ``c``.

**Channel groups.** Every feature map is split into ``C`` groups (``C`` = image channels); group
``g`` carries what the prediction of channel ``g`` may know. A weight from input group ``a`` to
output group ``b`` at the centre tap is kept when ``a < b`` (mask A: the first layer, which sees
the raw pixel) or ``a <= b`` (mask B: every later layer, whose features of group ``b`` know nothing
of channel ``b`` yet). With one channel mask A simply drops the centre tap.
"""

from __future__ import annotations

from abc import abstractmethod

import torch
import torch.nn.functional as F
from torch import nn

from bigtrain.models.density import (
    DensityModel,
    DensityShape,
    categorical_nll,
    discretized_logistic_mixture_log_prob,
    sample_categorical,
    sample_discretized_logistic_mixture,
    to_unit,
)


def channel_groups(n: int, groups: int) -> torch.Tensor:
    """The group of each of ``n`` features: contiguous blocks, group ``g`` = features
    ``[g * n / groups, (g + 1) * n / groups)``."""
    if n % groups:
        raise ValueError(f"{n} features do not split into {groups} colour groups: use a multiple of {groups}")
    return torch.arange(n) * groups // n


def centre_mask(out_ch: int, in_ch: int, groups: int, mask_type: str, gates: int = 1) -> torch.Tensor:
    """``[out_ch, in_ch]``: which input features each output feature may see at the centre tap.
    ``gates`` > 1: the outputs are that many blocks (a gated unit's tanh and sigmoid halves, an
    LSTM's four gates), each split into the colour groups alike, so an elementwise gate combines
    features of one group."""
    if mask_type not in ("A", "B"):
        raise ValueError(f"mask type must be A or B, got {mask_type!r}")
    if out_ch % gates:
        raise ValueError(f"{out_ch} outputs do not split into {gates} gate blocks")
    go = channel_groups(out_ch // gates, groups).repeat(gates)[:, None]
    gi = channel_groups(in_ch, groups)[None, :]
    return (gi < go) if mask_type == "A" else (gi <= go)


class MaskedConv2d(nn.Conv2d):
    """A convolution whose output at ``(i, j)`` sees only what precedes it in the generation order.

    The kernel's tap ``centre`` (row, column) lies over the output pixel; taps after it in raster
    order are zeroed, and the centre tap is masked by channel group (:func:`centre_mask`; ``gates``
    blocks of outputs grouped alike). Padding is ``pad = (left, right, top, bottom)``, so a kernel
    can sit above or to the left of its output (the gated PixelCNN's stacks). The default centre is
    the middle tap, padded to keep the size (so the kernel's sides must be odd)."""

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        kernel: tuple[int, int],
        *,
        mask_type: str = "B",
        groups: int = 1,
        gates: int = 1,
        centre: tuple[int, int] | None = None,
        pad: tuple[int, int, int, int] | None = None,
        bias: bool = True,
    ) -> None:
        kh, kw = kernel
        if centre is None and pad is None and (kh % 2 == 0 or kw % 2 == 0):
            raise ValueError(f"a centred masked kernel needs odd sides, got {kh}x{kw}")
        super().__init__(in_ch, out_ch, kernel, padding=0, bias=bias)
        ci, cj = centre if centre is not None else (kh // 2, kw // 2)
        self.pad = pad if pad is not None else (kw // 2, kw // 2, kh // 2, kh // 2)
        mask = torch.zeros(out_ch, in_ch, kh, kw)
        mask[:, :, :ci, :] = 1.0  # rows above the centre
        mask[:, :, ci, :cj] = 1.0  # the centre row, left of the centre
        if ci < kh and cj < kw:
            mask[:, :, ci, cj] = centre_mask(out_ch, in_ch, groups, mask_type, gates).float()
        self.register_buffer("mask", mask, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(F.pad(x, self.pad), self.weight * self.mask, self.bias)


class PixelHead(nn.Module):
    """Features ``[B, width, H, W]`` (``width`` split into colour groups) -> each sub-pixel's
    distribution: a ``levels``-way softmax (the PixelCNN / PixelRNN papers), or with ``mixture`` K > 0
    a mixture of K discretised logistics (PixelCNN++). One masked (type B) 1x1 convolution, so
    channel ``c``'s parameters come from group ``c`` and the groups before it."""

    def __init__(self, width: int, shape: DensityShape, mixture: int = 0) -> None:
        super().__init__()
        self.shape, self.mixture = shape, mixture
        self.per_channel = 3 * mixture if mixture else shape.levels
        c = shape.channels
        self.proj = MaskedConv2d(width, c * self.per_channel, (1, 1), mask_type="B", groups=c)

    def params(self, feats: torch.Tensor) -> torch.Tensor:
        """``[B, C, P, H, W]``: each channel's ``P`` distribution parameters."""
        b, _, h, w = feats.shape
        return self.proj(feats).view(b, self.shape.channels, self.per_channel, h, w)

    def nll(self, feats: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Nats per image ``[B]`` of levels ``x`` ``[B, C, H, W]``."""
        p = self.params(feats)
        if not self.mixture:
            return categorical_nll(p.transpose(1, 2), x)
        w, m, s = p.movedim(2, -1).chunk(3, dim=-1)  # each [B, C, H, W, K]
        return -discretized_logistic_mixture_log_prob(x, w, m, s, self.shape.levels).flatten(1).sum(1)

    def sample(self, feats: torch.Tensor, channel: int, generator: torch.Generator) -> torch.Tensor:
        """One draw of ``channel`` at each position of ``feats`` ``[N, width, h, w]`` -> ``[N, h, w]``."""
        p = self.params(feats)[:, channel].movedim(1, -1)  # [N, h, w, P]
        if not self.mixture:
            flat = sample_categorical(p.reshape(-1, self.per_channel), generator)
            return flat.view(p.shape[:-1])
        w, m, s = p.chunk(3, dim=-1)
        return sample_discretized_logistic_mixture(w, m, s, self.shape.levels, generator)


class Autoregressive(DensityModel):
    """An exact density ``prod p(x_i | x_<i)`` from features that respect the order
    (:meth:`features`) and a :class:`PixelHead` over them: PixelCNN and PixelRNN. Training is one
    parallel pass; the NLL is exact, so evaluation is the same pass."""

    exact = True
    head: PixelHead

    @abstractmethod
    def features(self, x: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        """Float images ``[B, C, H, W]`` in [-1, 1] -> the head's input ``[B, width, H, W]``, where
        position ``(i, j)``'s group ``c`` knows only what precedes sub-pixel ``(c, i, j)``
        (differentiable in ``x``: the causality tests take gradients here)."""

    def unit(self, x: torch.Tensor) -> torch.Tensor:
        """Levels -> the network's input in [-1, 1], in its parameters' dtype."""
        return to_unit(x, self.shape.levels).to(self.head.proj.weight.dtype)

    def objective(
        self, x: torch.Tensor, y: torch.Tensor | None, *, kl_weight: float = 1.0
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The exact NLL per image in nats ``[B]``; no parts (``kl_weight`` has nothing to weigh)."""
        del kl_weight
        return self.head.nll(self.features(self.unit(x), y), x), {}

    @torch.no_grad()
    def bounds(
        self,
        x: torch.Tensor,
        y: torch.Tensor | None,
        *,
        generator: torch.Generator | None = None,
        iw_samples: int = 0,
    ) -> dict[str, torch.Tensor]:
        """``{"nll": nats [B]}``, exact: nothing is drawn."""
        del generator, iw_samples
        return {"nll": self.objective(x, y)[0]}


def class_bias(num_classes: int, width: int) -> nn.Embedding | None:
    """The conditional PixelCNN's class term (van den Oord et al. 2016b, eq. 4 with a one-hot h):
    a learned bias per class added to a layer's pre-activations; None when unconditional."""
    if num_classes <= 0:
        return None
    emb = nn.Embedding(num_classes, width)
    nn.init.zeros_(emb.weight)
    return emb


__all__ = ["Autoregressive", "MaskedConv2d", "PixelHead", "centre_mask", "channel_groups", "class_bias"]
