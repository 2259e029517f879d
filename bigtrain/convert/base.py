"""The converter contract and the one writer of converted checkpoints (see :mod:`bigtrain.convert`)."""

from __future__ import annotations

import hashlib
import importlib
import logging
import pkgutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from bigtrain.checkpoint.io import list_checkpoints, save_checkpoint
from bigtrain.data.manifest import DatasetManifest
from bigtrain.distributed import LocalAccelerator
from bigtrain.errors import CheckpointError, ConfigError
from bigtrain.train.compose import compose_config
from bigtrain.train.loop import dataset_meta
from bigtrain.train.task import build_task, check_config, expected_manifest, task_class
from bigtrain.utils.rng import seed_everything

log = logging.getLogger(__name__)


@dataclass
class Source:
    """What a format read: state dicts by bigtrain component name (``G``, ``G_ema``, ``D``, ``vq``,
    ``prior``) in bigtrain's key layout, the reference's step, and provenance for ``meta.json``."""

    weights: dict[str, dict[str, torch.Tensor]]
    step: int = 0
    info: dict[str, Any] = field(default_factory=dict)


Reader = Callable[[Path, Mapping[str, nn.Module], DictConfig], Source]


@dataclass(frozen=True)
class Format:
    name: str
    task: str  # the bigtrain task its networks belong to
    read: Reader  # (SRC, the task's networks by component name, the run's config) -> Source
    # the preset it matches (``experiment=...``: replaced when the user names another) and the settings
    # the format's networks always have (applied before the user's overrides, which win)
    default_overrides: tuple[str, ...] = ()
    help: str = ""
    # the dataset when neither data.path's dataset.json nor the preset's data.* shape describes it
    # (a prior's token space): (SRC, cfg, command-line extras such as --tokenizer) -> manifest
    manifest: Callable[[Path, DictConfig, dict[str, Any]], DatasetManifest] | None = None


FORMATS: dict[str, Format] = {}


def register_format(fmt: Format) -> Format:
    if fmt.name in FORMATS and FORMATS[fmt.name] is not fmt:
        raise ValueError(f"conversion format {fmt.name!r} is already registered")
    FORMATS[fmt.name] = fmt
    return fmt


def formats() -> dict[str, Format]:
    """Every format (each module of this package registers its own on import)."""
    package = importlib.import_module("bigtrain.convert")
    for info in pkgutil.iter_modules(package.__path__):
        if info.name != "base":
            importlib.import_module(f"{package.__name__}.{info.name}")
    return dict(sorted(FORMATS.items()))


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def convert(
    fmt_name: str,
    src: str | Path,
    out: str | Path,
    overrides: Sequence[str] = (),
    shape: Mapping[str, Any] | None = None,
) -> Path:
    """Convert ``src`` (format ``fmt_name``) into the run folder ``out``; returns the checkpoint folder."""
    known = formats()
    if fmt_name not in known:
        raise ConfigError(f"unknown format '{fmt_name}'; choose one of: {', '.join(known)}")
    fmt = known[fmt_name]
    src, out = Path(src).expanduser(), Path(out).expanduser()
    if not src.exists():
        raise ConfigError(f"{src}: no such file or folder to convert")
    if list_checkpoints(out):
        raise CheckpointError(f"{out} already holds checkpoints; convert into a new folder")
    # the format's preset unless the user names one; its fixed settings always; the user's last
    chosen = any(o.split("=", 1)[0].lstrip("+") == "experiment" for o in overrides)
    preset = [o for o in fmt.default_overrides if o.startswith("experiment=")]
    settings = [o for o in fmt.default_overrides if not o.startswith("experiment=")]
    cfg = compose_config([*([] if chosen else preset), *settings, *overrides])
    if str(cfg.task) != fmt.task:
        raise ConfigError(
            f"format {fmt.name} converts task={fmt.task} models; the overrides chose task={cfg.task}"
        )
    cfg.run.dir = str(out)
    manifest = (
        fmt.manifest(src, cfg, dict(shape or {})) if fmt.manifest is not None else expected_manifest(cfg)[0]
    )
    check_config(cfg, manifest)
    seed_everything(int(cfg.seed))
    # built to hold weights only: no helper that needs files of its own (the saved config is the full one)
    task = build_task(
        task_class(fmt.task).weights_only(cfg), manifest, torch.device("cpu"), LocalAccelerator("cpu")
    )
    source = fmt.read(src, task.weight_modules(), cfg)
    loaded = task.init_weights(source.weights)
    log.info("converted %s from %s into %s", ", ".join(loaded), src, out)
    state = task.state_dict()  # the networks as converted; optimizers fresh
    state["trainer"] = {"step": source.step, "images_seen": 0, "fid": {}}
    out.mkdir(parents=True, exist_ok=True)
    config_yaml = OmegaConf.to_yaml(cfg, resolve=True)
    (out / "config.yaml").write_text(config_yaml)
    meta = {
        "dataset": dataset_meta(manifest),
        "converted_from": {
            "format": fmt.name,
            "path": str(src.resolve()),
            "components": loaded,
            **source.info,
        },
    }
    return save_checkpoint(out, source.step, state, {}, meta, config_yaml, keep_last=0)


__all__ = [
    "FORMATS",
    "Format",
    "Reader",
    "Source",
    "convert",
    "formats",
    "register_format",
    "sha256",
]
