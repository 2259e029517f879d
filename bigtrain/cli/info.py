"""``bigtrain info experiment=NAME [OVERRIDES] [--world-size N] [--json]``: build a preset's
networks without training and print their parameter counts, the batch (global and per process, for
N processes: default the launcher's, else 1), the precision and the family's
``model.arch`` values, to compare recipes. ``--help`` (with overrides) also lists every task,
metric and the chosen family's ``model.arch`` options."""

from __future__ import annotations

import dataclasses
import json
import sys
from typing import Any

import torch
from omegaconf import DictConfig

from bigtrain.config.launcher import batch_over, launcher_world_size
from bigtrain.distributed import LocalAccelerator
from bigtrain.errors import ConfigError
from bigtrain.train.compose import compose_config
from bigtrain.train.task import expected_manifest


def describe(cfg: DictConfig, world_size: int = 1) -> dict[str, Any]:
    from bigtrain.models.registry import parse_arch
    from bigtrain.train.task import build_task, check_config

    manifest, source = expected_manifest(cfg)
    check_config(cfg, manifest)
    meta = torch.device("meta")  # networks built on the meta device: no memory, no process group
    task = build_task(cfg, manifest, meta, LocalAccelerator(meta))
    nets = {k: m for k, m in task.digest_modules().items() if k != "G_ema"}
    params = {k: sum(p.numel() for p in m.parameters()) for k, m in nets.items()}
    schedule = task.stage_schedule()
    about = type(task).describe(cfg)
    return {
        "params": params,
        "params_total": sum(params.values()),
        "model": cfg.model.name,
        "arch": dataclasses.asdict(parse_arch(str(cfg.model.name), cfg.model.arch)),
        "task": cfg.task,
        "data": {
            "resolution": manifest.resolution,
            "channels": manifest.channels,
            "num_classes": manifest.num_classes,
            "from": source,
        },
        "world_size": world_size,
        "global_batch": batch_over(cfg, world_size),
        "global_batch_size": cfg.data.global_batch_size,  # the config's (0: stated per process)
        "batch_per_process": cfg.data.batch_size,
        "accumulation": cfg.trainer.accumulation,
        "effective_batch_per_process": cfg.data.batch_size * cfg.trainer.accumulation,
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
            for s in (schedule.stages if schedule is not None else ())
        ],
        **about,
    }


def _world_size(argv: list[str]) -> tuple[int | None, list[str]]:
    """``--world-size N`` (or ``--world-size=N``) and the remaining arguments."""
    rest, world = [], None
    it = iter(argv)
    for a in it:
        if a == "--world-size" or a.startswith("--world-size="):
            value = a.split("=", 1)[1] if "=" in a else next(it, "")
            if not value.isdigit() or int(value) < 1:
                raise ConfigError(f"--world-size takes a process count >= 1 (got '{value}')")
            world = int(value)
        else:
            rest.append(a)
    return world, rest


def main(argv: list[str]) -> int:
    as_json = "--json" in argv
    world, argv = _world_size(argv)
    overrides = [a for a in argv if a not in ("--json", "-h", "--help")]
    if any(a in ("-h", "--help") for a in argv):
        from bigtrain.cli.options import choices

        try:
            cfg = compose_config(overrides)
        except ConfigError:
            cfg = None
        print(__doc__)
        print(choices(cfg))
        return 0
    world = world or launcher_world_size()
    info = describe(compose_config(overrides, world_size=world), world)
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
    print(
        f"  batch {info['global_batch']} global = {info['batch_per_process']} per process x "
        f"{info['world_size']} process(es) x {info['accumulation']} accumulation(s), {info['step']}, "
        f"precision {info['precision']}, {info['max_steps']} steps"
    )
    if info["arch"]:
        print("  model.arch: " + ", ".join(f"{k}={v}" for k, v in info["arch"].items()))
    if info["stages"]:
        print("  stages: " + " -> ".join(
            f"{s['resolution']}px {s['steps']} steps" + (f" (fade {s['fade_steps']})" if s["fade_steps"] else "")
            + f" batch {s['batch_size']}" + (f" as {s['batch_size'] // s['micro_batch']} x {s['micro_batch']}" if s["micro_batch"] != s["batch_size"] else "")
            for s in info["stages"]
        ))  # fmt: skip
    sys.stdout.flush()
    return 0
