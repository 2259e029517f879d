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
    def log_dataset(self, name: str, digest: str, source: str) -> None:
        """The training data as the run's input (MLflow: a dataset input; others: tags)."""
        ...

    def log_model(self, folder: Path, step: int) -> None:
        """A ``bigtrain export`` folder as the run's model (MLflow: a logged pyfunc model)."""
        ...

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

    def log_dataset(self, name: str, digest: str, source: str) -> None:
        pass

    def log_model(self, folder: Path, step: int) -> None:
        pass

    def close(self, status: str = "FINISHED") -> None:
        pass


class FileModelMixin:
    """``log_dataset`` and ``log_model`` for trackers without a dataset or model registry: tags, and
    the export folder's files as the ``model/`` artifacts."""

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        raise NotImplementedError

    def set_tags(self, tags: dict[str, str]) -> None:
        raise NotImplementedError

    def log_dataset(self, name: str, digest: str, source: str) -> None:
        self.set_tags({"dataset.name": name, "dataset.digest": digest, "dataset.source": source})

    def log_model(self, folder: Path, step: int) -> None:  # noqa: ARG002 - the step is in config.json
        for f in sorted(Path(folder).iterdir()):
            self.log_artifact(f, "model")


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
