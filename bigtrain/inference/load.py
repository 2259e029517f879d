"""``bigtrain.load(PATH)``: any trained model as an inference object (see :mod:`bigtrain.inference`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from bigtrain.checkpoint.io import resolve_checkpoint
from bigtrain.errors import CheckpointError
from bigtrain.inference.models import (
    DensityInference,
    GeneratorModel,
    InferenceModel,
    PriorModel,
    TokenizerModel,
)
from bigtrain.train.describe import describe
from bigtrain.train.model_export import CONFIG, read_export

URI_SCHEMES = ("runs:/", "models:/", "mlflow-artifacts:/")


def load(
    path: str | Path, device: str | torch.device | None = None, tracking_uri: str | None = None
) -> InferenceModel:
    """``path``: an export folder, a checkpoint folder, a run folder (its newest valid checkpoint),
    an MLflow model folder or URI (``runs:/RUN_ID/model``, ``models:/...``: downloaded first). ``device``: default CUDA
    when available; ``tracking_uri``: the MLflow store of a ``runs:/`` or ``models:/`` URI."""
    text = str(path)
    if text.startswith(URI_SCHEMES):
        import mlflow

        # the store the run logged to (bigtrain's tracking.uri, e.g. sqlite:///mlflow.db); None:
        # MLflow's own default (MLFLOW_TRACKING_URI)
        path = mlflow.artifacts.download_artifacts(artifact_uri=text, tracking_uri=tracking_uri)
    path = Path(path).expanduser()
    if (path / "MLmodel").is_file():  # an MLflow model: the export folder is its pyfunc data
        path = _mlflow_data(path)
    if (path / CONFIG).is_file():
        desc, weights, tokenizer = read_export(path)
    elif (path / "meta.json").is_file() or (path / "checkpoints").is_dir():
        desc, weights, tokenizer = describe(resolve_checkpoint(path).path)
    else:
        raise CheckpointError(
            f"{path} is neither an export folder ({CONFIG}), a checkpoint folder (meta.json) nor a run folder"
        )
    return build(desc, weights, tokenizer, device)


def _mlflow_data(path: Path) -> Path:
    import yaml

    flavors = yaml.safe_load((path / "MLmodel").read_text()).get("flavors", {})
    data = flavors.get("python_function", {}).get("data")
    if not data:
        raise CheckpointError(f"{path} is an MLflow model without a bigtrain export in it")
    return path / data


def build(
    desc: dict[str, Any],
    weights: dict[str, torch.Tensor],
    tokenizer: dict[str, Any] | None,
    device: str | torch.device | None = None,
) -> InferenceModel:
    kind = desc.get("kind")
    if kind == "generator":
        return GeneratorModel(desc, weights, device)
    if kind == "tokenizer":
        return TokenizerModel(desc, weights, device)
    if kind == "density":
        return DensityInference(desc, weights, device)
    if kind == "prior":
        if tokenizer is None:
            raise CheckpointError("a prior export needs its tokenizer/ folder")
        tok = TokenizerModel(tokenizer["description"], tokenizer["weights"], device)
        return PriorModel(desc, weights, tok, device)
    raise CheckpointError(f"unknown model kind {kind!r} (generator, tokenizer, prior or density)")


__all__ = ["build", "load"]
