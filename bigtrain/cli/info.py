"""``bigtrain info experiment=NAME [OVERRIDES] [--json]``: build a preset's networks without
training and print their parameter counts, the batch and the precision, to compare recipes."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

from bigtrain.config.compose import compose_config
from bigtrain.data.manifest import DatasetManifest


class _NoAccelerator:
    """Networks are built on the meta device: no memory, no process group."""

    def autocast(self) -> Any:
        return torch.autocast("cpu", enabled=False)


def expected_manifest(cfg: DictConfig) -> tuple[DatasetManifest, str]:
    """The dataset's manifest when data.path holds one, else the shape the preset declares."""
    try:
        return DatasetManifest.load(cfg.data.path), "dataset.json"
    except Exception:  # noqa: BLE001 - a MISSING path, an absent folder or manifest: fall back
        d = cfg.data
        classes = [str(i) for i in range(d.num_classes)]
        return DatasetManifest(Path("."), "declared", d.resolution, d.channels, classes, {}), "preset"


def _vq_loss(cfg: DictConfig) -> str:
    """The tokenizer objective in words, e.g. ``l1+lpips+codebook+patchgan``."""
    v = cfg.vq
    terms = [str(v.rec_loss)] + (["lpips"] if v.perceptual_weight > 0 else []) + ["codebook"]
    return "+".join(terms + (["patchgan"] if v.disc_weight > 0 else []))


def _stages(task: Any) -> tuple:
    staging = getattr(task, "staging", None)
    return staging.schedule.stages if staging is not None else ()


def describe(cfg: DictConfig) -> dict[str, Any]:
    from bigtrain.train.tasks import build_task

    manifest, source = expected_manifest(cfg)
    task = build_task(cfg, manifest, torch.device("meta"), _NoAccelerator())
    nets = {k: m for k, m in task.digest_modules().items() if k != "G_ema"}
    params = {k: sum(p.numel() for p in m.parameters()) for k, m in nets.items()}
    return {
        "params": params,
        "params_total": sum(params.values()),
        "model": cfg.model.name,
        "task": cfg.task,
        "loss": {"gan": str(cfg.loss.name), "prior": "next-token cross-entropy"}.get(cfg.task)
        or _vq_loss(cfg),
        "data": {
            "resolution": manifest.resolution,
            "channels": manifest.channels,
            "num_classes": manifest.num_classes,
            "from": source,
        },
        "batch_per_process": cfg.data.batch_size,
        "accumulation": cfg.trainer.accumulation,
        "effective_batch_per_process": cfg.data.batch_size * cfg.trainer.accumulation,
        "d_steps": cfg.loss.d_steps,
        "images_per_step_per_process": task.images_per_step(),
        "precision": {"no": "fp32"}.get(str(cfg.trainer.precision), str(cfg.trainer.precision)),
        "max_steps": cfg.trainer.max_steps,
        "stages": [
            {
                "resolution": s.resolution,
                "steps": s.steps,
                "fade_steps": s.fade_steps,
                "batch_size": s.batch(cfg.data.batch_size),
                "micro_batch": s.micro(cfg.data.batch_size),
            }
            for s in _stages(task)
        ],
        **(
            {"engine": str(cfg.prior.engine), "zero_stage": int(cfg.prior.zero_stage)}
            if cfg.task == "prior"
            else {}
        ),
    }


def main(argv: list[str]) -> int:
    as_json = "--json" in argv
    overrides = [a for a in argv if a != "--json"]
    if any(a in ("-h", "--help") for a in overrides):
        print(__doc__)
        return 0
    info = describe(compose_config(overrides))
    if as_json:
        print(json.dumps(info))
        return 0
    width = max(map(len, info["params"]))
    print(
        f"model {info['model']} (task {info['task']}, loss {info['loss']}), data "
        f"{info['data']['resolution']}px x{info['data']['channels']} with {info['data']['num_classes']} classes "
        f"(from {info['data']['from']})"
    )
    for name, n in info["params"].items():
        print(f"  {name.ljust(width)}  {n:>13,} parameters")
    per_step = (
        f"{info['d_steps']} D step(s) per G step"
        if info["task"] == "gan"
        else f"engine {info['engine']} (ZeRO-{info['zero_stage']})"
        if info["task"] == "prior"
        else "1 update per step"
    )
    print(
        f"  batch {info['batch_per_process']} x {info['accumulation']} accumulation per process, {per_step}, "
        f"precision {info['precision']}, {info['max_steps']} steps"
    )
    if info["stages"]:
        print("  stages: " + " -> ".join(
            f"{s['resolution']}px {s['steps']} steps" + (f" (fade {s['fade_steps']})" if s["fade_steps"] else "")
            + f" batch {s['batch_size']}" + (f" as {s['batch_size'] // s['micro_batch']} x {s['micro_batch']}" if s["micro_batch"] != s["batch_size"] else "")
            for s in info["stages"]
        ))  # fmt: skip
    sys.stdout.flush()
    return 0
