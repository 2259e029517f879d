"""Throughput of one training step of any task (``gan``, ``tokenizer``, ``prior``) as its preset
trains it, on one in-memory batch so the input pipeline is not measured. Prints one JSON line last
with ``img_per_s`` (real images, or token sequences, consumed per second), ``sec_per_iter``,
``peak_mem_gib`` and, for the prior, ``tokens_per_s``. The thin scripts ``gan_step.py``,
``biggan_step.py``, ``tokenizer_step.py`` and ``prior_train.py`` call it with their defaults.

    python benchmarks/task_step.py experiment=mnist_dcgan batch=64 iters=50 device=cpu precision=no
        [channels_last=true] [compile=true] [model.g_width=16 ...]   (dotted keys: config overrides)
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from _common import emit, parse_args, peak_mem_gib

from bigtrain.data.manifest import DatasetManifest
from bigtrain.distributed import LocalAccelerator
from bigtrain.train.compose import compose_config
from bigtrain.train.task import build_task


def _synthetic(cfg: Any, batch: int, device: torch.device) -> tuple[DatasetManifest, dict[str, torch.Tensor]]:
    """The data shape the preset declares, and one fixed batch of it on the device."""
    d = cfg.data
    classes = [str(i) for i in range(d.num_classes)]
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, max(1, d.num_classes), (batch,), generator=g).to(device)
    extra: dict[str, Any] = {}
    if cfg.task == "prior":
        vocab, grid = int(cfg.model.arch.vocab), int(cfg.model.arch.token_grid)
        extra = {"kind": "tokens", "tokens": {"grid": [grid, grid], "vocab": vocab}}
        data = {"tokens": torch.randint(0, vocab, (batch, grid * grid), generator=g).to(device)}
    else:
        x = torch.rand(batch, d.channels, d.resolution, d.resolution, generator=g) * 2 - 1
        data = {"image": x.to(device)}
    manifest = DatasetManifest(
        Path(tempfile.gettempdir()), "synthetic", d.resolution, d.channels, classes, {}, extra
    )
    return manifest, {**data, "label": labels}


def build(a: dict[str, Any]) -> tuple[Any, Any, dict[str, torch.Tensor], int]:
    """The preset's config with the benchmark's overrides, its task on the device, one synthetic
    batch and the step to time from (a growing model's last stage, faded in: the costliest)."""
    precision = "no" if a["precision"] in ("no", "fp32") else a["precision"]
    cfg = compose_config(
        [
            f"experiment={a['experiment']}",
            "data.path=/unused",
            f"data.batch_size={a['batch']}",
            "data.global_batch_size=0",  # a benchmark times one process's batch, whatever the recipe's global one
            f"trainer.precision={precision}",
            f"trainer.channels_last={a['channels_last']}",
            f"trainer.compile={a['compile']}",
            *a["overrides"],
        ]
    )
    torch.manual_seed(0)
    device = torch.device(a["device"])
    manifest, batch = _synthetic(cfg, a["batch"], device)
    task = build_task(cfg, manifest, device, LocalAccelerator(device, precision))
    first_step = 1
    stages = task.stage_schedule()
    if stages is not None:  # a growing model: time its last stage, faded in (the costliest)
        first_step = stages.total_steps - stages.stages[-1].steps + stages.stages[-1].fade_steps + 1

    return cfg, task, batch, first_step


def main(default_experiment: str = "mnist_dcgan", bench: str = "gan_step") -> None:
    a = parse_args(
        {
            "experiment": default_experiment,
            "batch": 64,
            "iters": 50,
            "warmup": 5,
            "device": "cpu",
            "precision": "no",  # no|fp32, bf16, fp16
            "channels_last": False,
            "compile": False,
            "flops": False,  # also count the step's model FLOPs (step_flops.py): TFLOP/s and MFU
        }
    )
    cfg, task, batch, first_step = build(a)
    device = torch.device(a["device"])

    def data():  # noqa: ANN202
        while True:
            yield batch

    it = data()
    t0 = time.perf_counter()
    first = task.train_step(first_step, it)
    first_iter_s = time.perf_counter() - t0
    for step in range(first_step + 1, first_step + a["warmup"]):
        task.train_step(step, it)
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t = time.perf_counter()
    for step in range(first_step + a["warmup"], first_step + a["warmup"] + a["iters"]):
        task.train_step(step, it)
    task.settle()  # trainer.sync_every > 1: the deferred finite checks, read as the loop would
    if device.type == "cuda":
        torch.cuda.synchronize()
    sec = (time.perf_counter() - t) / a["iters"]
    nets = {k: m for k, m in task.digest_modules().items() if k != "G_ema"}
    result: dict[str, Any] = {
        "bench": bench,
        "experiment": a["experiment"],
        "task": cfg.task,
        "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
        "precision": a["precision"],
        "channels_last": a["channels_last"],
        "compile": a["compile"],
        "batch": a["batch"],
        "accumulation": int(cfg.trainer.accumulation),
        "params": {k: sum(p.numel() for p in m.parameters()) for k, m in nets.items()},
        "first_losses": {
            k.removeprefix("loss/"): float(v) for k, v in first.items() if k.startswith("loss/")
        },
        "first_iter_s": round(first_iter_s, 3),
        "sec_per_iter": round(sec, 5),
        "img_per_s": round(task.images_per_step() / sec, 1),
        "peak_mem_gib": round(peak_mem_gib(a["device"]), 3),
        "overrides": a["overrides"],
    }
    result |= {k: v for k, v in type(task).describe(cfg).items() if k not in ("loss", "step")}
    for unit, n in task.units_per_step().items():
        if unit != "img":
            result[f"{unit}_per_s"] = round(n / sec, 1)
    if a["flops"]:
        result |= _utilisation(a, sec)
    emit(result)


def _utilisation(a: dict[str, Any], sec: float) -> dict[str, Any]:
    """The timed step's model TFLOP/s (its FLOPs counted by step_flops.py) and MFU over the card's
    measured dense matmul rate in the step's precision (prior_step.py's measure, so the two
    benchmarks' MFUs compare)."""
    from prior_step import matmul_tflops
    from step_flops import step_flops

    f = step_flops(a["experiment"], a["overrides"])
    tflops = (f["fixed"] + a["batch"] * f["per_image"]) / sec / 1e12
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(a["precision"], torch.float32)
    peak = matmul_tflops(a["device"], dtype)
    return {
        "gflop_per_image": round(f["per_image"] / 1e9, 2),
        "gflop_fixed": round(f["fixed"] / 1e9, 2),
        "model_tflops": round(tflops, 2),
        "measured_matmul_tflops": round(peak, 2),
        "mfu": round(tflops / peak, 4),
    }


if __name__ == "__main__":
    main()
