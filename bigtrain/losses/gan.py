"""GAN objectives, selected by name, plus WGAN-GP's gradient penalty.

Every objective is written on D's *raw logits* ``l``. Where the paper's formula contains
``D = sigmoid(l)``, the logs are rewritten with softplus, ``softplus(t) = log(1 + e^t)``:

    log sigmoid(l)     = -softplus(-l)
    log(1 - sigmoid(l)) = -softplus(l)

which stays finite for any float logit, whereas the naive form hits ``log(0)``: in float32,
``1 - sigmoid(l)`` rounds to 0 once ``l`` exceeds ~17, and ``sigmoid(l)`` underflows for ``l < -88``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor


class GANLoss:
    """One GAN objective: the two players' losses, each a scalar batch mean to *minimise*.

    ``gradient_penalty`` tells the trainer whether the objective is only defined together with
    :func:`gradient_penalty` on the critic (WGAN-GP); the losses themselves never include it,
    because the penalty needs D and the images, not just logits.
    """

    gradient_penalty: ClassVar[bool] = False
    # the trainer clips the critic's weights to [-c, c] after every critic step (the original WGAN)
    weight_clip: ClassVar[bool] = False

    def d_loss(self, real_logits: Tensor, fake_logits: Tensor) -> Tensor:
        """Discriminator (critic) loss from its logits on real and generated images."""
        raise NotImplementedError

    def g_loss(self, fake_logits: Tensor) -> Tensor:
        """Generator loss from D's logits on generated images."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


GAN_LOSSES: dict[str, type[GANLoss]] = {}


def _register(name: str) -> Callable[[type[GANLoss]], type[GANLoss]]:
    def decorator(cls: type[GANLoss]) -> type[GANLoss]:
        GAN_LOSSES[name] = cls
        return cls

    return decorator


def _bce_d_loss(real_logits: Tensor, fake_logits: Tensor) -> Tensor:
    # Goodfellow et al. 2014 eq. 1, D's side: maximise log D(x) + log(1 - D(G(z))),
    # i.e. minimise softplus(-real) + softplus(fake).
    return F.softplus(-real_logits).mean() + F.softplus(fake_logits).mean()


@_register("minimax")
class MinimaxLoss(GANLoss):
    """The original zero-sum game (Goodfellow et al. 2014, eq. 1).

    G minimises ``log(1 - D(G(z))) = -softplus(l)``. Its gradient w.r.t. the logit is
    ``-sigmoid(l)``, which vanishes when D confidently rejects fakes (``l -> -inf``), i.e. early
    in training; kept as the paper's baseline and for studying exactly that saturation.
    """

    def d_loss(self, real_logits: Tensor, fake_logits: Tensor) -> Tensor:
        return _bce_d_loss(real_logits, fake_logits)

    def g_loss(self, fake_logits: Tensor) -> Tensor:
        return -F.softplus(fake_logits).mean()


@_register("non_saturating")
class NonSaturatingLoss(GANLoss):
    """Goodfellow et al. 2014, section 3: G maximises ``log D(G(z))`` instead.

    Same fixed point as the minimax game, but the logit gradient ``-sigmoid(-l)`` tends to -1 (not
    0) when D rejects the fakes, so G still learns when it is losing.
    """

    def d_loss(self, real_logits: Tensor, fake_logits: Tensor) -> Tensor:
        return _bce_d_loss(real_logits, fake_logits)

    def g_loss(self, fake_logits: Tensor) -> Tensor:
        # -log sigmoid(l) = softplus(-l)
        return F.softplus(-fake_logits).mean()


@_register("lsgan")
class LSGANLoss(GANLoss):
    """Least-squares GAN (Mao et al. 2017, eq. 2) with targets a=0 (fake), b=1 (real), c=1.

    D's raw output is regressed onto the targets, so fakes far on the correct side of the boundary
    are still penalised, which keeps G's gradients from vanishing.
    """

    a: ClassVar[float] = 0.0
    b: ClassVar[float] = 1.0
    c: ClassVar[float] = 1.0

    def d_loss(self, real_logits: Tensor, fake_logits: Tensor) -> Tensor:
        # 1/2 E[(D(x) - b)^2] + 1/2 E[(D(G(z)) - a)^2]
        return 0.5 * (real_logits - self.b).pow(2).mean() + 0.5 * (fake_logits - self.a).pow(2).mean()

    def g_loss(self, fake_logits: Tensor) -> Tensor:
        # 1/2 E[(D(G(z)) - c)^2]
        return 0.5 * (fake_logits - self.c).pow(2).mean()


@_register("wgan_gp")
class WGANGPLoss(GANLoss):
    """Wasserstein GAN with gradient penalty (Gulrajani et al. 2017, eq. 3).

    The critic minimises ``E[D(G(z))] - E[D(x)]``; the 1-Lipschitz constraint that makes this a
    Wasserstein estimate is enforced by :func:`gradient_penalty`, which the trainer must add
    (hence ``gradient_penalty = True``). G minimises ``-E[D(G(z))]``.
    """

    gradient_penalty: ClassVar[bool] = True

    def d_loss(self, real_logits: Tensor, fake_logits: Tensor) -> Tensor:
        return fake_logits.mean() - real_logits.mean()

    def g_loss(self, fake_logits: Tensor) -> Tensor:
        return -fake_logits.mean()


@_register("wgan")
class WGANLoss(GANLoss):
    """The original Wasserstein GAN (Arjovsky et al. 2017, Algorithm 1).

    The same objectives as WGAN-GP's, but the critic is kept (roughly) Lipschitz by clipping every
    weight to ``[-c, c]`` after each critic update (``weight_clip = True``: the trainer clips, with
    ``c = loss.clip``, 0.01 in the paper), trained with RMSProp at 5e-5 and 5 critic steps per
    generator step. Gulrajani et al. 2017 replaced the clipping with the gradient penalty because it
    biases the critic towards simple functions; kept as the lecture's baseline.
    """

    weight_clip: ClassVar[bool] = True

    def d_loss(self, real_logits: Tensor, fake_logits: Tensor) -> Tensor:
        return fake_logits.mean() - real_logits.mean()

    def g_loss(self, fake_logits: Tensor) -> Tensor:
        return -fake_logits.mean()


@_register("hinge")
class HingeLoss(GANLoss):
    """Hinge loss (Lim & Ye 2017 "Geometric GAN"; used by Miyato et al. 2018 for SN-GAN).

    D: ``E[relu(1 - D(x))] + E[relu(1 + D(G(z)))]`` stops pushing samples already beyond the
    margin, so D does not waste capacity on easy examples. G: ``-E[D(G(z))]``.
    """

    def d_loss(self, real_logits: Tensor, fake_logits: Tensor) -> Tensor:
        return F.relu(1.0 - real_logits).mean() + F.relu(1.0 + fake_logits).mean()

    def g_loss(self, fake_logits: Tensor) -> Tensor:
        return -fake_logits.mean()


LOSS_NAMES: tuple[str, ...] = tuple(GAN_LOSSES)


def build_loss(name: str) -> GANLoss:
    """Instantiate the objective called ``name`` (one of :data:`LOSS_NAMES`)."""
    if name not in GAN_LOSSES:
        raise ValueError(f"unknown GAN loss {name!r}; choose one of {', '.join(LOSS_NAMES)}")
    return GAN_LOSSES[name]()


def gradient_penalty(
    D: Callable[[Tensor, Tensor | None], Tensor],
    real: Tensor,
    fake: Tensor,
    y: Tensor | None,
    weight: float,
    generator: torch.Generator | None = None,
) -> Tensor:
    """WGAN-GP's penalty, ``weight * E[(||grad_x D(x_hat)||_2 - 1)^2]`` (Gulrajani et al. 2017, eq. 3).

    ``x_hat = eps * real + (1 - eps) * fake`` with one ``eps ~ U[0, 1]`` per sample (Algorithm 1):
    the optimal critic has unit gradient norm on lines between coupled real and fake points, so
    that is where the constraint is enforced. ``eps`` is drawn from ``generator`` (on that
    generator's device) so callers control the randomness, e.g. for reproducible runs.

    ``y`` (the labels of the real batch, or ``None``) is passed to ``D`` unchanged. The graph is
    kept (``create_graph=True``) so the penalty can be back-propagated into D's parameters.
    Both image batches are detached: the penalty trains D only.
    """
    batch = real.shape[0]
    eps_device = generator.device if generator is not None else real.device
    eps = torch.rand(batch, generator=generator, device=eps_device, dtype=real.dtype).to(real.device)
    eps = eps.view(batch, *([1] * (real.dim() - 1)))
    x_hat = (eps * real.detach() + (1.0 - eps) * fake.detach()).requires_grad_(True)
    out = D(x_hat, y)
    # Summing is exact: sample i's output depends only on x_hat[i] (for a per-sample D), so
    # d(sum out)/d x_hat[i] = d out[i] / d x_hat[i].
    (grad,) = torch.autograd.grad(out.sum(), x_hat, create_graph=True)
    # A tiny epsilon keeps sqrt differentiable if a gradient is exactly zero.
    norm = torch.sqrt(grad.flatten(1).pow(2).sum(dim=1) + 1e-12)
    return weight * (norm - 1.0).pow(2).mean()


__all__ = [
    "GAN_LOSSES",
    "LOSS_NAMES",
    "GANLoss",
    "HingeLoss",
    "LSGANLoss",
    "MinimaxLoss",
    "NonSaturatingLoss",
    "WGANGPLoss",
    "WGANLoss",
    "build_loss",
    "gradient_penalty",
]
