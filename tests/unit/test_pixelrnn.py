"""PixelRNN, Row LSTM and Diagonal BiLSTM: no sub-pixel's distribution depends on itself or on what
comes after it (and the Diagonal BiLSTM's depends on everything before it), the exact NLL is the
sum of the per-sub-pixel conditionals, the state-caching sampler draws exactly what full passes
would, a uniform model scores log2(levels) bits per dimension, the model trains, and bad options
are one-line errors."""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import pytest
import torch

from bigtrain.models import build_model
from bigtrain.models.density import DensityShape, bits_per_dim, discretized_logistic_mixture_log_prob, to_unit
from bigtrain.models.pixelrnn import PixelRNN, PixelRNNArch
from bigtrain.models.registry import families


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    """These tensors are tiny and the recurrences make many small ops: a second intra-op thread only
    adds synchronisation to each (milliseconds per op when the cores are shared), so run on one."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _model(
    cell: str,
    channels: int = 1,
    *,
    levels: int = 256,
    mixture: int = 0,
    classes: int = 0,
    res: int = 5,
    seed: int = 0,
    **arch: Any,
) -> PixelRNN:
    """A tiny model in float64 (exact comparisons), every parameter nudged off its initialisation
    so the zero-initialised class biases matter too. Four features per colour group: with two, a
    group's readout ReLUs can all be dead for every input, which hides real dependencies."""
    torch.manual_seed(seed)
    shape = DensityShape(resolution=res, channels=channels, num_classes=classes, levels=levels)
    width = 4 * channels if channels > 1 else 6
    options = {"cell": cell, "layers": 2, "width": width, "input_kernel": 3, "mixture": mixture, **arch}
    model = build_model("pixelrnn", options, shape=shape).double()
    for p in model.parameters():
        p.data.add_(0.3 * torch.randn_like(p))
    return model


def _positions(channels: int, res: int) -> list[tuple[int, int, int]]:
    """Every sub-pixel ``(c, i, j)`` in generation order: rows, then columns, then channels."""
    return [(c, i, j) for i in range(res) for j in range(res) for c in range(channels)]


def _labels(model: PixelRNN, n: int) -> torch.Tensor | None:
    return torch.arange(n) % model.shape.num_classes if model.shape.num_classes else None


CASES = [
    pytest.param("row", 1, 256, 0, {}, id="row-C1-softmax"),
    pytest.param("row", 3, 2, 2, {"residual": False}, id="row-C3-mixture-noresidual"),
    pytest.param("row", 3, 256, 0, {"row_kernel": 5}, id="row-C3-softmax-k5"),
    pytest.param("diagonal", 1, 2, 2, {}, id="diagonal-C1-mixture"),
    pytest.param("diagonal", 3, 256, 0, {}, id="diagonal-C3-softmax"),
]


@pytest.mark.parametrize(("cell", "channels", "levels", "mixture", "arch"), CASES)
def test_each_sub_pixel_sees_only_what_precedes_it(
    cell: str, channels: int, levels: int, mixture: int, arch: dict[str, Any]
) -> None:
    model = _model(cell, channels, levels=levels, mixture=mixture, classes=2, **arch)
    with torch.no_grad():  # keep the readout's last ReLUs open: a tiny model's can be shut for every input
        model.post.bias.add_(1.0)
    res = model.shape.resolution
    order = _positions(channels, res)
    n, tries = len(order), 8
    # image (b, t) probes sub-pixel order[b]: its outputs depend only on its own input, so one
    # backward pass gives every sub-pixel's dependencies at once; a dependency counts when any of
    # the ``tries`` random images shows it (one image's ReLUs may close a path by chance)
    x = (torch.rand(n * tries, channels, res, res, dtype=torch.float64) * 2 - 1).requires_grad_(True)
    params = model.head.params(model.features(x, _labels(model, n * tries)))  # [n * tries, C, P, H, W]
    params = params.view(n, tries, *params.shape[1:])
    probe = torch.randn(params.shape[3], dtype=torch.float64)
    cs, is_, js = (torch.tensor(v) for v in zip(*order, strict=True))
    picked = params[torch.arange(n), :, cs, :, is_, js]  # [n, tries, P]: one gather, one scatter back
    (grad,) = torch.autograd.grad((picked * probe).sum(), x)
    grad = grad.view(n, tries, channels, res, res).abs().sum(1)
    rank = torch.empty(channels, res, res, dtype=torch.long)
    for r, (c, i, j) in enumerate(order):
        rank[c, i, j] = r
    for b, (c, i, j) in enumerate(order):
        seen = grad[b] != 0
        assert not seen[rank >= b].any(), f"sub-pixel {(c, i, j)} sees itself or a later one"
        if cell == "diagonal":  # the paper's claim: the whole past, no blind spot
            assert seen[rank < b].all(), f"sub-pixel {(c, i, j)} misses part of its past"
        else:  # a triangular field: at least the neighbours left, above and the earlier channels
            for cc, ii, jj in [(0, i, j - 1), (channels - 1, i, j - 1), (0, i - 1, j), (c - 1, i, j)]:
                if ii >= 0 and jj >= 0 and cc >= 0:
                    assert seen[cc, ii, jj], f"sub-pixel {(c, i, j)} misses {(cc, ii, jj)}"


@pytest.mark.parametrize(("cell", "channels", "levels", "mixture", "arch"), CASES)
def test_exact_nll_is_the_sum_of_the_conditionals(
    cell: str, channels: int, levels: int, mixture: int, arch: dict[str, Any]
) -> None:
    model = _model(cell, channels, levels=levels, mixture=mixture, classes=3, **arch)
    res = model.shape.resolution
    x = torch.randint(0, levels, (1, channels, res, res))
    y = torch.tensor([2])
    order = _positions(channels, res)
    # copy b: sub-pixel order[b] and everything after it replaced by noise; its conditional is read
    # there, so the sum only holds if none of those values reached it
    copies = x.repeat(len(order), 1, 1, 1)
    for b in range(len(order)):
        for c, i, j in order[b:]:
            copies[b, c, i, j] = torch.randint(0, levels, ())
    feats = model.features(to_unit(copies, levels).double(), y.repeat(len(order)))
    params = model.head.params(feats)
    total = torch.zeros((), dtype=torch.float64)
    for b, (c, i, j) in enumerate(order):
        p, value = params[b, c, :, i, j], x[0, c, i, j]
        if mixture:
            w, m, s = p.chunk(3)
            total = total + discretized_logistic_mixture_log_prob(value, w, m, s, levels)
        else:
            total = total + torch.log_softmax(p, dim=0)[value]
    nll = model.bounds(x, y)["nll"]
    assert nll.shape == (1,)
    torch.testing.assert_close(nll[0], -total, rtol=1e-9, atol=0.0)
    loss, parts = model.objective(x, y)
    assert parts == {}
    torch.testing.assert_close(loss.detach(), nll, rtol=1e-12, atol=0.0)


def _sample_by_full_passes(model: PixelRNN, labels: torch.Tensor | None, seed: int) -> torch.Tensor:
    """The reference sampler: one full pass over the partial image per sub-pixel, drawing in the
    same order and with the same head call as the model's sampler."""
    s = model.shape
    n = 2 if labels is None else labels.shape[0]
    gen = torch.Generator().manual_seed(seed)
    img = torch.zeros(n, s.channels, s.resolution, s.resolution, dtype=torch.long)
    with torch.no_grad():
        for c, i, j in _positions(s.channels, s.resolution):
            feats = model.features(to_unit(img, s.levels).double(), labels)
            img[:, c, i, j] = model.head.sample(feats[:, :, i : i + 1, j : j + 1], c, gen)[:, 0, 0]
    return img


@pytest.mark.parametrize(("cell", "channels", "levels", "mixture", "arch"), CASES)
def test_sampler_draws_what_full_passes_would(
    cell: str, channels: int, levels: int, mixture: int, arch: dict[str, Any]
) -> None:
    model = _model(cell, channels, levels=levels, mixture=mixture, classes=2, res=4, **arch)
    labels = torch.tensor([0, 1])
    fast = model.sample(2, labels, torch.Generator().manual_seed(7))
    assert fast.dtype == torch.long and fast.shape == (2, channels, 4, 4)
    assert int(fast.min()) >= 0 and int(fast.max()) < levels
    assert torch.equal(fast, _sample_by_full_passes(model, labels, 7))
    assert torch.equal(fast, model.sample(2, labels, torch.Generator().manual_seed(7)))


@pytest.mark.parametrize("cell", ["row", "diagonal"])
def test_class_conditional_samples_follow_the_labels(cell: str) -> None:
    model = _model(cell, 1, classes=2, res=4)
    with torch.no_grad():  # class biases that move the gates a lot, so the draws must differ
        for name, p in model.named_parameters():
            if name.endswith("cls.weight"):
                p.copy_(3.0 * torch.randn_like(p))
    a = model.sample(3, torch.zeros(3, dtype=torch.long), torch.Generator().manual_seed(3))
    b = model.sample(3, torch.ones(3, dtype=torch.long), torch.Generator().manual_seed(3))
    assert not torch.equal(a, b)
    with pytest.raises(ValueError, match="class-conditional"):
        model.sample(3, None, torch.Generator().manual_seed(3))


@pytest.mark.parametrize("cell", ["row", "diagonal"])
@pytest.mark.parametrize("levels", [2, 256])
def test_uniform_model_scores_log2_levels_bits_per_dim(cell: str, levels: int) -> None:
    model = _model(cell, 3, levels=levels, classes=2)
    torch.nn.init.zeros_(model.head.proj.weight)
    torch.nn.init.zeros_(model.head.proj.bias)
    x = torch.randint(0, levels, (3, 3, 5, 5))
    bpd = bits_per_dim(model.bounds(x, torch.tensor([0, 1, 0]))["nll"], model.shape.dims)
    torch.testing.assert_close(bpd, torch.full((3,), math.log2(levels), dtype=torch.float64))


@pytest.mark.parametrize("cell", ["row", "diagonal"])
def test_a_few_steps_lower_the_nll(cell: str) -> None:
    torch.manual_seed(0)
    shape = DensityShape(resolution=6, channels=3, levels=256)
    model = build_model("pixelrnn", {"cell": cell, "layers": 2, "width": 6, "input_kernel": 3}, shape=shape)
    x = torch.randint(0, 256, (4, 3, 6, 6))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    first = float(model.bounds(x, None)["nll"].mean())
    for _ in range(15):
        loss = model.objective(x, None)[0].mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert float(model.bounds(x, None)["nll"].mean()) < first - 0.02 * first


def test_registered_as_a_density_family() -> None:
    family = families("density")["pixelrnn"]
    assert family.arch is PixelRNNArch
    model = build_model("pixelrnn", {"layers": 2, "width": 6}, shape=DensityShape(resolution=6, channels=3))
    assert isinstance(model, PixelRNN) and model.exact
    assert model.arch.cell == "row" and model.arch.input_kernel == 7 and model.arch.mixture == 0


@pytest.mark.parametrize(
    ("arch", "message"),
    [
        ({"cell": "gru"}, "unknown cell 'gru'; choose one of row, diagonal"),
        ({"layers": 0}, "layers must be >= 1"),
        ({"width": 8}, r"width must be a positive multiple of the image channels \(3\), got 8"),
        ({}, r"width must be a positive multiple of the image channels \(3\), got 64"),
        ({"input_kernel": 4}, "input_kernel must be odd and >= 3"),
        ({"input_kernel": 1}, "input_kernel must be odd and >= 3"),
        ({"row_kernel": 2}, "row_kernel must be odd and >= 3"),
        ({"mixture": -1}, "mixture must be >= 0"),
    ],
)
def test_bad_options_are_one_line_errors(arch: dict[str, Any], message: str) -> None:
    options = {"width": 6, **arch} if arch else {}  # {}: the default width, 64, is not a multiple of 3
    with pytest.raises(ValueError, match=message):
        build_model("pixelrnn", options, shape=DensityShape(resolution=6, channels=3))
