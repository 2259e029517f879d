"""bigtrain's BigGAN iteration against the reference implementation's, same config, same machine.

Needs a checkout of ajbrock/BigGAN-PyTorch (its code is imported from ``ref=PATH``, never copied
into bigtrain) and its extra dependency h5py. Both sides build the CIFAR preset (``cifar10_biggan``:
ch 64, z 128, no attention, batch 50, 4 D steps + 1 G step + EMA per iteration, real and fake through
D as one batch) and time ``iters`` iterations on the same in-memory batch after ``warmup``, taking
turns so machine noise hits both. Prints one JSON line last.

    python benchmarks/reference_biggan_cpu.py ref=/path/to/BigGAN-PyTorch iters=5 device=cpu
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import torch
from _common import emit, parse_args

from bigtrain.data.manifest import DatasetManifest
from bigtrain.distributed import LocalAccelerator
from bigtrain.train.compose import compose_config
from bigtrain.train.tasks.gan import GANTask


def reference_step(ref: str, batch: int, device: str):  # noqa: ANN201 - returns a callable
    sys.path.insert(0, ref)
    import BigGAN  # noqa: N813 - the reference's module names
    import train_fns
    import utils

    config = vars(utils.prepare_parser().parse_args([]))
    config.update(
        dataset="C10",
        resolution=32,
        n_classes=10,
        G_ch=64,
        D_ch=64,
        dim_z=128,
        hier=False,
        G_shared=False,
        shared_dim=0,
        G_attn="0",
        D_attn="0",
        G_init="N02",
        D_init="N02",
        num_D_steps=4,
        batch_size=batch,
        G_lr=2e-4,
        D_lr=2e-4,
        G_B1=0.0,
        D_B1=0.0,
        ema=True,
        ema_start=1000,
        split_D=False,
        toggle_grads=True,
        G_activation=torch.nn.ReLU(inplace=False),
        D_activation=torch.nn.ReLU(inplace=False),
        skip_init=False,
    )
    G, D = BigGAN.Generator(**config).to(device), BigGAN.Discriminator(**config).to(device)
    G_ema = BigGAN.Generator(**{**config, "skip_init": True, "no_optim": True}).to(device)
    ema = utils.ema(G, G_ema, config["ema_decay"], config["ema_start"])
    GD = BigGAN.G_D(G, D)
    z_, y_ = utils.prepare_z_y(batch, G.dim_z, 10, device=device)
    step = train_fns.GAN_training_function(G, D, GD, z_, y_, ema, {"itr": 0}, config)
    x = torch.rand(batch * 4, 3, 32, 32, device=device) * 2 - 1
    y = torch.randint(0, 10, (batch * 4,), device=device)
    params = {"G": sum(p.numel() for p in G.parameters()), "D": sum(p.numel() for p in D.parameters())}
    return (lambda: step(x, y)), params


def bigtrain_step(batch: int, device: str):  # noqa: ANN201
    cfg = compose_config(["experiment=cifar10_biggan", "data.path=/unused", f"data.batch_size={batch}"])
    manifest = DatasetManifest(
        Path(tempfile.gettempdir()), "synthetic", 32, 3, [str(i) for i in range(10)], {}
    )
    task = GANTask(cfg, manifest, torch.device(device), LocalAccelerator(device))
    data = {"image": torch.rand(batch, 3, 32, 32) * 2 - 1, "label": torch.randint(0, 10, (batch,))}

    def forever():  # noqa: ANN202
        while True:
            yield data

    it = forever()
    counter = {"step": 0}

    def step() -> None:
        counter["step"] += 1
        task.train_step(counter["step"], it)

    params = {
        "G": sum(p.numel() for p in task.G.parameters()),
        "D": sum(p.numel() for p in task.D.parameters()),
    }
    return step, params


def main() -> None:
    a = parse_args({"ref": "", "batch": 50, "iters": 5, "warmup": 2, "device": "cpu"})
    if not a["ref"]:
        raise SystemExit("ref=PATH to a checkout of ajbrock/BigGAN-PyTorch is required")
    torch.manual_seed(0)
    ours, ours_params = bigtrain_step(a["batch"], a["device"])
    theirs, theirs_params = reference_step(a["ref"], a["batch"], a["device"])
    for _ in range(a["warmup"]):
        ours()
        theirs()
    times = {"bigtrain": 0.0, "reference": 0.0}
    for _ in range(a["iters"]):
        for name, fn in (("bigtrain", ours), ("reference", theirs)):
            t = time.perf_counter()
            fn()
            times[name] += time.perf_counter() - t
    images = a["batch"] * 4
    rate = {k: images * a["iters"] / v for k, v in times.items()}
    emit(
        {
            "bench": "reference_biggan_cpu",
            "preset": "cifar10_biggan",
            "batch": a["batch"],
            "d_steps": 4,
            "params": {"bigtrain": ours_params, "reference": theirs_params},
            "bigtrain_img_per_s": round(rate["bigtrain"], 2),
            "reference_img_per_s": round(rate["reference"], 2),
            "ratio": round(rate["bigtrain"] / rate["reference"], 3),
        }
    )


if __name__ == "__main__":
    main()
