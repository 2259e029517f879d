"""Evaluation: FID through clean-fid's pieces, with named feature networks and cached reference stats.

The names below are loaded on first use (PEP 562): importing ``bigtrain.eval.features`` for its
error type must not pull in clean-fid and torchvision (about 2 s), which every CLI error exit and
``--help`` would otherwise pay.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_FROM = {
    "bigtrain.eval.features": (
        "FeatureExtractor",
        "FeatureExtractorFactory",
        "MissingWeightsError",
        "available_feature_extractors",
        "build_feature_extractor",
        "digits_classifier_info",
        "inception_weights_path",
        "register_feature_extractor",
        "train_digits_classifier",
    ),
    "bigtrain.eval.fid": (
        "compute_fid",
        "feature_stats",
        "frechet_distance",
        "generator_features",
        "images_to_features",
        "quantize_images",
        "reference_stats",
        "reference_stats_path",
    ),
}
_WHERE = {name: module for module, names in _FROM.items() for name in names}


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'bigtrain.eval' has no attribute {name!r}")
    return getattr(import_module(_WHERE[name]), name)


__all__ = sorted(_WHERE)  # pyright: ignore[reportUnsupportedDunderAll]
