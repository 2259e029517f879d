"""Trained models out of bigtrain, for people who only want to sample: ``bigtrain.load(PATH)``.

A checkpoint folder, an export folder (``bigtrain export``: ``config.json`` + ``model.safetensors``)
or an MLflow model URI becomes an inference object that builds only what sampling needs: a GAN's
generator (no discriminator, no optimizer), a tokenizer's autoencoder (no PatchGAN, no LPIPS), a
prior with its tokenizer (no engine), a density model (PixelCNN, PixelRNN, VAE) with its
likelihood. They sample with the same code as training
(``bigtrain.train.gan_sampling``, ``bigtrain.train.prior_sampling``): one seed, the same images as
``bigtrain sample``.
"""

from bigtrain.inference.load import load
from bigtrain.inference.models import (
    DensityInference,
    GeneratorModel,
    InferenceModel,
    PriorModel,
    TokenizerModel,
)
from bigtrain.train.model_export import export, read_export

__all__ = [
    "DensityInference",
    "GeneratorModel",
    "InferenceModel",
    "PriorModel",
    "TokenizerModel",
    "export",
    "load",
    "read_export",
]
