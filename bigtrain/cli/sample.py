"""``bigtrain sample CKPT --out grid.png``: a grid from a checkpoint's generator (a GAN's EMA G, a
prior's decoded codes), one row per class with ``--per-class``, a translation model's outputs beside
the images given with ``--condition``, a text-to-image model's samples for each ``--prompt`` (one
row each), with ``--interpolate`` straight-line
walks in z between random points (Radford et al. 2016, sec. 6.1), one row each, or with ``--arithmetic``
the DCGAN paper's vector arithmetic on latents (``bigtrain.train.latent_arithmetic``). ``--num-samples N --npz
out.npz`` / ``--png-dir DIR`` write N samples for other evaluators (``bigtrain.train.export``). Sampling options
(``--truncation`` for GANs; ``--temperature``, ``--top-k``, ``--top-p``, ``--cfg-scale`` for priors)
are passed to the task, which refuses the ones it does not take; ``eval.KEY=VALUE`` overrides set the
rest of how it samples (``eval.g_bn=batch|standing`` for a GAN's BatchNorm statistics)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from bigtrain.data.images import IMAGE_SUFFIXES, decode
from bigtrain.data.manifest import DatasetManifest
from bigtrain.errors import ConfigError
from bigtrain.train.snapshot import load_snapshot
from bigtrain.utils.images import save_grid

# command-line flag -> the task's sampling option (Task.sample_options)
OPTIONS = {
    "truncation": "--truncation",
    "temperature": "--temperature",
    "top_k": "--top-k",
    "top_p": "--top-p",
    "cfg_scale": "--cfg-scale",
    "size": "--size",
}


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="bigtrain sample", description=__doc__)
    p.add_argument("ckpt")
    p.add_argument(
        "overrides", nargs="*", metavar="eval.KEY=VALUE", help="sample with these eval.* / sample.* settings"
    )
    p.add_argument("--out", default=None, help="PNG path of the grid")
    export = p.add_argument_group("samples for other evaluators (the ADM evaluator, torch-fidelity)")
    export.add_argument(
        "--num-samples", type=int, default=None, help="how many samples --npz / --png-dir write"
    )
    export.add_argument(
        "--npz", default=None, help="an .npz: arr_0 uint8 [N, H, W, 3], arr_1 labels when conditional"
    )
    export.add_argument(
        "--png-dir", default=None, help="a folder with one PNG per sample (labels.txt when conditional)"
    )
    export.add_argument(
        "--batch-size", type=int, default=None, help="samples per forward (default: eval.batch_size)"
    )
    p.add_argument("--rows", type=int, default=8, help="rows (and columns) of the grid")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--interpolate", action="store_true", help="each row walks z from one random point to another"
    )
    p.add_argument("--steps", type=int, default=10, help="images per interpolation row")
    p.add_argument(
        "--arithmetic",
        default=None,
        metavar="EXPR",
        help="latent vector arithmetic on the digits (unconditional GANs and VAEs), e.g. "
        "'7:thick - 7:thin + 1:thin': each term's exemplars are prior samples the digits classifier "
        "reads as CLASS with the thickest / thinnest strokes; a row per term, then the result row. "
        "Prints a JSON report (what the results are read as)",
    )
    p.add_argument(
        "--pool", type=int, default=2000, help="--arithmetic: prior samples to pick exemplars from"
    )
    p.add_argument("--per-group", type=int, default=3, help="--arithmetic: exemplars averaged per term")
    p.add_argument(
        "--class",
        dest="classes",
        type=int,
        action="append",
        default=None,
        help="sample only this class (repeatable); conditional models",
    )
    p.add_argument("--per-class", action="store_true", help="one row per class (conditional models)")
    p.add_argument(
        "--condition",
        action="append",
        default=None,
        metavar="IMAGE",
        help="an image (or a folder of images) to translate (task=pix2pix, cyclegan) or to draw from "
        "(a prior tokenized from pairs); repeatable. The grid shows each condition beside its output",
    )
    p.add_argument(
        "--prompt",
        dest="prompts",
        action="append",
        default=None,
        metavar="TEXT",
        help="a caption to draw (task=text_gan; task=prior with prior.condition=text); repeatable. The grid has "
        "one row of --rows samples per prompt",
    )
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    gan = p.add_argument_group("task=gan checkpoints")
    gan.add_argument(
        "--truncation", type=float, default=None, help="truncation trick: redraw |z| > T (0 = off)"
    )
    prior = p.add_argument_group("task=prior checkpoints (default: the run's prior.* settings)")
    prior.add_argument("--temperature", type=float, default=None)
    prior.add_argument("--top-k", type=int, default=None)
    prior.add_argument("--top-p", type=float, default=None)
    prior.add_argument("--cfg-scale", type=float, default=None, help="classifier-free guidance scale")
    prior.add_argument(
        "--size",
        type=_multiple,
        default=None,
        metavar="Kx",
        help="images K times the training size (e.g. 2x): a sliding window over a larger code grid",
    )
    a = p.parse_args(argv)
    snap = load_snapshot(a.ckpt, a.device, a.overrides)
    task = snap.task
    if not task.generates:
        # A tokenizer does not generate; its grid (originals over reconstructions) is in the run's
        # samples/ folder and `bigtrain evaluate` gives its reconstruction metrics.
        raise ConfigError(
            f"bigtrain sample draws from a generator; {a.ckpt} is a task={snap.cfg.task} checkpoint "
            "(use bigtrain evaluate for its reconstruction FID)"
        )
    given = {name: getattr(a, name) for name in OPTIONS if getattr(a, name) is not None}
    refused = [OPTIONS[name] for name in given if name not in task.sample_options]
    if refused:
        takes = ", ".join(OPTIONS[n] for n in OPTIONS if n in task.sample_options) or "none"
        raise ConfigError(
            f"{', '.join(refused)}: not for a task={snap.cfg.task} checkpoint (it takes: {takes})"
        )
    _check_classes(a, task.num_classes)
    g = torch.Generator().manual_seed(a.seed)
    if a.npz or a.png_dir:
        if not a.num_samples or a.num_samples < 1:
            raise ConfigError("--npz / --png-dir need --num-samples N (how many samples to write)")
        from bigtrain import distributed as bdist
        from bigtrain.train.export import export_samples

        batch = a.batch_size or int(snap.cfg.eval.batch_size)
        task.before_sampling()
        out = export_samples(
            task, a.num_samples, a.seed, batch, npz=a.npz, png_dir=a.png_dir, classes=a.classes, **given
        )
        if bdist.is_main():
            print(json.dumps({**out, "step": snap.checkpoint.step, "seed": a.seed}))
        return 0
    if a.out is None:
        raise ConfigError("give --out grid.png (a grid), or --num-samples N with --npz / --png-dir (samples)")
    if a.prompts:
        if task.condition_kind != "text":
            raise ConfigError(f"--prompt: a task={snap.cfg.task} checkpoint does not sample from text")
        prompts = [t for t in a.prompts for _ in range(a.rows)]
        images = task.sample_conditioned(prompts, g, **given)
        save_grid(images, a.out, a.rows)
        print(f"wrote {a.out} ({len(a.prompts)} prompts x {a.rows} samples, step {snap.checkpoint.step})")
        return 0
    if task.condition_kind == "text":
        raise ConfigError(
            f'a task={snap.cfg.task} checkpoint draws from text: give --prompt TEXT (e.g. --prompt "a thick seven")'
        )
    if a.condition:
        if task.condition_kind != "image":
            raise ConfigError(f"--condition: a task={snap.cfg.task} checkpoint does not sample from an image")
        x = load_conditions(a.condition, snap.manifest)
        out = task.sample_conditioned(x, g, **given)
        if out.shape[-1] != x.shape[-1]:  # --size: the conditions shown at the outputs' size
            x = torch.nn.functional.interpolate(x, size=out.shape[-2:], mode="nearest")
        if out.shape[1] != x.shape[1]:
            x = x.expand(-1, out.shape[1], -1, -1)
        per_row = max(1, a.rows // 2)
        save_grid(torch.stack([x, out], dim=1).flatten(0, 1), a.out, 2 * per_row)
        print(f"wrote {a.out} ({len(x)} conditions beside their outputs, step {snap.checkpoint.step})")
        return 0
    if task.condition_kind == "image":
        raise ConfigError(
            f"a task={snap.cfg.task} checkpoint translates images: give --condition IMAGE (a file or a folder)"
        )
    if a.arithmetic:
        from bigtrain.train.latent_arithmetic import Pool, arithmetic, digit_reader, parse_expression

        terms = parse_expression(a.arithmetic)
        space = task.latent_space()
        read = digit_reader()
        pool = Pool.draw(space, a.pool, g, read)
        images, nrow, report = arithmetic(space, terms, pool, g, per_group=a.per_group, read=read)
        save_grid(images, a.out, nrow)
        print(json.dumps({**report, "out": str(a.out), "step": snap.checkpoint.step, "seed": a.seed}))
        return 0
    if a.interpolate:
        images, nrow = task.interpolate(a.rows, a.steps, g, **given), a.steps
    elif a.per_class:
        images, nrow = (
            task.sample_per_class(a.classes or list(range(task.num_classes)), a.rows, g, **given),
            a.rows,
        )
    else:
        images, nrow = task.sample(a.rows * a.rows, g, classes=a.classes, **given), a.rows
    save_grid(images, a.out, nrow)
    print(f"wrote {a.out} ({images.shape[0]} images, step {snap.checkpoint.step})")
    return 0


def load_conditions(paths: list[str], manifest: DatasetManifest) -> torch.Tensor:
    """The images at ``paths`` (files, or every image of a folder in name order) as the model's
    sources: its resolution (centre crop, as ``bigtrain prepare``) and source channels, in [-1, 1]."""
    files: list[Path] = []
    for given in paths:
        path = Path(given).expanduser()
        if path.is_dir():
            found = sorted(f for f in path.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise ConfigError(f"--condition {path}: no image files in the folder")
            files += found
        elif path.is_file():
            files.append(path)
        else:
            raise ConfigError(f"--condition {path}: no such file or folder")
    channels = int(manifest.source_channels)
    arrays = []
    for f in files:
        try:
            arrays.append(decode(f.read_bytes(), channels, manifest.resolution))
        except (OSError, ValueError) as exc:
            raise ConfigError(
                f"--condition {f}: not a readable image ({type(exc).__name__}: {exc})"
            ) from None
    batch = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float()
    return batch.div(127.5).sub(1.0)


def _multiple(text: str) -> float:
    """``2x`` (or ``2``) -> 2.0."""
    try:
        value = float(text.lower().removesuffix("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give a multiple of the training size, e.g. 2x") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: the multiple must be >= 1")
    return value


def _check_classes(a: argparse.Namespace, num_classes: int) -> None:
    """``--class`` / ``--per-class`` need a conditional network and labels in its range."""
    if (a.classes or a.per_class) and not num_classes:
        raise ConfigError("--class/--per-class need a class-conditional model (model.conditional=true)")
    bad = [c for c in a.classes or [] if not 0 <= c < num_classes]
    if bad:
        raise ConfigError(f"--class {bad[0]} is out of range: the model has {num_classes} classes")
