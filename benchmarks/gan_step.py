"""Throughput of one GAN training step (k D steps + G step + EMA) as the preset trains it, on
in-memory batches so the input pipeline is not measured. Prints one JSON line last.

    python benchmarks/gan_step.py experiment=mnist_dcgan batch=64 iters=50 device=cpu precision=no [model.g_width=16 ...]
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import torch
from _common import emit, parse_args, peak_mem_gib
from hydra import compose, initialize_config_dir

from bigtrain.config.schema import register
from bigtrain.data.manifest import DatasetManifest, ShardInfo
from bigtrain.train.gan_task import GANTask

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


class _Acc:
    """The slice of an Accelerator the task uses (autocast), without starting a process group."""

    def __init__(self, device: str, precision: str):
        self.device_type = "cuda" if device.startswith("cuda") else "cpu"
        self.precision = precision

    def autocast(self):  # noqa: ANN201
        if self.precision == "no":
            return torch.autocast(self.device_type, enabled=False)
        return torch.autocast(self.device_type, dtype=torch.bfloat16)


def main() -> None:
    a = parse_args(
        {
            "experiment": "mnist_dcgan",
            "batch": 64,
            "iters": 50,
            "warmup": 5,
            "device": "cpu",
            "precision": "no",
            "resolution": 32,
            "channels": 1,
            "classes": 10,
        }
    )
    register()
    with initialize_config_dir(str(CONFIGS), version_base="1.3"):
        cfg = compose(
            "train",
            overrides=[
                f"experiment={a['experiment']}",
                "data.path=/unused",
                f"data.batch_size={a['batch']}",
                *a["overrides"],
            ],
        )
    torch.manual_seed(0)
    device = torch.device(a["device"])
    manifest = DatasetManifest(
        Path(tempfile.gettempdir()),
        "synthetic",
        a["resolution"],
        a["channels"],
        [str(i) for i in range(a["classes"])],
        {"train": [ShardInfo("x", 0, "")]},
    )
    task = GANTask(cfg, manifest, device, _Acc(a["device"], a["precision"]))
    batch = {
        "image": torch.rand(a["batch"], a["channels"], a["resolution"], a["resolution"]) * 2 - 1,
        "label": torch.randint(0, a["classes"], (a["batch"],)),
    }

    def data():  # noqa: ANN202
        while True:
            yield batch

    it = data()
    for step in range(1, a["warmup"] + 1):
        task.train_step(step, it)
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t = time.perf_counter()
    for step in range(a["warmup"] + 1, a["warmup"] + a["iters"] + 1):
        task.train_step(step, it)
    if device.type == "cuda":
        torch.cuda.synchronize()
    sec = (time.perf_counter() - t) / a["iters"]
    params = {k: sum(p.numel() for p in m.parameters()) for k, m in (("G", task.G), ("D", task.D))}
    emit(
        {
            "bench": "gan_step",
            "experiment": a["experiment"],
            "device": a["device"],
            "precision": a["precision"],
            "batch": a["batch"],
            "d_steps": cfg.loss.d_steps,
            "params": params,
            "sec_per_iter": round(sec, 5),
            "img_per_s": round(task.images_per_step() / sec, 1),
            "peak_mem_gib": round(peak_mem_gib(a["device"]), 3),
        }
    )


if __name__ == "__main__":
    main()
