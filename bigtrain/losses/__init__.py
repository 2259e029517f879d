"""Training objectives. GAN losses live in :mod:`bigtrain.losses.gan` and are chosen by name."""

from bigtrain.losses.gan import (
    GAN_LOSSES,
    LOSS_NAMES,
    GANLoss,
    HingeLoss,
    LSGANLoss,
    MinimaxLoss,
    NonSaturatingLoss,
    WGANGPLoss,
    build_loss,
    gradient_penalty,
)

__all__ = [
    "GAN_LOSSES",
    "LOSS_NAMES",
    "GANLoss",
    "HingeLoss",
    "LSGANLoss",
    "MinimaxLoss",
    "NonSaturatingLoss",
    "WGANGPLoss",
    "build_loss",
    "gradient_penalty",
]
