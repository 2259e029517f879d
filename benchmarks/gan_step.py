"""Throughput of one GAN training step (k D steps + G step + EMA) as the preset trains it, on
in-memory batches so the input pipeline is not measured. Prints one JSON line last.

    python benchmarks/gan_step.py experiment=mnist_dcgan batch=64 iters=50 device=cpu precision=no
        [channels_last=true] [compile=true] [model.g_width=16 ...]   (dotted keys: config overrides)
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import torch
from _common import emit, parse_args, peak_mem_gib
from hydra import compose, initialize_config_dir

from bigtrain.config.schema import register
from bigtrain.data.manifest import DatasetManifest
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
        return torch.autocast(
            self.device_type, dtype=torch.float16 if self.precision == "fp16" else torch.bfloat16
        )


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
        }
    )
    precision = "no" if a["precision"] in ("no", "fp32") else a["precision"]
    register()
    with initialize_config_dir(str(CONFIGS), version_base="1.3"):
        cfg = compose(
            "train",
            overrides=[
                f"experiment={a['experiment']}",
                "data.path=/unused",
                f"data.batch_size={a['batch']}",
                f"trainer.precision={precision}",
                f"trainer.channels_last={a['channels_last']}",
                f"trainer.compile={a['compile']}",
                *a["overrides"],
            ],
        )
    torch.manual_seed(0)
    device = torch.device(a["device"])
    d = cfg.data  # the shape the preset declares
    classes = [str(i) for i in range(d.num_classes)]
    manifest = DatasetManifest(
        Path(tempfile.gettempdir()), "synthetic", d.resolution, d.channels, classes, {}
    )
    task = GANTask(cfg, manifest, device, _Acc(a["device"], precision))
    g = torch.Generator().manual_seed(0)
    batch = {  # one fixed batch, already on the device: the step is measured, not the input pipeline
        "image": (torch.rand(a["batch"], d.channels, d.resolution, d.resolution, generator=g) * 2 - 1).to(
            device
        ),
        "label": torch.randint(0, max(1, d.num_classes), (a["batch"],), generator=g).to(device),
    }

    def data():  # noqa: ANN202
        while True:
            yield batch

    it = data()
    t0 = time.perf_counter()
    first = task.train_step(1, it)
    first_iter_s = time.perf_counter() - t0
    for step in range(2, a["warmup"] + 1):
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
            "bench": bench,
            "experiment": a["experiment"],
            "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
            "precision": a["precision"],
            "channels_last": a["channels_last"],
            "compile": a["compile"],
            "batch": a["batch"],
            "accumulation": task.accumulation,
            "d_steps": cfg.loss.d_steps,
            "params": params,
            "first_losses": {"D": first.get("loss/D"), "G": first.get("loss/G")},
            "first_iter_s": round(first_iter_s, 3),
            "sec_per_iter": round(sec, 5),
            "img_per_s": round(task.images_per_step() / sec, 1),
            "peak_mem_gib": round(peak_mem_gib(a["device"]), 3),
            "overrides": a["overrides"],
        }
    )


if __name__ == "__main__":
    main()
