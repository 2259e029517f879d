"""GAN objectives against naive float64 formulas from the papers, and WGAN-GP's penalty."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor, nn

from bigtrain.losses import (
    LOSS_NAMES,
    GANLoss,
    build_loss,
    gradient_penalty,
)
from bigtrain.models.dcgan import DCGANDiscriminator

REAL = torch.tensor([2.0, -0.5, 0.3, 4.0, -3.0], dtype=torch.float64)
FAKE = torch.tensor([-1.5, 0.7, -4.0, 0.0, 2.5], dtype=torch.float64)


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def _sig(t: float) -> float:
    return 1.0 / (1.0 + math.exp(-t))


# Naive reference formulas, written straight from each paper with D = sigmoid(logit) where needed.
def _bce_d(real: list[float], fake: list[float]) -> float:
    return -_mean([math.log(_sig(r)) for r in real]) - _mean([math.log(1 - _sig(f)) for f in fake])


EXPECTED = {
    "minimax": (_bce_d, lambda fake: _mean([math.log(1 - _sig(f)) for f in fake])),
    "non_saturating": (_bce_d, lambda fake: -_mean([math.log(_sig(f)) for f in fake])),
    "lsgan": (
        lambda real, fake: 0.5 * _mean([(r - 1) ** 2 for r in real]) + 0.5 * _mean([f**2 for f in fake]),
        lambda fake: 0.5 * _mean([(f - 1) ** 2 for f in fake]),
    ),
    "wgan": (lambda real, fake: _mean(fake) - _mean(real), lambda fake: -_mean(fake)),
    "wgan_gp": (lambda real, fake: _mean(fake) - _mean(real), lambda fake: -_mean(fake)),
    "hinge": (
        lambda real, fake: _mean([max(0.0, 1 - r) for r in real]) + _mean([max(0.0, 1 + f) for f in fake]),
        lambda fake: -_mean(fake),
    ),
}


def test_loss_names_cover_every_objective() -> None:
    assert set(LOSS_NAMES) == set(EXPECTED)
    assert isinstance(LOSS_NAMES, tuple)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_losses_match_hand_computed_values(name: str) -> None:
    loss = build_loss(name)
    assert isinstance(loss, GANLoss)
    d_ref, g_ref = EXPECTED[name]
    d = loss.d_loss(REAL, FAKE)
    g = loss.g_loss(FAKE)
    assert d.dim() == 0 and g.dim() == 0
    assert d.item() == pytest.approx(d_ref(REAL.tolist(), FAKE.tolist()), rel=1e-12, abs=1e-12)
    assert g.item() == pytest.approx(g_ref(FAKE.tolist()), rel=1e-12, abs=1e-12)


def test_only_wgan_gp_asks_for_a_gradient_penalty() -> None:
    assert {name for name in LOSS_NAMES if build_loss(name).gradient_penalty} == {"wgan_gp"}
    assert {name for name in LOSS_NAMES if build_loss(name).weight_clip} == {"wgan"}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_losses_stay_finite_for_extreme_float32_logits(name: str) -> None:
    loss = build_loss(name)
    extreme = torch.tensor([-200.0, -50.0, 50.0, 200.0], requires_grad=True)
    total = loss.d_loss(extreme, extreme) + loss.g_loss(extreme)
    total.backward()
    assert torch.isfinite(total)
    assert torch.isfinite(extreme.grad).all()


def _g_logit_grad(name: str, logits: Tensor) -> Tensor:
    logits = logits.clone().requires_grad_(True)
    build_loss(name).g_loss(logits).backward()
    return logits.grad * logits.numel()  # undo the batch mean: per-sample d loss / d logit


def test_minimax_generator_saturates_where_non_saturating_does_not() -> None:
    # D confidently rejects the fakes: sigmoid(-10) ~ 4.5e-5.
    confident_fake = torch.full((8,), -10.0)
    minimax = _g_logit_grad("minimax", confident_fake)
    non_saturating = _g_logit_grad("non_saturating", confident_fake)
    # d/dl log(1 - sigmoid(l)) = -sigmoid(l) -> 0;  d/dl -log sigmoid(l) = -sigmoid(-l) -> -1.
    torch.testing.assert_close(minimax, torch.full_like(minimax, -torch.sigmoid(torch.tensor(-10.0)).item()))
    assert minimax.abs().max() < 1e-4
    assert non_saturating.abs().min() > 0.999
    # Both push the fake logit up (same sign), only the magnitude differs.
    assert (minimax < 0).all() and (non_saturating < 0).all()


def test_unknown_loss_lists_choices_on_one_line() -> None:
    with pytest.raises(ValueError) as info:
        build_loss("wasserstein")
    message = str(info.value)
    assert "\n" not in message and "'wasserstein'" in message
    assert all(name in message for name in LOSS_NAMES)


class _LinearCritic(nn.Module):
    """D(x) = <w, vec(x)>: its input gradient is w everywhere, so ||grad|| = ||w||."""

    def __init__(self, numel: int, norm: float) -> None:
        super().__init__()
        w = torch.randn(numel, generator=torch.Generator().manual_seed(0))
        self.w = nn.Parameter(norm * w / w.norm())

    def forward(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        return x.flatten(1) @ self.w


def _images(seed: int, batch: int = 6) -> Tensor:
    return torch.randn(batch, 3, 8, 8, generator=torch.Generator().manual_seed(seed))


def test_gradient_penalty_is_zero_for_a_unit_lipschitz_linear_critic() -> None:
    critic = _LinearCritic(3 * 8 * 8, norm=1.0)
    gp = gradient_penalty(critic, _images(1), _images(2), None, weight=10.0)
    assert gp.item() == pytest.approx(0.0, abs=1e-8)


def test_gradient_penalty_of_a_scaled_linear_critic() -> None:
    critic = _LinearCritic(3 * 8 * 8, norm=3.0)
    gp = gradient_penalty(critic, _images(1), _images(2), None, weight=10.0)
    # 10 * (3 - 1)^2, whatever the interpolation coefficients.
    assert gp.item() == pytest.approx(40.0, rel=1e-5)
    gp.backward()
    # d/dw of weight * (||w|| - 1)^2 = weight * 2 (||w|| - 1) w / ||w||: needs create_graph=True.
    w = critic.w.detach()
    torch.testing.assert_close(critic.w.grad, 10.0 * 2 * (3.0 - 1.0) * w / w.norm())


def test_gradient_penalty_with_layer_norm_dcgan_critic() -> None:
    torch.manual_seed(0)
    critic = DCGANDiscriminator(16, 3, 4, 8, norm="layer")
    real = torch.randn(4, 3, 16, 16)
    fake = torch.randn(4, 3, 16, 16, requires_grad=True)
    y = torch.tensor([0, 1, 2, 3])

    gp = gradient_penalty(critic, real, fake, y, weight=10.0, generator=torch.Generator().manual_seed(7))
    again = gradient_penalty(critic, real, fake, y, weight=10.0, generator=torch.Generator().manual_seed(7))
    other = gradient_penalty(critic, real, fake, y, weight=10.0, generator=torch.Generator().manual_seed(8))
    assert gp.dim() == 0 and torch.isfinite(gp) and gp.item() > 0
    assert gp.item() == again.item()  # the caller's generator fixes the interpolates
    assert gp.item() != other.item()

    gp.backward()
    # Every weight shapes the input gradient (biases do not: they shift D, not its slope).
    weights = [p for name, p in critic.named_parameters() if not name.endswith("bias")]
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in weights)
    assert critic.embed.weight.grad.abs().sum() > 0  # labels reach the critic
    assert fake.grad is None  # the penalty trains D only
