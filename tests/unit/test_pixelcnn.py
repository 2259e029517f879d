"""PixelCNN, gated and original: the autoregressive order holds (no sub-pixel sees itself or what
comes after it), the gated model has no blind spot and the original has, the exact NLL is the
sum of the per-sub-pixel conditionals, the fast sampler draws exactly what full passes would, and a
uniform model scores log2(levels) bits per dimension."""

from __future__ import annotations

import math

import pytest
import torch

from bigtrain.models import build_model
from bigtrain.models.density import DensityShape, bits_per_dim, to_unit
from bigtrain.models.masked import MaskedConv2d, centre_mask


def _model(
    channels: int = 1,
    *,
    gated: bool = True,
    levels: int = 256,
    classes: int = 0,
    mixture: int = 0,
    res: int = 6,
) -> torch.nn.Module:
    torch.manual_seed(0)
    shape = DensityShape(resolution=res, channels=channels, num_classes=classes, levels=levels)
    arch = {"gated": gated, "layers": 3, "width": 12, "kernel": 3, "input_kernel": 3, "mixture": mixture}
    model = build_model("pixelcnn", arch, shape=shape).double()
    for p in model.parameters():  # the class biases start at zero: make them matter
        p.data.add_(0.1 * torch.randn_like(p))
    return model


def _order(c: int, i: int, j: int, channels: int, res: int) -> int:
    return (i * res + j) * channels + c


def _dependencies(model: torch.nn.Module, c: int, i: int, j: int) -> torch.Tensor:
    """Which input sub-pixels the parameters of sub-pixel (c, i, j) depend on: |d params / d x| > 0
    for some of 16 random images (one image's ReLUs may close a path by chance)."""
    s = model.shape
    x = (torch.rand(16, s.channels, s.resolution, s.resolution, dtype=torch.float64) * 2 - 1).requires_grad_(
        True
    )
    y = torch.zeros(16, dtype=torch.long) if s.num_classes else None
    params = model.head.params(model.features(x, y))[:, c, :, i, j]
    (grad,) = torch.autograd.grad(params.square().sum(), x)
    return grad.abs().sum(0) > 0


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("gated", [True, False])
def test_no_sub_pixel_sees_itself_or_later_ones(channels: int, gated: bool) -> None:
    model = _model(channels, gated=gated, classes=3)
    res = model.shape.resolution
    for c, i, j in [(0, 0, 0), (channels - 1, 2, 3), (0, 3, 0), (channels - 1, 5, 5)]:
        seen = _dependencies(model, c, i, j)
        for cc in range(channels):
            for ii in range(res):
                for jj in range(res):
                    if _order(cc, ii, jj, channels, res) >= _order(c, i, j, channels, res):
                        assert not seen[cc, ii, jj], (c, i, j, "sees", cc, ii, jj)
        if channels == 3 and c == 2:  # blue sees red and green of its own pixel
            assert seen[0, i, j] and seen[1, i, j]


def test_the_gated_model_has_no_blind_spot_and_the_original_has() -> None:
    """Sub-pixel (4, 2) with three 3x3 layers: the gated model reaches the pixel up and to the
    right (3, 4); the original's stacked masked kernels never do (van den Oord et al. 2016b, fig. 1)."""
    gated = _dependencies(_model(gated=True), 0, 4, 2)[0]
    original = _dependencies(_model(gated=False), 0, 4, 2)[0]
    assert gated[3, 4] and gated[3, 3] and gated[2, 4]
    assert not original[3, 4] and original[3, 3]
    # every pixel of the rows above within the vertical stack's reach (four rows here) is seen
    assert gated[:4].all()


@pytest.mark.parametrize(
    ("channels", "levels", "mixture"), [(1, 256, 0), (3, 256, 0), (1, 2, 0), (3, 256, 2)]
)
def test_exact_nll_is_the_sum_of_per_sub_pixel_conditionals(channels: int, levels: int, mixture: int) -> None:
    model = _model(channels, levels=levels, mixture=mixture, res=4, classes=2)
    g = torch.Generator().manual_seed(1)
    x = torch.randint(0, levels, (1, channels, 4, 4), generator=g)
    y = torch.tensor([1])
    total = 0.0
    for i in range(4):
        for j in range(4):
            for c in range(channels):
                # everything at or after (c, i, j) replaced by noise: the conditional must not change
                probe = torch.randint(0, levels, x.shape, generator=g)
                before = torch.zeros(channels, 4, 4, dtype=torch.bool)
                before[:, :i] = True
                before[:, i, :j] = True
                before[:c, i, j] = True
                probe[0][before] = x[0][before]
                feats = model.features(to_unit(probe, levels).double(), y)
                # the log-probability of x[c, i, j] alone: the head's NLL restricted to one sub-pixel
                p = model.head.params(feats)[0, c, :, i, j]
                if mixture:
                    from bigtrain.models.density import discretized_logistic_mixture_log_prob

                    w, m, sc = p.view(3, mixture)
                    total -= float(
                        discretized_logistic_mixture_log_prob(x[0, c, i, j], w, m, sc, levels).detach()
                    )
                else:
                    total -= float(torch.log_softmax(p.detach(), 0)[x[0, c, i, j]])
    exact = float(model.bounds(x, y)["nll"][0].detach())
    assert exact == pytest.approx(total, rel=1e-9)


def test_a_uniform_model_scores_log2_levels_bits_per_dim() -> None:
    for levels in (256, 2):
        model = _model(3, levels=levels)
        torch.nn.init.zeros_(model.head.proj.weight)
        torch.nn.init.zeros_(model.head.proj.bias)
        x = torch.randint(0, levels, (5, 3, 6, 6))
        bpd = bits_per_dim(model.bounds(x, None)["nll"], model.shape.dims)
        assert torch.allclose(bpd, torch.full((5,), math.log2(levels), dtype=torch.float64), atol=1e-12)


def _naive_sample(
    model: torch.nn.Module, n: int, labels: torch.Tensor | None, g: torch.Generator
) -> torch.Tensor:
    """Sub-pixel by sub-pixel from full passes over the whole image, drawing as the model's head does."""
    s = model.shape
    x = torch.zeros(n, s.channels, s.resolution, s.resolution, dtype=torch.long)
    with torch.no_grad():
        for i in range(s.resolution):
            for j in range(s.resolution):
                for c in range(s.channels):
                    feats = model.features(to_unit(x, s.levels).double(), labels)
                    x[:, c, i, j] = model.head.sample(feats[:, :, i : i + 1, j : j + 1], c, g)[:, 0, 0]
    return x


@pytest.mark.parametrize(
    ("gated", "channels", "mixture"), [(True, 1, 0), (True, 3, 0), (False, 1, 0), (True, 3, 2)]
)
def test_the_sampler_draws_what_full_passes_draw(gated: bool, channels: int, mixture: int) -> None:
    model = _model(channels, gated=gated, classes=3, mixture=mixture, res=7)
    labels = torch.tensor([0, 2, 1])
    fast = model.sample(3, labels, torch.Generator().manual_seed(5))
    slow = _naive_sample(model, 3, labels, torch.Generator().manual_seed(5))
    assert torch.equal(fast, slow)
    assert torch.equal(fast, model.sample(3, labels, torch.Generator().manual_seed(5)))  # the seed decides
    with torch.no_grad():  # the class changes the distribution the draws come from
        ours, others = model.bounds(fast, labels)["nll"], model.bounds(fast, torch.tensor([1, 1, 1]))["nll"]
    assert ours[2] == others[2] and ours[0] != others[0] and ours[1] != others[1]


def test_pixelcnn_trains_and_refuses_bad_options() -> None:
    model = _model(1, levels=2).float()
    x = (torch.rand(8, 1, 6, 6) > 0.5).long()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    first = None
    for _ in range(20):
        loss = model.objective(x, None)[0].mean()
        first = first if first is not None else float(loss)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert float(loss) < 0.8 * first
    shape = DensityShape(resolution=6, channels=3)
    with pytest.raises(ValueError, match="multiples of the image's 3 channels"):
        build_model("pixelcnn", {"width": 8}, shape=shape)
    with pytest.raises(ValueError, match="must be odd"):
        build_model("pixelcnn", {"kernel": 4}, shape=shape)


def test_mask_a_drops_the_centre_for_one_channel_and_orders_colours() -> None:
    assert MaskedConv2d(1, 4, (3, 3), mask_type="A").mask[:, :, 1, 1].sum() == 0
    assert MaskedConv2d(1, 4, (3, 3), mask_type="B").mask[:, :, 1, 1].all()
    gated = centre_mask(12, 3, 3, "A", gates=2)  # both halves of a gated unit grouped alike
    assert torch.equal(gated[:6], gated[6:]) and gated[:2].sum() == 0 and gated[4:6].sum() == 4
