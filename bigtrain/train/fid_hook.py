"""FID during training: the reference statistics of the dataset, built once and cached, and the
EMA generator judged against them through clean-fid. Only the main process evaluates."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig

from bigtrain.data.manifest import DatasetManifest
from bigtrain.data.prepare import iter_images
from bigtrain.eval import build_feature_extractor, compute_fid, reference_stats
from bigtrain.train.rng import preserve_rng

log = logging.getLogger(__name__)


def reference_key(manifest: DatasetManifest, split: str, max_images: int) -> str:
    """Reference statistics depend on (dataset content, split, resolution, how many images)."""
    n = min(max_images, manifest.count(split))
    return f"{manifest.name}-{manifest.dataset_id}-{split}-{manifest.resolution}px-n{n}"


class FIDEvaluator:
    def __init__(self, cfg: DictConfig, manifest: DatasetManifest, device: torch.device):
        self.cfg, self.manifest, self.device = cfg, manifest, device
        self._extractor: Any = None
        self._ref: tuple[np.ndarray, np.ndarray] | None = None

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
            self._ref = reference_stats(
                reference_key(self.manifest, split, limit),
                lambda: iter_images(self.manifest, split, self.cfg.batch_size, limit),
                self._extractor,
                self.device,
            )

    def __call__(self, sampler: Callable[[int, torch.Generator], torch.Tensor]) -> float:
        self.prepare()
        assert self._ref is not None
        with preserve_rng():
            return float(
                compute_fid(
                    sampler,
                    self.cfg.num_samples,
                    self.cfg.batch_size,
                    self._extractor,
                    self.device,
                    self.cfg.seed,
                    self._ref,
                )
            )
