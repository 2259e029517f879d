"""Rebuild a trained task from a checkpoint folder alone (its config.yaml and meta.json), for
``bigtrain evaluate``, ``bigtrain sample`` and ``bigtrain tokenize``; the shards are not needed.

How samples are drawn and judged may differ from training (``eval.g_bn=standing`` on a run that
sampled in eval mode, more FID samples): ``eval.*`` and ``sample.*`` overrides are applied before the
task is built; the networks' keys are not overridable, since the weights were trained for them."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from bigtrain.checkpoint.io import Checkpoint, open_checkpoint
from bigtrain.config.migrate import on_schema
from bigtrain.data.manifest import DatasetManifest
from bigtrain.distributed import build_accelerator
from bigtrain.errors import CheckpointError, ConfigError
from bigtrain.train.task import Task, build_task, check_config, configure_reads, task_class

# the sections a checkpoint's config may be overridden in when it is sampled or evaluated
OVERRIDABLE = ("eval", "sample")


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
    return on_schema(schema, raw, ck.path)


def apply_overrides(cfg: DictConfig, overrides: Sequence[str]) -> None:
    """``KEY=VALUE`` items into ``cfg`` in place; a key outside :data:`OVERRIDABLE` or not in the
    task's schema is a one-line :class:`ConfigError`."""
    for item in overrides:
        key, sep, _ = item.partition("=")
        if not sep or key.split(".", 1)[0] not in OVERRIDABLE or "." not in key:
            raise ConfigError(
                f"{item!r}: a checkpoint takes only {'/'.join(s + '.KEY=VALUE' for s in OVERRIDABLE)} "
                "overrides (how samples are drawn and judged; the networks are the checkpoint's)"
            )
        try:
            cfg.merge_with(OmegaConf.from_dotlist([item]))  # the schema refuses unknown keys and types
        except OmegaConfBaseException as exc:
            raise ConfigError(f"{item}: {str(exc).splitlines()[0]}") from None


def load_snapshot(path: str | Path, device: str | None = None, overrides: Sequence[str] = ()) -> Snapshot:
    """The task of checkpoint ``path`` with its trained state, on ``device``; ``overrides``
    (``eval.*``, ``sample.*``) change how it samples or is evaluated."""
    ck = open_checkpoint(path)
    cfg = checkpoint_config(ck)
    apply_overrides(cfg, overrides)
    configure_reads(cfg)
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
    if overrides:
        check_config(cfg, manifest)
    acc = build_accelerator("no", cpu=(device == "cpu") if device else None)
    task = build_task(cfg, manifest, acc.device, acc)
    # weights, optimizer and counters only (tensors and plain containers): a checkpoint from
    # elsewhere, sampled or evaluated, cannot run code when it is read
    task.load_state_dict(ck.shared_components(weights_only=True))
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
    vq.load_state_dict(ck.load("vq", weights_only=True))
    return vq.to(device).eval().requires_grad_(False), ck
