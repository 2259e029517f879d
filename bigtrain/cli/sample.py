"""``bigtrain sample CKPT --out grid.png``: a grid from the EMA generator, or with ``--interpolate``
straight-line walks in z between random points (Radford et al. 2016, sec. 6.1), one row each."""

from __future__ import annotations

import argparse

import torch
from torchvision.utils import save_image

from bigtrain.config.validate import ConfigError
from bigtrain.train.snapshot import Snapshot, load_snapshot


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
    p.add_argument("--truncation", type=float, default=0.0, help="truncation trick: redraw |z| > T (0 = off)")
    p.add_argument(
        "--class",
        dest="classes",
        type=int,
        action="append",
        default=None,
        help="sample only this class (repeatable); conditional models",
    )
    p.add_argument("--per-class", action="store_true", help="one row per class (conditional models)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    prior = p.add_argument_group("task=prior checkpoints (default: the run's prior.* settings)")
    prior.add_argument("--temperature", type=float, default=None)
    prior.add_argument("--top-k", type=int, default=None)
    prior.add_argument("--top-p", type=float, default=None)
    prior.add_argument("--cfg-scale", type=float, default=None, help="classifier-free guidance scale")
    a = p.parse_args(argv)
    snap = load_snapshot(a.ckpt, a.device)
    task = snap.task
    if snap.cfg.task == "prior":
        return _sample_prior(a, snap)
    if snap.cfg.task != "gan":
        # A tokenizer does not generate; its grid (originals over reconstructions) is in the run's
        # samples/ folder and `bigtrain evaluate` gives its rFID.
        raise ConfigError(
            f"bigtrain sample draws from a generator; {a.ckpt} is a task={snap.cfg.task} checkpoint "
            "(use bigtrain evaluate for its reconstruction FID)"
        )
    g = torch.Generator().manual_seed(a.seed)
    num_classes = getattr(task, "num_classes", 0)
    _check_classes(a, num_classes, "model")
    if a.per_class:
        from bigtrain.train.gan_task import truncated_normal

        classes = a.classes or list(range(num_classes))
        z = truncated_normal(a.rows, snap.cfg.model.z_dim, a.truncation, g, torch.device("cpu")).repeat(
            len(classes), 1
        )
        y = torch.tensor(classes).repeat_interleave(a.rows)
        images, nrow = task._generate(task._eval_G(), z, y), a.rows  # noqa: SLF001
    elif a.interpolate:
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
        images = task.sampler(a.truncation, a.classes)(a.rows * a.rows, g)
        nrow = a.rows
    return _write(a.out, images, nrow, snap.checkpoint.step)


def _check_classes(a: argparse.Namespace, num_classes: int, what: str) -> None:
    """``--class`` / ``--per-class`` need a conditional network and labels in its range."""
    if (a.classes or a.per_class) and not num_classes:
        raise ConfigError(f"--class/--per-class need a class-conditional {what} (model.conditional=true)")
    bad = [c for c in a.classes or [] if not 0 <= c < num_classes]
    if bad:
        raise ConfigError(f"--class {bad[0]} is out of range: the model has {num_classes} classes")


def _write(out: str, images: torch.Tensor, nrow: int, step: int) -> int:
    save_image(images, out, nrow=nrow, normalize=True, value_range=(-1, 1), padding=2)
    print(f"wrote {out} ({images.shape[0]} images, step {step})")
    return 0


def _sample_prior(a: argparse.Namespace, snap: Snapshot) -> int:
    """Codes from the transformer (KV cache, the run's or the given sampling settings), decoded by
    the tokenizer the token dataset records."""
    task = snap.task
    num_classes = getattr(task, "num_classes", 0)
    if a.interpolate or a.truncation:
        raise ConfigError(
            "--interpolate and --truncation are for GAN generators; a prior takes --temperature, --top-k, --top-p, --cfg-scale"
        )
    _check_classes(a, num_classes, "prior")
    g = torch.Generator(snap.device).manual_seed(a.seed)
    opts = {"temperature": a.temperature, "top_k": a.top_k, "top_p": a.top_p, "cfg_scale": a.cfg_scale}
    if a.per_class or a.classes:
        classes = a.classes or list(range(num_classes))
        labels = (
            torch.tensor(classes).repeat_interleave(a.rows)
            if a.per_class
            else torch.tensor(classes)[torch.arange(a.rows * a.rows) % len(classes)]
        )
    else:
        labels = task._labels(a.rows * a.rows, torch.Generator().manual_seed(a.seed), None)  # noqa: SLF001
    images = task.generate_images(labels, len(labels) if labels is not None else a.rows * a.rows, g, **opts)  # type: ignore[attr-defined]
    return _write(a.out, images, a.rows, snap.checkpoint.step)
