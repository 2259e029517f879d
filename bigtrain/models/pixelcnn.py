"""PixelCNN (van den Oord et al. 2016a) and the gated, conditional PixelCNN (van den Oord et al.
2016b, "Conditional image generation with PixelCNN decoders"), family ``pixelcnn``.

Both define ``p(x) = prod_i p(x_i | x_<i)`` over sub-pixels in raster and colour order
(:mod:`bigtrain.models.masked`), so the NLL is exact and training is one parallel pass.

* ``gated=false``: the original PixelCNN, a 7x7 mask-A convolution then residual blocks of
  1x1 / 3x3 / 1x1 mask-B convolutions. Its stacked masked 3x3 kernels leave a *blind spot*: pixels
  up and to the right of the current one that no layer reaches, however deep.
* ``gated=true`` (default): two stacks remove the blind spot. The *vertical* stack sees every pixel
  in the rows above (a ``(k//2 + 1) x k`` kernel over the current row and those above, shifted
  down one row before anyone reads it); the *horizontal* stack sees the current row to the left
  (a ``1 x (k//2 + 1)`` kernel), plus the vertical stack through a 1x1 link. Each layer's unit is
  ``tanh(W_f * x + V_f^T h) * sigmoid(W_g * x + V_g^T h)``, with ``h`` a one-hot class
  (a learned bias per class, ``class_bias``); the horizontal stack is residual.

The output is a softmax over the ``levels`` values of each sub-pixel, or with ``mixture`` K a
mixture of K discretised logistics (PixelCNN++), from :class:`~bigtrain.models.masked.PixelHead`.

**Sampling** is sub-pixel by sub-pixel, ``C * H * W`` network evaluations, each only as large as it
must be: the gated model advances its vertical stack by one row when a row is complete and runs
its horizontal stack per sub-pixel over the columns that reach it; the original model re-runs on
the rows its receptive field covers. A test checks both against drawing from full passes over the image.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from bigtrain.config.typed import option
from bigtrain.models.density import DensityShape
from bigtrain.models.masked import Autoregressive, MaskedConv2d, PixelHead, class_bias
from bigtrain.models.registry import register_model


@dataclass
class PixelCNNArch:
    """``model.arch`` of ``model=pixelcnn``."""

    gated: bool = option(True, "the gated two-stack PixelCNN (2016b); false: the original masked one (2016a)")
    layers: int = option(8, "gated layers, or the original's residual blocks")
    width: int = option(64, "features per stack (a multiple of the image channels: one group per colour)")
    kernel: int = option(3, "the layers' kernel size k (odd)")
    input_kernel: int = option(7, "the first (mask A) layer's kernel size (odd)")
    mixture: int = option(
        0, "0: a softmax over the levels per sub-pixel; K > 0: K discretised logistics (PixelCNN++)"
    )
    head_width: int = option(0, "the output's hidden 1x1 layer; 0: the width")


def _gate(t: torch.Tensor) -> torch.Tensor:
    a, b = t.chunk(2, dim=1)
    return torch.tanh(a) * torch.sigmoid(b)


def _down(t: torch.Tensor) -> torch.Tensor:
    """Shift a map down one row (row 0 gets zeros): row ``i`` then holds what row ``i - 1`` saw."""
    return F.pad(t, (0, 0, 1, 0))[:, :, :-1]


class GatedLayer(nn.Module):
    """One layer of the gated PixelCNN: vertical and horizontal stacks, the link between them and
    the condition's bias (a class's, or a map of a condition vector: :mod:`bigtrain.models.pixelcnn_prior`)."""

    def __init__(
        self,
        in_ch: int,
        width: int,
        kernel: int,
        groups: int,
        first: bool,
        num_classes: int,
        cond_dim: int = 0,
    ) -> None:
        super().__init__()
        r = kernel // 2
        self.residual = not first
        # the vertical stack: rows i - r .. i, every column within r (only read shifted down a row)
        self.v = nn.Conv2d(in_ch, 2 * width, (r + 1, kernel))
        self.v_pad = (r, r, r, 0)
        # the horizontal stack: columns j - r .. j of row i, the centre masked by colour group
        self.h = MaskedConv2d(
            in_ch, 2 * width, (1, r + 1), mask_type="A" if first else "B", groups=groups, gates=2,
            centre=(0, r), pad=(r, 0, 0, 0),
        )  # fmt: skip
        self.link = nn.Conv2d(2 * width, 2 * width, 1)  # vertical -> horizontal (rows above only)
        self.h_out = MaskedConv2d(width, width, (1, 1), mask_type="B", groups=groups)
        # the condition's term V^T h (eq. 4): a bias per class, or a linear map of a vector h
        self.cls_v = self._condition(num_classes, cond_dim, 2 * width)
        self.cls_h = self._condition(num_classes, cond_dim, 2 * width)

    def vertical(self, v: torch.Tensor, y: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """The vertical stack's output and what it adds to the horizontal stack's pre-activation
        (its pre-activation shifted down a row through the link, plus the horizontal class bias)."""
        pre = self._class(self.v(F.pad(v, self.v_pad)), self.cls_v, y)
        return _gate(pre), self._class(self.link(_down(pre)), self.cls_h, y)

    def vertical_row(self, rows: torch.Tensor, y: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`vertical` for the last row of ``rows`` only (the ``r + 1`` rows its kernel covers,
        fewer at the top), and the link that row gives the row below it: what sampling adds
        once a row is complete."""
        r = self.v_pad[0]
        pre = self._class(self.v(F.pad(rows, (r, r, r + 1 - rows.shape[2], 0))), self.cls_v, y)
        return _gate(pre), self._class(self.link(pre), self.cls_h, y)

    def first_link(self, like: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        """The link of row 0, which has no row above it: the link of a zero pre-activation."""
        zero = like.new_zeros(like.shape[0], self.link.in_channels, 1, like.shape[3])
        return self._class(self.link(zero), self.cls_h, y)

    @staticmethod
    def _condition(num_classes: int, cond_dim: int, out: int) -> nn.Module | None:
        """A class's bias (labels ``[B]``), or with ``cond_dim`` a linear map of a vector ``[B, cond_dim]``."""
        return nn.Linear(cond_dim, out, bias=False) if cond_dim else class_bias(num_classes, out)

    @staticmethod
    def _class(t: torch.Tensor, bias: nn.Module | None, y: torch.Tensor | None) -> torch.Tensor:
        return t + bias(y)[:, :, None, None] if bias is not None and y is not None else t

    def horizontal(self, h: torch.Tensor, link: torch.Tensor) -> torch.Tensor:
        out = self.h_out(_gate(self.h(h) + link))
        return out + h if self.residual else out


class ResidualBlock(nn.Module):
    """The original PixelCNN's block: 1x1 (2h -> h), k x k, 1x1 (h -> 2h), all mask B, plus a skip."""

    def __init__(self, width: int, kernel: int, groups: int, num_classes: int) -> None:
        super().__init__()
        self.net = nn.ModuleList(
            [
                MaskedConv2d(2 * width, width, (1, 1), groups=groups),
                MaskedConv2d(width, width, (kernel, kernel), groups=groups),
                MaskedConv2d(width, 2 * width, (1, 1), groups=groups),
            ]
        )
        self.cls = class_bias(num_classes, width)

    def forward(self, x: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        t = self.net[0](F.relu(x))
        if self.cls is not None and y is not None:
            t = t + self.cls(y)[:, :, None, None]
        t = self.net[2](F.relu(self.net[1](F.relu(t))))
        return x + t


class PixelCNN(Autoregressive):
    def __init__(self, shape: DensityShape, arch: PixelCNNArch) -> None:
        super().__init__()
        self.shape, self.arch = shape, arch
        c, w, k = shape.channels, arch.width, arch.kernel
        head = arch.head_width or w
        if arch.gated:
            self.layers = nn.ModuleList(
                [GatedLayer(c, w, arch.input_kernel, c, True, shape.num_classes)]
                + [GatedLayer(w, w, k, c, False, shape.num_classes) for _ in range(arch.layers - 1)]
            )
            # the vertical stack's reach upwards: what a row's sampling pass must include
            self.reach = arch.input_kernel // 2 + (arch.layers - 1) * (k // 2)
            out_in = w
        else:
            self.stem = MaskedConv2d(
                c, 2 * w, (arch.input_kernel, arch.input_kernel), mask_type="A", groups=c
            )
            self.blocks = nn.ModuleList(
                [ResidualBlock(w, k, c, shape.num_classes) for _ in range(arch.layers)]
            )
            self.reach = arch.input_kernel // 2 + arch.layers * (k // 2)
            out_in = 2 * w
        self.out = MaskedConv2d(out_in, head, (1, 1), groups=c)
        self.head = PixelHead(head, shape, arch.mixture)

    # -- the density ------------------------------------------------------------------------------
    def features(self, x: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        """See :meth:`Autoregressive.features`; labels are ignored when unconditional."""
        y = self._labels(y)
        if self.arch.gated:
            v = h = x
            for layer in self.layers:
                v, link = layer.vertical(v, y)
                h = layer.horizontal(h, link)
        else:
            h = self.stem(x)
            for block in self.blocks:
                h = block(h, y)
        return F.relu(self.out(F.relu(h)))

    def _labels(self, y: torch.Tensor | None) -> torch.Tensor | None:
        return y if self.shape.num_classes > 0 else None

    # -- sampling ---------------------------------------------------------------------------------
    @torch.no_grad()
    def sample(self, n: int, labels: torch.Tensor | None, generator: torch.Generator) -> torch.Tensor:
        s = self.shape
        device = next(self.parameters()).device
        y = self._labels(labels.to(device) if labels is not None else None)
        x = torch.zeros(n, s.channels, s.resolution, s.resolution, dtype=torch.long, device=device)
        if self.arch.gated:
            self._sample_gated(x, y, generator)
        else:
            for i in range(s.resolution):
                self._sample_row_cropped(x, y, i, generator)
        return x

    def _sample_gated(self, x: torch.Tensor, y: torch.Tensor | None, generator: torch.Generator) -> None:
        """Row by row. A row's links depend on the rows above only, so each layer's vertical stack
        advances by one row once a row is complete (the rows its kernel covers kept, no more);
        each sub-pixel then runs the horizontal stack over the columns that reach it."""
        first = self.unit(x[:, :, :1])
        links = [layer.first_link(first, y) for layer in self.layers]
        inputs: list[list[torch.Tensor]] = [[] for _ in self.layers]  # each layer's input rows, recent
        reach = sum(layer.v_pad[0] for layer in self.layers)  # columns to the left an output sees
        for i in range(self.shape.resolution):
            for j in range(self.shape.resolution):
                left = max(0, j - reach)
                for c in range(self.shape.channels):
                    h = self.unit(x[:, :, i : i + 1, left : j + 1])
                    for layer, link in zip(self.layers, links, strict=True):
                        h = layer.horizontal(h, link[..., left : j + 1])
                    feats = F.relu(self.out(F.relu(h[..., -1:])))
                    x[:, c, i, j] = self.head.sample(feats, c, generator)[:, 0, 0]
            row = self.unit(x[:, :, i : i + 1])
            for k, layer in enumerate(self.layers):
                kept = inputs[k] = (inputs[k] + [row])[-(layer.v_pad[0] + 1) :]
                row, links[k] = layer.vertical_row(torch.cat(kept, dim=2), y)

    def _sample_row_cropped(
        self, x: torch.Tensor, y: torch.Tensor | None, i: int, generator: torch.Generator
    ) -> None:
        """Row ``i`` of the original PixelCNN: the network on the rows its receptive field covers."""
        top = max(0, i - self.reach)
        for j in range(self.shape.resolution):
            for c in range(self.shape.channels):
                feats = self.features(self.unit(x[:, :, top : i + 1]), y)
                x[:, c, i, j] = self.head.sample(feats[:, :, -1:, j : j + 1], c, generator)[:, 0, 0]


@register_model(
    "pixelcnn", kind="density", arch=PixelCNNArch, help="PixelCNN, gated (2016b) or original (2016a)"
)
def build_pixelcnn(shape: DensityShape, arch: PixelCNNArch) -> PixelCNN:
    for name in ("layers", "width", "kernel", "input_kernel"):
        if getattr(arch, name) < 1:
            raise ValueError(f"model.arch.{name} must be >= 1 (got {getattr(arch, name)})")
    if arch.kernel % 2 == 0 or arch.input_kernel % 2 == 0:
        raise ValueError(
            f"model.arch.kernel and input_kernel must be odd (got {arch.kernel}, {arch.input_kernel})"
        )
    if arch.width % shape.channels or (arch.head_width or arch.width) % shape.channels:
        raise ValueError(
            f"model.arch.width ({arch.width}) and head_width must be multiples of the image's "
            f"{shape.channels} channels (one group of features per colour)"
        )
    if arch.mixture < 0:
        raise ValueError(f"model.arch.mixture must be >= 0 (got {arch.mixture})")
    return PixelCNN(shape, arch)


__all__ = ["GatedLayer", "PixelCNN", "PixelCNNArch", "ResidualBlock", "build_pixelcnn"]
