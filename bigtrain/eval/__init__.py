"""Evaluation: FID through clean-fid's pieces, with named feature networks and cached reference stats."""

from bigtrain.eval.features import (
    FeatureExtractor,
    FeatureExtractorFactory,
    MissingWeightsError,
    available_feature_extractors,
    build_feature_extractor,
    digits_classifier_info,
    inception_weights_path,
    register_feature_extractor,
    train_digits_classifier,
)
from bigtrain.eval.fid import (
    compute_fid,
    feature_stats,
    frechet_distance,
    generator_features,
    images_to_features,
    quantize_images,
    reference_stats,
    reference_stats_path,
)

__all__ = [
    "FeatureExtractor",
    "FeatureExtractorFactory",
    "MissingWeightsError",
    "available_feature_extractors",
    "build_feature_extractor",
    "compute_fid",
    "digits_classifier_info",
    "feature_stats",
    "frechet_distance",
    "generator_features",
    "images_to_features",
    "inception_weights_path",
    "quantize_images",
    "reference_stats",
    "reference_stats_path",
    "register_feature_extractor",
    "train_digits_classifier",
]
