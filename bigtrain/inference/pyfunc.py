"""MLflow's ``python_function`` flavour for a ``bigtrain export`` folder, so that
``mlflow.pyfunc.load_model("runs:/RUN_ID/model").predict(...)`` returns samples.

The model is logged with ``loader_module="bigtrain.inference.pyfunc"`` and the export folder as its
data (``bigtrain.tracking.mlflow_tracker``): nothing is pickled, the weights stay safetensors.

``predict`` takes one row per image: a DataFrame (or a dict of lists) with a ``seed`` column and,
for a class-conditional model, an optional ``class`` column; it returns float32 images
``[rows, C, H, W]`` in [-1, 1], row ``i`` being ``bigtrain.load(...).sample(1, classes=[class_i],
seed=seed_i)`` (for a prior, ``generate``; a density model samples the same way). A generator sampled with ``eval.g_bn=batch`` draws the
rows as one batch instead (its images depend on the batch), from the same per-row latents."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from bigtrain.inference.load import load
from bigtrain.inference.models import DensityInference, GeneratorModel, InferenceModel, PriorModel
from bigtrain.train.gan_sampling import truncated_normal


class BigtrainPyfunc:
    def __init__(self, model: InferenceModel) -> None:
        if not isinstance(model, GeneratorModel | PriorModel | DensityInference):
            raise TypeError(f"a {model.kind} does not generate: no pyfunc for it")
        self.model = model

    def predict(self, model_input: Any, params: dict[str, Any] | None = None) -> np.ndarray:  # noqa: ARG002
        rows = _rows(model_input)
        m = self.model
        if not rows:
            return np.zeros((0, m.channels, m.resolution, m.resolution), np.float32)
        if isinstance(m, GeneratorModel) and m.sampling.sampler.mode == "batch":
            # eval.g_bn=batch normalises by the batch: the rows are one batch (each row's latent is
            # still the one its seed draws), never batches of one
            zs, ys = [], []
            for seed, cls in rows:  # each row's latent and label as sample(1, seed=...) draws them
                g = torch.Generator().manual_seed(seed)
                zs.append(truncated_normal(1, m.z_dim, 0.0, g, torch.device("cpu")))
                if m.num_classes:
                    ys.append(
                        int(cls)
                        if cls is not None
                        else int(torch.randint(0, m.num_classes, (1,), generator=g))
                    )
            z, y = torch.cat(zs), (torch.tensor(ys) if m.num_classes else None)
            return m.sampling.generate(z, y).numpy().astype(np.float32)
        out = [m.sample(1, classes=None if c is None else [c], seed=s) for s, c in rows]
        return torch.cat(out).numpy().astype(np.float32)


def _rows(model_input: Any) -> list[tuple[int, int | None]]:
    """``(seed, class or None)`` per row of a DataFrame, a dict of lists or a list of dicts."""
    if hasattr(model_input, "to_dict"):  # a pandas DataFrame
        records = model_input.to_dict(orient="records")
    elif isinstance(model_input, dict):
        n = len(next(iter(model_input.values()), []))
        records = [{k: v[i] for k, v in model_input.items()} for i in range(n)]
    else:
        records = list(model_input)
    out = []
    for r in records:
        cls = r.get("class")
        missing = cls is None or (isinstance(cls, float) and np.isnan(cls))
        out.append((int(r["seed"]), None if missing else int(cls)))
    return out


def _load_pyfunc(data_path: str) -> BigtrainPyfunc:
    """MLflow's entry point: the export folder MLflow copied beside the model."""
    return BigtrainPyfunc(load(data_path, device="cuda" if torch.cuda.is_available() else "cpu"))


__all__ = ["BigtrainPyfunc"]
