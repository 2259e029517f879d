"""A checkpoint's inference part as a description (``config.json``) and weights, read without
building the training task: the run's ``config.yaml``, ``meta.json`` and the weights sampling needs
(a GAN's ``G_ema``, or ``G`` for a run without EMA; a tokenizer's ``vq``; a prior's ``prior`` and,
from its tokenizer checkpoint, ``vq``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf

from bigtrain.checkpoint.exported import FORMAT, VERSION
from bigtrain.checkpoint.io import Checkpoint, open_checkpoint
from bigtrain.errors import CheckpointError, ConfigError
from bigtrain.models.density import PIXEL_LEVELS
from bigtrain.train.prior_sampling import SETTINGS
from bigtrain.train.snapshot import checkpoint_config
from bigtrain.train.task import eval_metrics

KINDS = {"gan": "generator", "tokenizer": "tokenizer", "prior": "prior", "likelihood": "density"}


def _tensors(state: Any, what: str) -> dict[str, torch.Tensor]:
    """A state dict as plain, contiguous CPU tensors (safetensors stores nothing else)."""
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"the {what} component is not a state dict of tensors")
    return {k: v.detach().to("cpu").contiguous() for k, v in state.items()}


def _data(ck: Checkpoint) -> dict[str, Any]:
    data = ck.meta.get("dataset")
    if not data:
        raise CheckpointError(f"checkpoint {ck.path} records no dataset shape (meta.json 'dataset')")
    return {
        "name": data.get("name", ""),
        "resolution": int(data["resolution"]),
        "channels": int(data["channels"]),
        "classes": [str(c) for c in data.get("classes", [])],
    }


def _metrics(ck: Checkpoint, cfg: Any) -> dict[str, Any]:
    """The run's headline metric by step (the trainer's history: the first of ``eval.metrics``, on
    ``eval.feature``)."""
    if "trainer" not in ck.component_names():
        return {}
    history = ck.load("trainer", weights_only=True).get("fid", {}) or {}
    name = f"{eval_metrics(cfg)[0]}/{cfg.eval.feature}"
    return {str(k): {name: float(v)} for k, v in sorted(history.items(), key=lambda kv: int(kv[0]))}


def describe(
    path: str | Path, what: str | None = None
) -> tuple[dict[str, Any], dict[str, torch.Tensor], dict[str, Any] | None]:
    """``(description, weights, tokenizer)`` of checkpoint ``path``; ``tokenizer`` is the
    ``(description, weights)`` pair a prior decodes with (None for other kinds).

    ``what`` (``generator`` | ``tokenizer`` | ``prior`` | ``density``) must match the checkpoint's task; None takes it."""
    ck = open_checkpoint(path)
    cfg = checkpoint_config(ck)
    task = str(cfg.task)
    kind = KINDS.get(task)
    if kind is None:
        raise ConfigError(f"{ck.path}: task={task} has no inference export")
    if what is not None and what != kind:
        raise ConfigError(f"{ck.path} is a task={task} checkpoint: it exports as --what {kind}, not {what}")
    m = cfg.model
    desc: dict[str, Any] = {
        "format": FORMAT,
        "version": VERSION,
        "kind": kind,
        "task": task,
        "model": {
            "name": str(m.name),
            "arch": OmegaConf.to_container(m.arch, resolve=True),
            "conditional": bool(m.conditional),
        },  # fmt: skip
        "data": _data(ck),
        "source": {
            "checkpoint": str(ck.path.resolve()),
            "step": ck.step,
            "mlflow_run_id": ck.meta.get("mlflow_run_id"),
        },  # fmt: skip
        "metrics": _metrics(ck, cfg),
        "train_config": OmegaConf.to_container(cfg, resolve=True),
    }
    tokenizer = None
    if kind == "generator":
        weights, sampling = _generator_part(ck, cfg, desc)
    elif kind == "tokenizer":
        weights, sampling = _tensors(ck.load("vq", weights_only=True), "vq"), {}
        desc["model"]["digest"] = ck.meta.get("digests", {}).get("vq")
    elif kind == "density":
        weights, sampling = _density_part(ck, cfg, desc)
    else:
        weights, sampling, tokenizer = _prior_part(ck, cfg, desc)
    desc["sampling"] = sampling
    desc.setdefault("output_resolution", desc["data"]["resolution"])
    return desc, weights, tokenizer


def _generator_part(
    ck: Checkpoint, cfg: Any, desc: dict[str, Any]
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    names = ck.component_names()
    source = "G_ema" if "G_ema" in names else "G"  # what evaluation and `bigtrain sample` judge
    m, e = cfg.model, cfg.eval
    num_classes = len(desc["data"]["classes"]) if m.conditional else 0
    desc["model"] |= {"num_classes": num_classes, "z_dim": int(m.z_dim), "g_width": int(m.g_width),
                      "d_width": int(m.d_width), "d_norm": str(m.d_norm), "weights": source}  # fmt: skip
    sampling: dict[str, Any] = {
        "g_bn": str(e.g_bn),
        "standing_passes": int(e.standing_passes),
        "standing_batch": int(e.standing_batch) or int(cfg.data.batch_size),
        "seed": int(e.seed),
    }
    stages = ck.load("task", weights_only=True).get("stages") if "task" in names else None
    if stages:  # a growing network samples at the stage the checkpoint reached
        sampling["stage"] = {"resolution": int(stages["resolution"]), "alpha": float(stages["alpha"])}
    # the size of the images it draws: a growing network below its last stage draws smaller ones
    desc["output_resolution"] = (
        int(sampling["stage"]["resolution"]) if "stage" in sampling else desc["data"]["resolution"]
    )
    return _tensors(ck.load(source, weights_only=True), source), sampling


def _density_part(
    ck: Checkpoint, cfg: Any, desc: dict[str, Any]
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """A ``task=likelihood`` model: the EMA copy when the run kept one (what evaluation and
    sampling judge), its pixel levels and how its images are drawn."""
    source = "net_ema" if "net_ema" in ck.component_names() else "net"
    pixels = str(cfg.density.pixels)
    desc["model"] |= {
        "num_classes": len(desc["data"]["classes"]) if cfg.model.conditional else 0,
        "pixels": pixels,
        "levels": PIXEL_LEVELS[pixels],
        "weights": source,
    }
    sampling = {"vae_samples": str(cfg.density.vae_samples), "seed": int(cfg.eval.seed)}
    return _tensors(ck.load(source, weights_only=True), source), sampling


def _prior_part(
    ck: Checkpoint, cfg: Any, desc: dict[str, Any]
) -> tuple[dict[str, torch.Tensor], dict[str, Any], dict[str, Any]]:
    # a token dataset's resolution and channels are its source images': what the prior generates
    tokens_meta = ck.meta["dataset"].get("extra", {})
    tokens = tokens_meta.get("tokens") or {}
    if not tokens:
        raise CheckpointError(f"{ck.path}: the prior's token dataset shape is not recorded in meta.json")
    condition = str(cfg.prior.condition)
    if condition == "text" or (condition in ("auto", "image") and "condition" in tokens_meta):
        raise CheckpointError(
            f"{ck.path}: a prior conditioned on {'text' if condition == 'text' else 'condition images'} has no "
            "export format yet; sample it from its checkpoint (bigtrain sample CKPT --prompt/--condition)"
        )
    h, w = (int(v) for v in tokens["grid"])
    num_classes = len(desc["data"]["classes"]) if cfg.model.conditional else 0
    desc["model"] |= {"num_classes": num_classes, "vocab": int(tokens["vocab"]), "seq_len": h * w}
    recorded = tokens_meta.get("tokenizer", {})
    tok_path = str(cfg.prior.tokenizer or recorded.get("checkpoint", ""))
    if not tok_path or not Path(tok_path).is_dir():
        raise ConfigError(
            f"the prior's tokenizer checkpoint {tok_path or '(not recorded)'} is gone: "
            "export it with the prior from a machine that has it"
        )
    tok_desc, tok_weights, _ = describe(tok_path, "tokenizer")
    want, have = recorded.get("digest"), tok_desc["model"].get("digest")
    if want and have != want:
        raise ConfigError(f"tokenizer {tok_path} is not the one that made the prior's tokens")
    sampling = {k: cfg.prior[k] for k in SETTINGS}
    return (
        _tensors(ck.load("prior", weights_only=True), "prior"),
        sampling,
        {"description": tok_desc, "weights": tok_weights},
    )


__all__ = ["KINDS", "describe"]
