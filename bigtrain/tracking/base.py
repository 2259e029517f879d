"""The small interface the training loop logs through; MLflow, TensorBoard and W&B implement it.

Only the main process gets a real tracker; other ranks get ``NullTracker``, so logging code never
needs a rank check.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np


@dataclass(frozen=True)
class ModelInfo:
    """What a tracker needs to know of a logged model (the loop reads it from the export): whether
    it samples (a tokenizer does not), its images' shape, whether it takes a class, and the module
    that loads the folder as MLflow's ``python_function``."""

    kind: str  # generator | tokenizer | prior
    channels: int
    resolution: int
    conditional: bool
    step: int
    loader_module: str = ""  # empty: no sampling interface, the folder's files only

    @property
    def samples(self) -> bool:
        return bool(self.loader_module)


class Tracker(Protocol):
    run_id: str | None

    def log_metrics(self, metrics: dict[str, float], step: int) -> None: ...
    def log_image(self, image: np.ndarray, key: str, step: int) -> None: ...
    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None: ...
    def set_tags(self, tags: dict[str, str]) -> None: ...
    def log_dataset(self, name: str, digest: str, source: str) -> None:
        """The training data as the run's input (MLflow: a dataset input; others: tags)."""
        ...

    def log_model(self, folder: Path, info: ModelInfo) -> None:
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

    def log_model(self, folder: Path, info: ModelInfo) -> None:
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

    def log_model(self, folder: Path, info: ModelInfo) -> None:  # noqa: ARG002 - all is in the folder
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
