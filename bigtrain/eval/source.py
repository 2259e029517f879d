"""What an evaluation judges, as a task hands it over: the images to score, the real images they are
compared with, and (for a model that reconstructs) the pairs and codebook statistics that only it
can give.

A task does not evaluate itself: it describes its :class:`EvalSource` and the metric registry
(``bigtrain.eval.registry``) decides what to compute from it, the same way during training and in
``bigtrain evaluate``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from enum import StrEnum

import numpy as np
import torch

from bigtrain.data.manifest import DatasetManifest


class Judged(StrEnum):
    """What the images under evaluation are. Feature metrics of reconstructions carry an ``r``
    prefix (``rfid/<net>``), so a tokenizer's rFID never lands on the same MLflow axis as a
    generator's FID."""

    samples = "samples"  # drawn from a generative model
    reconstructions = "reconstructions"  # a model's reconstructions of real images


class Need(StrEnum):
    """What a metric needs from the source."""

    features = "features"  # images -> feature-network activations (FID, IS, precision/recall)
    pairs = "pairs"  # (original, reconstruction) pairs (PSNR, SSIM)
    codebook = "codebook"  # a quantiser's code counts since the last evaluation
    labels = "labels"  # the class each judged image should show (a translation's source class)
    attributes = "attributes"  # the attribute words each judged image was asked to show (a prompt's)
    likelihood = "likelihood"  # the model's negative log-likelihood of real images (explicit density)


Sampler = Callable[[int, torch.Generator], torch.Tensor]
"""``f(n, generator) -> n images in [-1, 1]``, ``[n, C, H, W]``, on the CPU."""


@dataclass
class EvalSource:
    judged: Judged
    images: Sampler
    reference: DatasetManifest  # the real images compared with (a prior's: its tokens' source)
    resolution: int  # the images' side (a resolution stage's, or the dataset's)
    # (originals, reconstructions) batches in [-1, 1], up to n images: only models that reconstruct
    pairs: Callable[[int], Iterator[tuple[torch.Tensor, torch.Tensor]]] | None = None
    # {"usage": share of codes used, "perplexity": ...} since the last call, then reset
    codebook: Callable[[], dict[str, float]] | None = None
    # the class each of the first n judged images should show, in the order ``images`` draws
    # them (a deterministic source: a translation's source labels)
    labels: Callable[[int], np.ndarray] | None = None
    # the attribute words each of the first n judged images was asked to show, in the order
    # ``images`` draws them: one ``{attribute: word}`` per image (a text prompt's "thick", "wide")
    attributes: Callable[[int], list[dict[str, str]]] | None = None
    # thresholds and measurement of those attributes on the judged images: ``measure(uint8 images
    # [N, C, H, W]) -> {attribute: values [N]}`` and ``{attribute: {word: (low, high)}}``, the range
    # of the measured value each word asks for (a task whose prompts name attributes gives both)
    measure: Callable[[np.ndarray], dict[str, np.ndarray]] | None = None
    word_ranges: dict[str, dict[str, tuple[float, float]]] | None = None
    # a source that draws in order (``splittable=False``) starts again at its first image: a metric
    # that draws the judged images again (attribute agreement) gets the same images in the same order
    rewind: Callable[[], None] | None = None
    # how the reference images are shrunk to ``resolution`` (a ProGAN stage's reals: "box")
    downsample: str = "lanczos"
    # whether every process can draw any batch (``images(n, generator)`` depends only on its
    # arguments): then a distributed evaluation splits the batches over the ranks
    splittable: bool = True
    # an explicit-density model's negative log-likelihood of ``eval.ref_split`` (or its bounds),
    # keyed as logged: ``{"nll/bits_per_dim": ..}``; computed by the main process
    likelihood: Callable[[], dict[str, float]] | None = None
    # names one of several sources of an evaluation (a translation's direction, "AB"): its metric
    # keys carry it, as in ``fid_AB/<net>``
    tag: str = ""


__all__ = ["EvalSource", "Judged", "Need", "Sampler"]
