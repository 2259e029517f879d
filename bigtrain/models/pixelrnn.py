"""PixelRNN (van den Oord, Kalchbrenner & Kavukcuoglu 2016, "Pixel Recurrent Neural Networks"), family
``pixelrnn``: an exact autoregressive density over sub-pixels built from two-dimensional LSTMs.

The network, for ``h = arch.width`` features split into ``C`` colour groups (``bigtrain.models.masked``):

* a ``k x k`` masked convolution of type A (``input_kernel``) from the image in [-1, 1] to ``h``
  features: the only layer that reads raw pixels, so the only one that must hide the current one;
* ``layers`` recurrent layers, each ``x + conv1x1_B(LSTM(x))`` (``residual``; without it the 1x1
  output alone), where the LSTM is one of the paper's two cells:

  - ``row`` (Row LSTM, sec. 3.1): the state of row ``i`` comes from row ``i - 1``'s hidden state by an
    unmasked ``1 x k`` convolution along the row (``row_kernel``), and from the layer input by a
    ``1 x k`` masked (type B) convolution computed for the whole map at once. Rows are processed
    one after the other, all columns and images in parallel. Its receptive field is a triangle
    above the pixel, not the whole past;
  - ``diagonal`` (Diagonal BiLSTM, sec. 3.2): the map is skewed (row ``i`` shifted right by ``i``) so
    that each diagonal becomes a column; the state at ``(i, j)`` reads the states at ``(i, j - 1)``
    and ``(i - 1, j)`` (a ``2 x 1`` convolution over the previous skewed column) and the layer input
    by a masked 1x1 convolution. A second LSTM runs the same on the mirrored map (right to left);
    its output is shifted down one row before being added, so that a pixel only sees the rows
    above from it. Together they see the whole past of every pixel; one addition to the paper
    makes that hold at the right edge too (:class:`DiagonalBiLSTM`: the right-to-left direction
    also reads its row's raw pixels);
* ReLU, a masked 1x1 convolution, ReLU and :class:`~bigtrain.models.masked.PixelHead`: a
  ``levels``-way softmax per sub-pixel (the paper), or with ``mixture`` K > 0 K discretised logistics.

**Why the colour groups survive the LSTM.** A gate of group ``g`` may only mix inputs that the
prediction of channel ``g`` may know. The masked input-to-state convolution already respects this,
and its ``4h`` outputs are four gate blocks of ``h`` features each grouped like the state
(``MaskedConv2d(..., gates=4)``), so the element-wise LSTM never crosses groups. The state-to-state
terms read only positions strictly before the current pixel (the row above, the pixel to the left),
which every group may see, so they need no mask. The class bias (the conditional PixelCNN's, one
per recurrent direction) is the same for every position and carries no pixel.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bigtrain.config.typed import option
from bigtrain.models.common import check_labels
from bigtrain.models.density import DensityShape, to_unit
from bigtrain.models.masked import Autoregressive, MaskedConv2d, PixelHead, class_bias
from bigtrain.models.registry import register_model

CELLS = ("row", "diagonal")


@dataclass
class PixelRNNArch:
    """``model.arch`` of ``model=pixelrnn``."""

    cell: str = option("row", "recurrent layer: row (Row LSTM) or diagonal (Diagonal BiLSTM)")
    layers: int = option(7, "recurrent layers")
    width: int = option(64, "hidden features h of every layer; a multiple of the image channels (96 for RGB)")
    input_kernel: int = option(7, "odd size k of the first k x k masked (type A) convolution")
    row_kernel: int = option(3, "odd width k of the Row LSTM's 1 x k convolutions (cell=row only)")
    mixture: int = option(
        0, "0: a levels-way softmax per sub-pixel; K > 0: a mixture of K discretised logistics"
    )
    residual: bool = option(True, "add each recurrent layer's output to its input (residual connections)")

    def validate(self, channels: int) -> None:
        """Raise a one-line ValueError for values the network cannot be built from."""
        if self.cell not in CELLS:
            raise ValueError(f"pixelrnn: unknown cell {self.cell!r}; choose one of {', '.join(CELLS)}")
        if self.layers < 1:
            raise ValueError(f"pixelrnn: layers must be >= 1, got {self.layers}")
        if self.width < 1 or self.width % channels:
            raise ValueError(
                f"pixelrnn: width must be a positive multiple of the image channels ({channels}), got {self.width}"
            )
        # an even kernel has no centre tap to mask around; size 1 would hide every neighbour
        if self.input_kernel < 3 or self.input_kernel % 2 == 0:
            raise ValueError(f"pixelrnn: input_kernel must be odd and >= 3, got {self.input_kernel}")
        if self.row_kernel < 3 or self.row_kernel % 2 == 0:
            raise ValueError(f"pixelrnn: row_kernel must be odd and >= 3, got {self.row_kernel}")
        if self.mixture < 0:
            raise ValueError(f"pixelrnn: mixture must be >= 0 (0 = softmax), got {self.mixture}")


def _lstm(gates: Tensor, c_prev: Tensor, dim: int) -> tuple[Tensor, Tensor]:
    """One LSTM update from ``4h`` pre-activations (input, forget, output, candidate along ``dim``)."""
    i, f, o, g = gates.chunk(4, dim=dim)
    c = torch.sigmoid(f) * c_prev + torch.sigmoid(i) * torch.tanh(g)
    return torch.sigmoid(o) * torch.tanh(c), c


def _pointwise(conv: MaskedConv2d, v: Tensor) -> Tensor:
    """A masked 1x1 convolution applied to channel-last features ``[..., in]`` -> ``[..., out]``:
    the same arithmetic on a map, a row or a single position (the sampler's)."""
    return F.linear(v, (conv.weight * conv.mask).flatten(1), conv.bias)


def _conv_valid(conv: MaskedConv2d, window: Tensor) -> Tensor:
    """``conv`` without its padding: the sampler passes an already padded window of the image."""
    return F.conv2d(window, conv.weight * conv.mask, conv.bias)


def _class_term(emb: nn.Embedding | None, y: Tensor | None, like: Tensor, dim: int) -> Tensor | None:
    """The class bias ``[B, 4h]`` shaped to broadcast over ``like`` with features along ``dim``."""
    if emb is None or y is None:
        return None
    shape = [1] * like.dim()
    shape[0], shape[dim] = y.shape[0], emb.embedding_dim
    return emb(y).view(shape)


class RowLSTM(nn.Module):
    """One Row LSTM layer (sec. 3.1) on channel-first maps ``[B, h, rows, W]``."""

    def __init__(self, width: int, channels: int, kernel: int, num_classes: int, residual: bool) -> None:
        super().__init__()
        self.residual = residual
        self.input_to_state = MaskedConv2d(
            width, 4 * width, (1, kernel), mask_type="B", groups=channels, gates=4
        )
        self.state_to_state = nn.Conv1d(width, 4 * width, kernel, padding=kernel // 2)
        self.out = MaskedConv2d(width, width, (1, 1), mask_type="B", groups=channels)
        self.cls = class_bias(num_classes, 4 * width)

    def input_gates(self, x: Tensor, y: Tensor | None) -> Tensor:
        """``[B, 4h, rows, W]`` input-to-state pre-activations (four gate blocks), class bias included."""
        g = self.input_to_state(x)
        bias = _class_term(self.cls, y, g, 1)
        return g if bias is None else g + bias

    def step(self, gates_row: Tensor, h_prev: Tensor, c_prev: Tensor) -> tuple[Tensor, Tensor]:
        """Row ``i``'s ``(h, c)`` ``[B, h, W]`` from its input gates and row ``i - 1``'s state."""
        return _lstm(gates_row + self.state_to_state(h_prev), c_prev, dim=1)

    def output(self, x: Tensor, h: Tensor) -> Tensor:
        out = self.out(h)
        return x + out if self.residual else out

    def forward(self, x: Tensor, y: Tensor | None) -> Tensor:
        b, width, rows, w = x.shape
        gates = self.input_gates(x, y)
        h = c = x.new_zeros(b, width, w)
        hs = []
        for i in range(rows):
            h, c = self.step(gates[:, :, i], h, c)
            hs.append(h)
        return self.output(x, torch.stack(hs, dim=2))


class DiagonalLSTM(nn.Module):
    """One direction of a Diagonal BiLSTM on channel-last features: the state at ``(i, j)`` from the
    input there and the states at ``(i, j - 1)`` (hidden and cell) and ``(i - 1, j)`` (hidden); the
    two ``nn.Linear`` are the paper's ``2 x 1`` state-to-state convolution over the skewed map."""

    def __init__(self, width: int, channels: int, num_classes: int) -> None:
        super().__init__()
        self.input_to_state = MaskedConv2d(width, 4 * width, (1, 1), mask_type="B", groups=channels, gates=4)
        self.from_above = nn.Linear(width, 4 * width)
        self.from_left = nn.Linear(width, 4 * width, bias=False)
        self.cls = class_bias(num_classes, 4 * width)

    def input_gates(self, x: Tensor, y: Tensor | None) -> Tensor:
        """``[..., 4h]`` input-to-state pre-activations (four gate blocks) of ``x`` ``[B, ..., h]``."""
        g = _pointwise(self.input_to_state, x)
        bias = _class_term(self.cls, y, g, -1)
        return g if bias is None else g + bias

    def step(self, gates: Tensor, h_above: Tensor, h_left: Tensor, c_left: Tensor) -> tuple[Tensor, Tensor]:
        return _lstm(gates + self.from_above(h_above) + self.from_left(h_left), c_left, dim=-1)

    def scan(self, gates: Tensor) -> Tensor:
        """Hidden states ``[B, H, W, h]`` from input gates ``[B, H, W, 4h]``, left to right.

        The skewed map is processed one column (one diagonal of the image) at a time; positions
        of the skewed map outside the image keep a zero state, so the image's edges see zeros,
        as the sampler's position-by-position steps do."""
        b, rows, w, f = gates.shape
        cols = w + rows - 1
        skewed = gates.new_zeros(b, rows, cols, f)
        for i in range(rows):
            skewed[:, i, i : i + w] = gates[:, i]
        t = (
            torch.arange(cols, device=gates.device)[None, :]
            - torch.arange(rows, device=gates.device)[:, None]
        )
        inside = ((t >= 0) & (t < w)).to(gates.dtype)  # [H, cols]
        h = c = gates.new_zeros(b, rows, f // 4)
        hs = []
        for col in range(cols):
            above = F.pad(h[:, :-1], (0, 0, 1, 0))  # skewed (i - 1, col - 1) = image (i - 1, j)
            h, c = self.step(skewed[:, :, col], above, h, c)
            keep = inside[:, col, None]
            h, c = h * keep, c * keep
            hs.append(h)
        out = torch.stack(hs, dim=2)  # [B, H, cols, h]
        return torch.stack([out[:, i, i : i + w] for i in range(rows)], dim=1)


class DiagonalBiLSTM(nn.Module):
    """One Diagonal BiLSTM layer (sec. 3.2) on channel-first maps ``[B, h, H, W]``.

    The right-to-left direction also reads the raw pixels of its row (``row_pixels``, a 1x1 map
    from the image's ``C`` channels). Its output is only used one row down, so it may know its
    whole row; and without this the last sub-pixel of each row, ``(C - 1, i - 1, W - 1)``, would be
    a blind spot of every pixel ``(i, j)`` the first convolution does not reach (``j < W - 1 - k // 2``):
    no feature of row ``i - 1`` carries it (the masks keep it out of that row), and the left-to-right
    direction reaches row ``i - 1`` only at the columns up to ``j``. With it the layer's dependency
    field is the whole past, as the paper intends."""

    def __init__(self, width: int, channels: int, num_classes: int, residual: bool) -> None:
        super().__init__()
        self.residual = residual
        self.forward_dir = DiagonalLSTM(width, channels, num_classes)  # left to right
        # right to left: its output is used one row down, so its masks are not needed (but harmless)
        self.backward_dir = DiagonalLSTM(width, channels, num_classes)
        self.row_pixels = nn.Linear(channels, 4 * width, bias=False)
        self.out = MaskedConv2d(width, width, (1, 1), mask_type="B", groups=channels)

    def output(self, x: Tensor, s: Tensor) -> Tensor:
        """Channel-last: the layer's output from its input and ``h_left(i, j) + h_right(i - 1, j)``."""
        out = _pointwise(self.out, s)
        return x + out if self.residual else out

    def backward_gates(self, x: Tensor, pixels: Tensor, y: Tensor | None) -> Tensor:
        """The right-to-left direction's input pre-activations ``[..., 4h]`` from channel-last layer
        inputs ``[..., h]`` and image pixels ``[..., C]`` in [-1, 1] at the same positions."""
        return self.backward_dir.input_gates(x, y) + self.row_pixels(pixels)

    def backward_row(self, x_row: Tensor, pixel_row: Tensor, h_above: Tensor, y: Tensor | None) -> Tensor:
        """The right-to-left hidden states ``[B, W, h]`` of one finished row from its inputs
        ``[B, W, h]``, its pixels ``[B, W, C]`` and the row above's states (the sampler's step)."""
        gates = self.backward_gates(x_row, pixel_row, y)
        h = c = x_row.new_zeros(x_row.shape[0], x_row.shape[2])
        hs = []
        for j in range(x_row.shape[1] - 1, -1, -1):
            h, c = self.backward_dir.step(gates[:, j], h_above[:, j], h, c)
            hs.append(h)
        return torch.stack(hs[::-1], dim=1)

    def forward(self, x: Tensor, y: Tensor | None, image: Tensor) -> Tensor:
        """``x`` ``[B, h, H, W]``, ``image`` the model's input ``[B, C, H, W]`` in [-1, 1]."""
        xl, pixels = x.permute(0, 2, 3, 1), image.permute(0, 2, 3, 1)  # channel-last
        left = self.forward_dir.scan(self.forward_dir.input_gates(xl, y))
        right = self.backward_dir.scan(self.backward_gates(xl.flip(2), pixels.flip(2), y)).flip(2)
        right = F.pad(right[:, :-1], (0, 0, 0, 0, 1, 0))  # down one row: (i, j) gets (i - 1, j)
        return self.output(xl, left + right).permute(0, 3, 1, 2)


class PixelRNN(Autoregressive):
    """PixelRNN over images of ``shape``: exact ``-log p(x)`` in nats, sampled sub-pixel by sub-pixel.

    :meth:`sample` reuses the recurrent states of what is already drawn. Row LSTM: every sub-pixel
    re-runs the current row through every layer from the cached states of the row above, so
    ``H*W*C`` row steps per layer (the arithmetic of about ``W*C`` full passes). Diagonal BiLSTM:
    every sub-pixel runs a single position through every layer, and each finished row gets one
    right-to-left sweep per layer (about ``C`` full passes of arithmetic); both make
    ``O(H*W*C*layers)`` small sequential steps, so sampling is latency-bound on a GPU."""

    def __init__(self, shape: DensityShape, arch: PixelRNNArch) -> None:
        super().__init__()
        arch.validate(shape.channels)
        self.shape, self.arch = shape, arch
        h, c, k = arch.width, shape.channels, arch.input_kernel
        self.inp = MaskedConv2d(c, h, (k, k), mask_type="A", groups=c)
        layers: list[nn.Module] = [
            RowLSTM(h, c, arch.row_kernel, shape.num_classes, arch.residual)
            if arch.cell == "row"
            else DiagonalBiLSTM(h, c, shape.num_classes, arch.residual)
            for _ in range(arch.layers)
        ]
        self.layers = nn.ModuleList(layers)
        self.post = MaskedConv2d(h, h, (1, 1), mask_type="B", groups=c)
        self.head = PixelHead(h, shape, arch.mixture)

    def _readout(self, x: Tensor) -> Tensor:
        return F.relu(self.post(F.relu(x)))

    def features(self, x_unit: Tensor, y: Tensor | None) -> Tensor:
        """The head's input ``[B, h, H, W]`` from float images ``[B, C, H, W]`` in [-1, 1]: the
        differentiable path from pixels to predictions (what the causality tests probe)."""
        y = check_labels(y, self.shape.num_classes, x_unit.shape[0])
        x = self.inp(x_unit)
        for layer in self.layers:
            x = layer(x, y, x_unit) if isinstance(layer, DiagonalBiLSTM) else layer(x, y)
        return self._readout(x)

    @torch.no_grad()
    def sample(self, n: int, labels: torch.Tensor | None, generator: torch.Generator) -> torch.Tensor:
        """``n`` images ``[n, C, H, W]`` of levels, drawn in raster order and channel order, each from
        the distribution :meth:`features` gives the partial image (see the class docstring for the
        cost). Only ``generator`` is drawn from."""
        device, dtype = self.head.proj.weight.device, self.head.proj.weight.dtype
        y = check_labels(labels.to(device) if labels is not None else None, self.shape.num_classes, n)
        s, p = self.shape, self.arch.input_kernel // 2
        levels = torch.zeros(n, s.channels, s.resolution, s.resolution, dtype=torch.long, device=device)
        # the image in [-1, 1] with the first convolution's zero padding around it
        side = s.resolution + 2 * p
        padded = torch.zeros(n, s.channels, side, side, device=device, dtype=dtype)
        draw = self._draw_rows if self.arch.cell == "row" else self._draw_diagonal
        draw(levels, padded, y, generator)
        return levels

    def _put(
        self, levels: Tensor, padded: Tensor, c: int, i: int, j: int, feats: Tensor, gen: torch.Generator
    ) -> None:
        """Draw channel ``c`` at ``(i, j)`` from the head on ``feats`` ``[n, h, 1, 1]`` and write it."""
        v = self.head.sample(feats, c, gen)[:, 0, 0]
        p = self.arch.input_kernel // 2
        levels[:, c, i, j] = v
        padded[:, c, p + i, p + j] = to_unit(v, self.shape.levels).to(padded.dtype)

    def _draw_rows(self, levels: Tensor, padded: Tensor, y: Tensor | None, gen: torch.Generator) -> None:
        """Row LSTM sampling: each sub-pixel re-runs its row from the cached states of the row above."""
        n, chans, rows, w = levels.shape
        k, h = self.arch.input_kernel, self.arch.width
        zero = padded.new_zeros(n, h, w)
        layers = [m for m in self.layers if isinstance(m, RowLSTM)]
        states = [(zero, zero) for _ in layers]
        for i in range(rows):
            new = states
            for j in range(w):
                for c in range(chans):
                    x = _conv_valid(self.inp, padded[:, :, i : i + k])  # [n, h, 1, W]
                    new = []
                    for layer, (h_prev, c_prev) in zip(layers, states, strict=True):
                        hc = layer.step(layer.input_gates(x, y)[:, :, 0], h_prev, c_prev)
                        x = layer.output(x, hc[0][:, :, None])
                        new.append(hc)
                    self._put(levels, padded, c, i, j, self._readout(x[:, :, :, j : j + 1]), gen)
            # the last pass saw every pixel of the row except the last's last channel, which no
            # state of the row depends on (the masks), so its states are the row's final ones
            states = new

    def _draw_diagonal(self, levels: Tensor, padded: Tensor, y: Tensor | None, gen: torch.Generator) -> None:
        """Diagonal BiLSTM sampling: each sub-pixel runs one position through every layer from the
        cached left-to-right states of its left and upper neighbours and the right-to-left states
        of the row above; a finished row gets its right-to-left sweep."""
        n, chans, rows, w = levels.shape
        k, h, p = self.arch.input_kernel, self.arch.width, self.arch.input_kernel // 2
        layers = [m for m in self.layers if isinstance(m, DiagonalBiLSTM)]
        above = [padded.new_zeros(n, w, h) for _ in layers]  # left-to-right h of the row above
        right_above = [padded.new_zeros(n, w, h) for _ in layers]  # right-to-left h of the row above
        for i in range(rows):
            inputs = [padded.new_zeros(n, w, h) for _ in layers]
            current = [padded.new_zeros(n, w, h) for _ in layers]
            zero = padded.new_zeros(n, h)
            left = [(zero, zero) for _ in layers]
            for j in range(w):
                xs: list[Tensor] = []
                hcs: list[tuple[Tensor, Tensor]] = []
                for c in range(chans):
                    x = _conv_valid(self.inp, padded[:, :, i : i + k, j : j + k]).flatten(1)  # [n, h]
                    xs, hcs = [], []
                    for m, layer in enumerate(layers):
                        d = layer.forward_dir
                        hc = d.step(d.input_gates(x, y), above[m][:, j], *left[m])
                        xs.append(x)
                        hcs.append(hc)
                        x = layer.output(x, hc[0] + right_above[m][:, j])
                    self._put(levels, padded, c, i, j, self._readout(x[:, :, None, None]), gen)
                for m in range(len(layers)):  # final: no state at (i, j) reads its last channel
                    left[m] = hcs[m]
                    current[m][:, j] = hcs[m][0]
                    inputs[m][:, j] = xs[m]
            pixel_row = padded[:, :, p + i, p : p + w].transpose(1, 2)  # [n, W, C], all drawn
            for m, layer in enumerate(layers):
                right_above[m] = layer.backward_row(inputs[m], pixel_row, right_above[m], y)
                above[m] = current[m]


@register_model(
    "pixelrnn",
    kind="density",
    arch=PixelRNNArch,
    help="van den Oord et al. 2016: Row LSTM or Diagonal BiLSTM, exact NLL",
)
def build_pixelrnn(shape: DensityShape, arch: PixelRNNArch) -> PixelRNN:
    """PixelRNN over ``shape`` (``arch.validate`` raises one-line ValueErrors for bad options)."""
    return PixelRNN(shape, arch)


__all__ = [
    "CELLS",
    "DiagonalBiLSTM",
    "DiagonalLSTM",
    "PixelRNN",
    "PixelRNNArch",
    "RowLSTM",
    "build_pixelrnn",
]
