"""The small interface the training loop logs through; MLflow, TensorBoard and W&B implement it.

Only the main process gets a real tracker; other ranks get ``NullTracker``, so logging code never
needs a rank check.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

import numpy as np


class Tracker(Protocol):
    run_id: str | None

    def log_metrics(self, metrics: dict[str, float], step: int) -> None: ...
    def log_image(self, image: np.ndarray, key: str, step: int) -> None: ...
    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None: ...
    def set_tags(self, tags: dict[str, str]) -> None: ...
    def close(self, status: str = "FINISHED") -> None: ...


class NullTracker:
    """Does nothing: the tracker of non-main ranks and of ``tracking.enabled=false``."""

    run_id: str | None = None

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        pass

    def log_image(self, image: np.ndarray, key: str, step: int) -> None:
        pass

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        pass

    def set_tags(self, tags: dict[str, str]) -> None:
        pass

    def close(self, status: str = "FINISHED") -> None:
        pass


def flatten(cfg: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": "1"}``: MLflow params are flat strings."""
    out: dict[str, str] = {}
    for k, v in cfg.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = str(v)
    return out
