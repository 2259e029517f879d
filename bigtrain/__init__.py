"""bigtrain: train image generative models at scale (WebDataset -> Accelerate -> clean-fid -> MLflow).

For sampling from a trained model: ``m = bigtrain.load(PATH)`` (an export folder, a checkpoint, a run
folder or an MLflow URI), then ``m.sample(16, seed=0)`` / ``m.encode(x)`` / ``m.generate(16)``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from bigtrain.inference import InferenceModel


def load(path: Any, device: Any = None, tracking_uri: str | None = None) -> InferenceModel:
    """See :func:`bigtrain.inference.load` (imported on first use: ``import bigtrain`` stays light)."""
    from bigtrain.inference import load as _load

    return _load(path, device, tracking_uri)


def export(ckpt: Any, out: Any, what: str | None = None) -> Any:
    """See :func:`bigtrain.train.model_export.export`."""
    from bigtrain.inference import export as _export

    return _export(ckpt, out, what)


__all__ = ["__version__", "export", "load"]
