"""``bigtrain sample CKPT --out grid.png``: a grid from the EMA generator, or with ``--interpolate``
straight-line walks in z between random points (Radford et al. 2016, sec. 6.1), one row each."""

from __future__ import annotations

import argparse

import torch
from torchvision.utils import save_image

from bigtrain.train.snapshot import load_snapshot


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="bigtrain sample", description=__doc__)
    p.add_argument("ckpt")
    p.add_argument("--out", required=True, help="PNG path")
    p.add_argument("--rows", type=int, default=8, help="rows (and columns) of the grid")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--interpolate", action="store_true", help="each row walks z from one random point to another"
    )
    p.add_argument("--steps", type=int, default=10, help="images per interpolation row")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    a = p.parse_args(argv)
    snap = load_snapshot(a.ckpt, a.device)
    task = snap.task
    g = torch.Generator().manual_seed(a.seed)
    if a.interpolate:
        G = task._eval_G()  # noqa: SLF001 - the task owns which network samples
        z_dim = snap.cfg.model.z_dim
        ends = torch.randn(a.rows, 2, z_dim, generator=g)
        t = torch.linspace(0, 1, a.steps).view(1, -1, 1)
        z = (ends[:, :1] * (1 - t) + ends[:, 1:] * t).reshape(-1, z_dim)
        y = None
        if task.num_classes:  # type: ignore[attr-defined]
            y = torch.randint(0, task.num_classes, (a.rows,), generator=g).repeat_interleave(a.steps)  # type: ignore[attr-defined]
        images, nrow = task._generate(G, z, y), a.steps  # noqa: SLF001
    else:
        images = task.sampler()(a.rows * a.rows, g)
        nrow = a.rows
    save_image(images, a.out, nrow=nrow, normalize=True, value_range=(-1, 1), padding=2)
    print(f"wrote {a.out} ({images.shape[0]} images, step {snap.checkpoint.step})")
    return 0
