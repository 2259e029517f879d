"""The export folder on disk: ``config.json`` (a JSON description) + ``model.safetensors`` (tensors
only: reading one cannot run code, unlike a pickle). Written by ``bigtrain export``, read by
``bigtrain.load`` and by ``init_from`` (fine-tuning from an export)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from bigtrain.errors import CheckpointError

FORMAT = "bigtrain-export"
VERSION = 1
CONFIG = "config.json"
WEIGHTS = "model.safetensors"

# the checkpoint components an export's weights stand for (what fine-tuning loads them into)
COMPONENTS = {"generator": ("G", "G_ema"), "tokenizer": ("vq",), "prior": ("prior",)}


def is_export(path: str | Path) -> bool:
    return (Path(path) / CONFIG).is_file()


def write_folder(out: Path, desc: dict[str, Any], weights: dict[str, torch.Tensor]) -> None:
    """``out/model.safetensors`` then ``out/config.json`` (last: a folder with it is complete)."""
    out.mkdir(parents=True, exist_ok=True)
    # tied weights share storage, which safetensors refuses: store each as its own copy
    plain = {k: v.detach().cpu().contiguous().clone() for k, v in weights.items()}
    tmp = out / (WEIGHTS + ".part")
    save_file(plain, str(tmp), metadata={"format": "pt", "bigtrain": FORMAT, "kind": str(desc["kind"])})
    tmp.replace(out / WEIGHTS)
    part = out / (CONFIG + ".part")
    part.write_text(json.dumps(desc, indent=2, default=str) + "\n")
    part.replace(out / CONFIG)


def read_folder(path: str | Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """``(description, weights)`` of one export folder; a damaged or foreign one is one line."""
    path = Path(path).expanduser()
    cfg_file, weights_file = path / CONFIG, path / WEIGHTS
    if not cfg_file.is_file() or not weights_file.is_file():
        raise CheckpointError(f"{path} is not a bigtrain export (needs {CONFIG} and {WEIGHTS})")
    try:
        desc = json.loads(cfg_file.read_text())
    except ValueError as exc:
        raise CheckpointError(f"unreadable {cfg_file}: {exc}") from None
    if desc.get("format") != FORMAT or int(desc.get("version", 0)) > VERSION:
        raise CheckpointError(
            f"{cfg_file} is not a bigtrain export of version <= {VERSION} "
            f"(format {desc.get('format')!r}, version {desc.get('version')!r})"
        )
    try:
        weights = load_file(str(weights_file))
    except Exception as exc:  # safetensors raises its own error types for a damaged file
        raise CheckpointError(f"cannot read {weights_file}: {type(exc).__name__}: {exc}") from None
    return desc, weights


__all__ = ["COMPONENTS", "CONFIG", "FORMAT", "VERSION", "WEIGHTS", "is_export", "read_folder", "write_folder"]
