"""The VAE density family (``bigtrain.models.vae``): its likelihoods are mass functions, its bounds
are ordered as the theory says, its KL is right, it trains, it is reproducible and it refuses
inconsistent options."""

from __future__ import annotations

import math

import pytest
import torch
from torch.distributions import Normal

from bigtrain.errors import ConfigError
from bigtrain.models import build_model, families
from bigtrain.models.density import DensityShape, to_unit
from bigtrain.models.vae import VAE, VAEArch, default_depth, discretized_gaussian_log_prob, gaussian_kl

BINARY = DensityShape(resolution=16, channels=1, num_classes=0, levels=2)


def _vae(shape: DensityShape, seed: int = 0, **arch: object) -> VAE:
    torch.manual_seed(seed)
    options = {"latent_dim": 4, "width": 8, **arch}
    return build_model("vae", options, shape=shape)


def _digits(n: int, shape: DensityShape, seed: int = 0) -> torch.Tensor:
    """A tiny fixed batch with structure (bright squares on a dark background, jittered), so a few
    optimiser steps have something to learn."""
    g = torch.Generator().manual_seed(seed)
    r = shape.resolution
    img = torch.zeros(n, shape.channels, r, r)
    for i in range(n):
        a, b = torch.randint(0, r // 2, (2,), generator=g).tolist()
        img[i, :, a : a + r // 2, b : b + r // 2] = 1.0
    noise = 0.1 * torch.randn(img.shape, generator=g)
    return ((img + noise).clamp(0, 1) * (shape.levels - 1)).round().long()


# 1. each decoder likelihood is a probability mass function over the levels


@pytest.mark.parametrize(
    ("likelihood", "levels", "channels", "scale"),
    [
        ("bernoulli", 2, 1, "pixel"),
        ("logistic", 256, 3, "pixel"),
        ("logistic", 256, 1, "channel"),
        ("gaussian", 256, 1, "pixel"),
        ("gaussian", 256, 3, "channel"),
    ],
)
def test_decoder_likelihoods_sum_to_one(likelihood: str, levels: int, channels: int, scale: str) -> None:
    shape = DensityShape(resolution=8, channels=channels, num_classes=0, levels=levels)
    model = _vae(shape, likelihood=likelihood, scale=scale)
    with torch.no_grad():
        params = model.decode(3.0 * torch.randn(1, 4), None)  # [1, P, C, 8, 8]
        every = torch.arange(levels).view(levels, 1, 1, 1).expand(levels, channels, 8, 8)
        logp = model.log_prob_subpixels(every, params.expand(levels, *params.shape[1:]))
    # every sub-pixel of the decoded image: its masses over all levels sum to 1
    assert torch.allclose(
        torch.logsumexp(logp.double(), dim=0), torch.zeros(channels, 8, 8).double(), atol=1e-4
    )
    if likelihood == "bernoulli":
        return
    # and for extreme parameters: locations beyond [-1, 1], scales far below a bin and far above
    loc = torch.tensor([-3.0, -1.0, -0.999, 0.0, 0.37, 1.0, 2.5]).view(1, 1, -1, 1)
    log_scale = torch.tensor([-12.0, -7.0, -4.0, -1.0, 0.0, 3.0, 8.0]).view(1, 1, 1, -1)
    grid = torch.stack(torch.broadcast_tensors(loc, log_scale), dim=1).expand(levels, 2, 1, 7, 7)
    x = torch.arange(levels).view(levels, 1, 1, 1).expand(levels, 1, 7, 7)
    logp = model.log_prob_subpixels(x, grid)
    assert torch.isfinite(logp).all()
    assert torch.allclose(torch.logsumexp(logp.double(), dim=0), torch.zeros(1, 7, 7).double(), atol=1e-4)


def test_discretized_gaussian_is_the_normal_mass_of_each_bin() -> None:
    """Normalisation alone would pass any distribution: compare with the bins' Normal masses
    computed naively in double precision where that is accurate."""
    levels = 256
    x = torch.arange(levels)
    for mean, log_scale in [(0.2, -2.0), (-0.9, -4.5), (0.0, 0.5), (1.3, -1.0)]:
        normal = Normal(torch.tensor(mean, dtype=torch.float64), torch.tensor(log_scale).double().exp())
        lo = to_unit(x, levels).double() - 1.0 / (levels - 1)
        hi = to_unit(x, levels).double() + 1.0 / (levels - 1)
        cdf_hi = torch.where(x == levels - 1, torch.ones_like(hi), normal.cdf(hi))
        cdf_lo = torch.where(x == 0, torch.zeros_like(lo), normal.cdf(lo))
        mass = cdf_hi - cdf_lo
        got = (
            discretized_gaussian_log_prob(x, torch.tensor(mean), torch.tensor(log_scale), levels)
            .exp()
            .double()
        )
        ok = mass > 1e-6  # where the naive double difference is itself accurate
        assert ok.sum() > 5
        assert torch.allclose(got[ok], mass[ok], rtol=2e-4, atol=0)


@pytest.mark.parametrize(("likelihood", "levels"), [("bernoulli", 2), ("logistic", 256), ("gaussian", 256)])
def test_draws_follow_the_likelihood(likelihood: str, levels: int) -> None:
    """``sample`` is honest: draws from p(x|z) have the frequencies ``log_prob_subpixels`` gives."""
    model = _vae(DensityShape(resolution=8, channels=1, num_classes=0, levels=levels), likelihood=likelihood)
    n = 100_000
    params = torch.tensor([0.3, -3.0] if likelihood != "bernoulli" else [0.4]).view(1, -1, 1, 1, 1)
    draws = model.draw(params.expand(n, -1, 1, 1, 1), torch.Generator().manual_seed(1)).flatten()
    freq = torch.bincount(draws, minlength=levels).double() / n
    every = torch.arange(levels).view(levels, 1, 1, 1)
    prob = model.log_prob_subpixels(every, params.expand(levels, -1, 1, 1, 1)).flatten().double().exp()
    # Pearson's chi-square over the bins with a visible mass: about its degrees of freedom when
    # the draws follow ``prob`` (sampling noise), hundreds of times more for a bin shifted by one
    # (the bins of tiny mass pooled into one, as the test asks of every bin's expected count)
    seen = prob > 1e-4
    freq = torch.cat([freq[seen], freq[~seen].sum().view(1)])
    prob = torch.cat([prob[seen], prob[~seen].sum().view(1)])
    chi2 = ((freq - prob).pow(2) / prob.clamp(min=1e-12)).sum() * n
    dof = len(prob) - 1
    assert chi2 < dof + 6 * math.sqrt(2 * dof)


# 2. the importance-weighted bound against the ELBO


def _train(model: VAE, x: torch.Tensor, steps: int, y: torch.Tensor | None = None) -> None:
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    torch.manual_seed(123)
    for _ in range(steps):
        loss, _ = model.objective(x, y)
        opt.zero_grad()
        loss.mean().backward()
        opt.step()


@pytest.mark.parametrize("trained", [False, True])
def test_iw_bound_is_tighter_than_the_elbo(trained: bool) -> None:
    model = _vae(BINARY)
    x = _digits(12, BINARY)
    if trained:
        _train(model, x, steps=40)
    b = model.bounds(x, None, generator=torch.Generator().manual_seed(5), iw_samples=64)
    assert set(b) == {"elbo", "iw"}  # the names the likelihood task reports
    # draw by draw, the IW bound is below the sampled ELBO of the same 64 draws (Jensen's inequality)
    with torch.no_grad():
        log_w, log_pxz = model.log_weights(x, None, 64, generator=torch.Generator().manual_seed(5))
        kl = gaussian_kl(*model.encode(x, None))
    iw = -(torch.logsumexp(log_w, dim=1) - math.log(64))
    assert torch.equal(iw, b["iw"])
    assert torch.allclose(b["elbo"], -log_pxz.mean(1) + kl)
    assert (iw <= -log_w.mean(1) + 1e-4).all()
    if not trained:
        # a random encoder's q(z|x) is nearly the prior (KL ~ 0.003 nats), so the bounds nearly
        # coincide and the reported ELBO (closed-form KL) differs from the sampled one by noise of
        # that size: the IW bound is below it up to that noise
        assert b["iw"].mean() <= b["elbo"].mean() + 0.01
    else:
        # a trained encoder is informative (KL of several nats): the IW bound is clearly tighter,
        # image by image
        assert (b["iw"] <= b["elbo"]).all()
        assert (b["elbo"] - b["iw"]).mean() > 1.0


def test_one_importance_sample_is_the_one_sample_elbo() -> None:
    """With K=1, -log w is rec + log q(z|x) - log p(z) at the reparameterised z of the same seed."""
    model = _vae(BINARY).double()
    x = _digits(6, BINARY)
    _train(model, x, steps=5)
    with torch.no_grad():
        log_w, log_pxz = model.log_weights(x, None, 1, generator=torch.Generator().manual_seed(9))
        mu, logvar = model.encode(x, None)
        z = model.reparameterize(mu, logvar, torch.Generator().manual_seed(9))
        rec = -model.log_px(x, model.decode(z, None))
        log_q = Normal(mu, (0.5 * logvar).exp()).log_prob(z).sum(1)
        log_p = Normal(torch.zeros_like(z), torch.ones_like(z)).log_prob(z).sum(1)
        b = model.bounds(x, None, generator=torch.Generator().manual_seed(9), iw_samples=1)
    assert torch.equal(-log_pxz[:, 0], rec)
    assert torch.allclose(b["elbo"], rec + gaussian_kl(mu, logvar), rtol=0, atol=1e-9)
    assert torch.allclose(-log_w[:, 0], rec + log_q - log_p, rtol=0, atol=1e-9)
    assert "iw" not in b  # the contract: iw only with K > 1


def test_chunking_does_not_change_the_bounds() -> None:
    model = _vae(BINARY)
    x = _digits(4, BINARY)
    whole = model.bounds(x, None, generator=torch.Generator().manual_seed(2), iw_samples=16)
    model.eval_chunk = 12  # three samples of the four images at a time, the last chunk short
    chunked = model.bounds(x, None, generator=torch.Generator().manual_seed(2), iw_samples=16)
    for key in whole:
        assert torch.allclose(whole[key], chunked[key], rtol=1e-6, atol=1e-4), key


# 3. the KL term


def test_kl_matches_a_monte_carlo_estimate() -> None:
    g = torch.Generator().manual_seed(0)
    mu = torch.randn(3, 4, generator=g, dtype=torch.float64)
    logvar = torch.rand(3, 4, generator=g, dtype=torch.float64) * 2.0 - 1.0
    q = Normal(mu, (0.5 * logvar).exp())
    z = q.sample((200_000,))  # [S, 3, 4]
    mc = (q.log_prob(z) - Normal(0.0, 1.0).log_prob(z)).sum(-1).mean(0)
    kl = gaussian_kl(mu, logvar)
    assert torch.allclose(kl, mc, rtol=0.02)
    assert torch.equal(gaussian_kl(torch.zeros(2, 5), torch.zeros(2, 5)), torch.zeros(2))
    # and the objective's kl is this closed form at the encoder's output
    model = _vae(BINARY)
    x = _digits(3, BINARY)
    _, parts = model.objective(x, None)
    assert torch.allclose(parts["kl"], gaussian_kl(*model.encode(x, None)))


# 4. training and the objective's parts


def test_adam_steps_lower_the_objective_and_kl_weight_scales_the_kl() -> None:
    shape = DensityShape(resolution=8, channels=3, num_classes=0, levels=256)
    model = _vae(shape, likelihood="logistic")
    x = _digits(8, shape)
    before = model.bounds(x, None, generator=torch.Generator().manual_seed(0))["elbo"].mean()
    _train(model, x, steps=30)
    after = model.bounds(x, None, generator=torch.Generator().manual_seed(0))["elbo"].mean()
    assert after < 0.95 * before  # nats per image: about 700 at the start
    for w in (0.0, 0.3, 1.0):
        torch.manual_seed(7)
        loss, parts = model.objective(x, None, kl_weight=w)
        assert set(parts) == {"rec", "kl"}
        assert torch.equal(loss, parts["rec"] + w * parts["kl"])
    torch.manual_seed(7)
    loss0, parts0 = model.objective(x, None, kl_weight=0.0)
    torch.manual_seed(7)
    loss1, parts1 = model.objective(x, None, kl_weight=1.0)
    assert torch.equal(loss0, parts0["rec"]) and torch.equal(parts0["rec"], parts1["rec"])
    assert torch.allclose(loss1 - loss0, parts1["kl"])
    assert (parts1["kl"] > 0).all()


# 5. reproducibility and conditioning


def test_bounds_and_samples_are_reproducible_and_the_label_is_used() -> None:
    shape = DensityShape(resolution=8, channels=3, num_classes=3, levels=256)
    model = _vae(shape, likelihood="gaussian")
    x = _digits(4, shape)
    y = torch.tensor([0, 1, 2, 0])
    first = model.bounds(x, y, generator=torch.Generator().manual_seed(3), iw_samples=8)
    again = model.bounds(x, y, generator=torch.Generator().manual_seed(3), iw_samples=8)
    for key in first:
        assert torch.equal(first[key], again[key]), key
    s1 = model.sample(4, y, torch.Generator().manual_seed(4))
    s2 = model.sample(4, y, torch.Generator().manual_seed(4))
    assert torch.equal(s1, s2)
    assert s1.dtype == torch.long and s1.shape == (4, 3, 8, 8) and s1.min() >= 0 and s1.max() <= 255
    m1 = model.sample_mean(4, y, torch.Generator().manual_seed(4))
    assert torch.equal(m1, model.sample_mean(4, y, torch.Generator().manual_seed(4)))
    assert m1.dtype == torch.float32 and m1.min() >= -1.0 and m1.max() <= 1.0
    # the same z under another label decodes to another image, and the encoder reads y too
    z = torch.randn(2, 4)
    with torch.no_grad():
        assert not torch.allclose(
            model.decode(z, torch.tensor([0, 0])), model.decode(z, torch.tensor([1, 1]))
        )
        mu0, _ = model.encode(x[:2], torch.tensor([0, 0]))
        mu1, _ = model.encode(x[:2], torch.tensor([2, 2]))
    assert not torch.allclose(mu0, mu1)
    with pytest.raises(ValueError, match="class-conditional"):
        model.sample(2, None, torch.Generator().manual_seed(0))


# 6. refused options


@pytest.mark.parametrize(
    ("arch", "shape", "message"),
    [
        ({"likelihood": "bernoulli"}, DensityShape(16, 1, 0, 256), "needs binarised data"),
        ({"likelihood": "logistic"}, BINARY, "needs more than 2 levels"),
        ({"likelihood": "gaussian"}, BINARY, "needs more than 2 levels"),
        ({"likelihood": "poisson"}, BINARY, "unknown VAE likelihood 'poisson'"),
        ({"scale": "image"}, DensityShape(16, 1, 0, 256), "unknown VAE scale 'image'"),
        ({"width": 0}, BINARY, "must be positive"),
        ({"latent_dim": -1}, BINARY, "must be positive"),
        ({"depth": 5}, BINARY, "divisible by 2\\*\\*depth, got depth=5"),
        ({"depth": -1}, BINARY, "depth must be >= 0"),
    ],
)
def test_bad_options_are_one_line_errors(arch: dict, shape: DensityShape, message: str) -> None:
    with pytest.raises(ValueError, match=message) as info:
        build_model("vae", arch, shape=shape)
    assert "\n" not in str(info.value)


# 7. registration


def test_registered_as_a_density_family() -> None:
    assert families("density")["vae"].arch is VAEArch
    model = build_model("vae", {"latent_dim": 4, "width": 8}, shape=BINARY)
    assert isinstance(model, VAE) and model.exact is False and model.latent_dim == 4
    assert model.likelihood == "bernoulli"  # auto, from levels=2
    assert (
        build_model("vae", {"latent_dim": 4, "width": 8}, shape=DensityShape(8, 3)).likelihood == "logistic"
    )
    assert [default_depth(r) for r in (32, 28, 16, 8, 4, 64)] == [3, 2, 2, 1, 0, 4]
    with pytest.raises(ConfigError, match="model.arch.beta"):
        build_model("vae", {"beta": 4.0}, shape=BINARY)
