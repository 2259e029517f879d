"""``bigtrain export``: a checkpoint's inference part as the folder a model hub expects.

``OUT/config.json`` (what the network is and how it samples, see :mod:`bigtrain.inference.models`),
``OUT/model.safetensors`` (its weights: tensors only, so loading one cannot run code, unlike a
pickle) and ``OUT/README.md`` (a model card: source run, step, metrics, settings). A prior carries
its tokenizer in ``OUT/tokenizer/`` (the same layout), so the folder samples images on its own.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch

from bigtrain.checkpoint.exported import CONFIG, WEIGHTS, read_folder, write_folder
from bigtrain.checkpoint.io import resolve_checkpoint
from bigtrain.errors import CheckpointError
from bigtrain.tracking.base import ModelInfo
from bigtrain.train.describe import describe

CARD = "README.md"


def export(ckpt: str | Path, out: str | Path, what: str | None = None) -> Path:
    """Write checkpoint ``ckpt`` (or a run folder's newest)'s generator / tokenizer / prior (``what``; default: the task's)
    into ``out``; returns ``out``. An existing export there is replaced; any other non-empty
    folder is refused."""
    out = Path(out).expanduser()
    if out.exists() and any(out.iterdir()) and not (out / CONFIG).is_file():
        raise CheckpointError(f"{out} is a non-empty folder that is not a bigtrain export; choose another")
    desc, weights, tokenizer = describe(resolve_checkpoint(ckpt).path, what)
    if out.exists():
        shutil.rmtree(out)
    if tokenizer is not None:
        write_folder(out / "tokenizer", tokenizer["description"], tokenizer["weights"])
        _write_card(out / "tokenizer", tokenizer["description"], weights_of=tokenizer["weights"])
        desc["tokenizer"] = "tokenizer"
    _write_card(out, desc, weights_of=weights)
    write_folder(out, desc, weights)
    return out


def model_info(folder: Path) -> ModelInfo:
    """What a tracker logs the export folder as (``bigtrain.tracking.base.ModelInfo``): generators
    and priors sample through ``bigtrain.inference.pyfunc`` (named, not imported: it sits above)."""
    desc = json.loads((Path(folder) / CONFIG).read_text())  # the description only, not the weights
    data = desc["data"]
    samples = desc["kind"] in ("generator", "prior", "density")
    return ModelInfo(
        kind=str(desc["kind"]),
        channels=int(data["channels"]),
        resolution=int(desc.get("output_resolution", data["resolution"])),
        conditional=bool(desc["model"].get("num_classes")),
        step=int(desc["source"]["step"]),
        loader_module="bigtrain.inference.pyfunc" if samples else "",
    )


def read_export(path: str | Path) -> tuple[dict[str, Any], dict[str, torch.Tensor], dict[str, Any] | None]:
    """``(description, weights, tokenizer)`` of an export folder, as :func:`describe` returns them."""
    desc, weights = read_folder(path)
    tokenizer = None
    if desc.get("tokenizer"):
        tok_desc, tok_weights = read_folder(Path(path).expanduser() / desc["tokenizer"])
        tokenizer = {"description": tok_desc, "weights": tok_weights}
    return desc, weights, tokenizer


def _write_card(out: Path, desc: dict[str, Any], weights_of: dict[str, torch.Tensor]) -> None:
    """A short model card: what the model is, where it came from, how it scored, how to use it."""
    out.mkdir(parents=True, exist_ok=True)
    m, d, src = desc["model"], desc["data"], desc["source"]
    params = sum(int(v.numel()) for v in weights_of.values())
    classes = f"{len(d['classes'])} classes" if m.get("num_classes") else "unconditional"
    lines = [
        f"# {m['name']} {desc['kind']} ({d.get('name') or 'dataset'}, {desc.get('output_resolution', d['resolution'])}px)",
        "",
        f"- Kind: {desc['kind']} (bigtrain task={desc['task']}), {params:,} parameters, {classes}.",
        f"- Data: {d.get('name') or '?'}, {d['resolution']}x{d['resolution']}, {d['channels']} channel(s)"
        + (
            f"; it draws {desc['output_resolution']}px images (the stage the run reached)."
            if desc.get("output_resolution", d["resolution"]) != d["resolution"]
            else "."
        ),
        f"- Source: checkpoint `{src['checkpoint']}` at step {src['step']}"
        + (f", MLflow run `{src['mlflow_run_id']}`." if src.get("mlflow_run_id") else "."),
    ]
    if desc.get("metrics"):
        lines += ["", "| step | metrics |", "| ---: | --- |"]
        for step, values in desc["metrics"].items():
            shown = ", ".join(
                f"{k} {v:.2f}" if isinstance(v, float) else f"{k} {v}" for k, v in dict(values).items()
            )
            lines.append(f"| {step} | {shown} |")
    if desc.get("sampling"):
        shown = ", ".join(f"{k}={v}" for k, v in desc["sampling"].items())
        lines += ["", f"Sampling as evaluated: {shown}."]
    use = {"generator": "images = m.sample(16, seed=0)", "prior": "images = m.generate(16, seed=0)",
           "tokenizer": "codes = m.encode(images); images = m.decode(codes)",
           "density": "images = m.sample(16, seed=0); nats = m.log_likelihood(images)"}[desc["kind"]]  # fmt: skip
    lines += ["", "```python", "import bigtrain", "m = bigtrain.load('THIS_FOLDER')", use, "```", "",
              f"`{CONFIG}` holds the full training config under `train_config`.", ""]  # fmt: skip
    (out / CARD).write_text("\n".join(lines))


__all__ = ["CARD", "CONFIG", "WEIGHTS", "export", "read_export"]
