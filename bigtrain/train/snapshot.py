"""Rebuild a trained task from a checkpoint folder alone (its config.yaml and meta.json), for
``bigtrain evaluate`` and ``bigtrain sample``; the shards are not needed to sample."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from bigtrain.checkpoint.io import Checkpoint, CheckpointError, open_checkpoint
from bigtrain.config.schema import TrainConfig
from bigtrain.data.manifest import DatasetManifest
from bigtrain.distributed import build_accelerator
from bigtrain.train.tasks import Task, build_task


@dataclass
class Snapshot:
    checkpoint: Checkpoint
    cfg: DictConfig
    manifest: DatasetManifest
    task: Task
    device: torch.device


def load_snapshot(path: str | Path, device: str | None = None) -> Snapshot:
    ck = open_checkpoint(path)
    cfg_file = ck.path / "config.yaml"
    if not cfg_file.is_file():
        raise CheckpointError(f"checkpoint {ck.path} has no config.yaml")
    cfg = OmegaConf.merge(OmegaConf.structured(TrainConfig), OmegaConf.load(cfg_file))
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
    task.load_state(ck.shared_components())
    return Snapshot(ck, cfg, manifest, task, acc.device)


def load_tokenizer(
    path: str | Path, device: str | torch.device = "cpu"
) -> tuple[torch.nn.Module, Checkpoint]:
    """The frozen VQ model of a ``task=tokenizer`` checkpoint, in eval mode, without building its
    training-only parts (discriminator, LPIPS and its VGG weights): what tokenizing and decoding need."""
    from bigtrain.models.vqgan import build_vqgan

    ck = open_checkpoint(path)
    cfg_file = ck.path / "config.yaml"
    if not cfg_file.is_file():
        raise CheckpointError(f"checkpoint {ck.path} has no config.yaml")
    cfg = OmegaConf.merge(OmegaConf.structured(TrainConfig), OmegaConf.load(cfg_file))
    if cfg.task != "tokenizer":
        raise CheckpointError(f"{ck.path} is a task={cfg.task} checkpoint, not a tokenizer")
    data = ck.meta.get("dataset") or {}
    arch = OmegaConf.to_container(cfg.model.arch, resolve=True) if cfg.model.get("arch") else {}
    vq = build_vqgan(resolution=int(data["resolution"]), channels=int(data["channels"]), **arch)  # type: ignore[arg-type]
    vq.load_state_dict(ck.load("vq"))
    return vq.to(device).eval().requires_grad_(False), ck
