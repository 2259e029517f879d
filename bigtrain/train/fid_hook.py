"""Evaluation during training: FID (clean-fid) against the dataset's cached reference statistics,
plus the Inception Score and precision/recall from the same feature network and the same samples,
all on the EMA generator. Only the main process evaluates."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig

from bigtrain.data.manifest import DatasetManifest
from bigtrain.data.prepare import iter_images
from bigtrain.eval import build_feature_extractor, reference_stats
from bigtrain.eval.fid import feature_stats, frechet_distance, generator_features, reference_features
from bigtrain.eval.metrics import inception_score, precision_recall
from bigtrain.train.rng import preserve_rng

log = logging.getLogger(__name__)


def reference_key(
    manifest: DatasetManifest, split: str, max_images: int, resolution: int | None = None
) -> str:
    """Reference statistics depend on (dataset content, split, resolution, how many images)."""
    n = min(max_images, manifest.count(split))
    return f"{manifest.name}-{manifest.dataset_id}-{split}-{resolution or manifest.resolution}px-n{n}"


class FIDEvaluator:
    """``resolution`` (a resolution stage's) resizes the reference images as the stream does, with
    statistics cached per resolution; None = the dataset's own."""

    def __init__(
        self, cfg: DictConfig, manifest: DatasetManifest, device: torch.device, resolution: int | None = None
    ):
        self.cfg, self.manifest, self.device = cfg, manifest, device
        self.resolution = None if resolution == manifest.resolution else resolution
        self._extractor: Any = None
        self._ref: tuple[np.ndarray, np.ndarray] | None = None
        self._ref_feats: np.ndarray | None = None

    @property
    def metric_key(self) -> str:
        return f"fid/{self.cfg.feature}"

    def prepare(self) -> None:
        """Build the feature network and reference statistics (fails early on absent weights)."""
        if self._ref is not None:
            return
        with preserve_rng():
            self._extractor = build_feature_extractor(self.cfg.feature, self.device)
            split, limit = self.cfg.ref_split, self.cfg.ref_max_images
            key = reference_key(self.manifest, split, limit, self.resolution)
            self._ref = reference_stats(
                key,
                lambda: iter_images(self.manifest, split, self.cfg.batch_size, limit, self.resolution),
                self._extractor,
                self.device,
            )
            self._ref_feats = reference_features(key, self._extractor.name)

    def __call__(self, sampler: Callable[[int, torch.Generator], torch.Tensor]) -> dict[str, float]:
        """``{"fid/<net>": .., "is/<net>": .., "precision/<net>": .., "recall/<net>": ..}`` from one
        set of ``eval.num_samples`` samples (IS when the network has a class head)."""
        self.prepare()
        assert self._ref is not None
        net = self.cfg.feature
        probs: list[np.ndarray] = []
        with preserve_rng():
            feats = generator_features(
                sampler,
                self.cfg.num_samples,
                self.cfg.batch_size,
                self._extractor,
                self.device,
                self.cfg.seed,
                probs_out=probs if self.cfg.get("inception_score", True) else None,
            )
        mu, sigma = feature_stats(feats)
        out = {f"fid/{net}": frechet_distance(mu, sigma, *self._ref)}
        if probs:
            out[f"is/{net}"] = inception_score(np.concatenate(probs))[0]
        if self.cfg.get("precision_recall", True) and self._ref_feats is not None:
            out[f"precision/{net}"], out[f"recall/{net}"] = precision_recall(self._ref_feats, feats)
        return out
