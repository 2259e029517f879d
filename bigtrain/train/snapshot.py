"""Rebuild a trained task from a checkpoint folder alone (its config.yaml and meta.json), for
``bigtrain evaluate``, ``bigtrain sample`` and ``bigtrain tokenize``; the shards are not needed."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from bigtrain.checkpoint.io import Checkpoint, open_checkpoint
from bigtrain.config.migrate import upgrade
from bigtrain.data.manifest import DatasetManifest
from bigtrain.distributed import build_accelerator
from bigtrain.errors import CheckpointError
from bigtrain.train.task import Task, build_task, task_class


@dataclass
class Snapshot:
    checkpoint: Checkpoint
    cfg: DictConfig
    manifest: DatasetManifest
    task: Task
    device: torch.device


def checkpoint_config(ck: Checkpoint) -> DictConfig:
    """The run's resolved config as saved in the checkpoint, on today's schema."""
    cfg_file = ck.path / "config.yaml"
    if not cfg_file.is_file():
        raise CheckpointError(f"checkpoint {ck.path} has no config.yaml")
    raw = OmegaConf.to_container(OmegaConf.load(cfg_file), resolve=False)
    assert isinstance(raw, dict)
    schema = task_class(str(raw.get("task", "gan"))).config
    return OmegaConf.merge(OmegaConf.structured(schema), upgrade(raw))  # type: ignore[return-value]


def load_snapshot(path: str | Path, device: str | None = None) -> Snapshot:
    ck = open_checkpoint(path)
    cfg = checkpoint_config(ck)
    meta = ck.meta.get("dataset")
    if meta is None:
        raise CheckpointError(f"checkpoint {ck.path} records no dataset shape (meta.json 'dataset')")
    root = Path(meta["path"])
    try:
        manifest = DatasetManifest.load(root)  # present: reference statistics can be computed
    except Exception:
        manifest = DatasetManifest(
            root,
            meta["name"],
            meta["resolution"],
            meta["channels"],
            list(meta["classes"]),
            {},
            dict(meta.get("extra", {})),
        )
    acc = build_accelerator("no", cpu=(device == "cpu") if device else None)
    task = build_task(cfg, manifest, acc.device, acc)
    task.load_state_dict(ck.shared_components())
    return Snapshot(ck, cfg, manifest, task, acc.device)


def load_tokenizer(
    path: str | Path, device: str | torch.device = "cpu"
) -> tuple[torch.nn.Module, Checkpoint]:
    """The frozen VQ model of a ``task=tokenizer`` checkpoint, in eval mode, without building its
    training-only parts (discriminator, LPIPS and its VGG weights): what tokenizing and decoding need."""
    from bigtrain.models import build_model

    ck = open_checkpoint(path)
    cfg = checkpoint_config(ck)
    if cfg.task != "tokenizer":
        raise CheckpointError(f"{ck.path} is a task={cfg.task} checkpoint, not a tokenizer")
    data = ck.meta.get("dataset") or {}
    vq = build_model(
        cfg.model.name, cfg.model.arch, resolution=int(data["resolution"]), channels=int(data["channels"])
    )
    vq.load_state_dict(ck.load("vq"))
    return vq.to(device).eval().requires_grad_(False), ck
