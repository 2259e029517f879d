"""Samples out, for the evaluators papers report with: the ADM evaluator (``arr_0``: uint8
``[N, H, W, 3]`` and, for class-conditional models, ``arr_1``: int64 labels, in one ``.npz``) and
torch-fidelity / clean-fid's folder mode (one PNG per sample).

The images are quantised exactly as bigtrain's own FID quantises them (``quantize_images``). The
samples come in batches, each with its own generator (``batch_seed(seed, k)``, as evaluation
draws them), so the same seed gives the same files for any number of processes: under
``torchrun`` every rank draws every world-th batch and writes its PNGs, and the main process
assembles the ``.npz`` from the ranks' parts.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from bigtrain import distributed as bdist
from bigtrain.eval.fid import batch_seed, quantize_images, rank_batches
from bigtrain.train.task import Task


def draw(
    task: Task,
    batches: list[tuple[int, int]],
    seed: int,
    classes: list[int] | None = None,
    **options: Any,
) -> Iterator[tuple[int, np.ndarray, np.ndarray | None]]:
    """``(batch index, uint8 [B, H, W, C] images, labels or None)`` for each ``(index, size)`` of
    ``batches`` (this rank's: :func:`~bigtrain.eval.fid.rank_batches`)."""
    for k, size in batches:
        generator = torch.Generator().manual_seed(batch_seed(seed, k))
        labels = None
        if task.num_classes:
            pool = torch.tensor(classes if classes else range(task.num_classes))
            labels = pool[torch.randint(0, len(pool), (size,), generator=generator)]
            images = task.sample_labels(labels, generator, **options)
        else:
            images = task.sample(size, generator, **options)
        x = quantize_images(images).permute(0, 2, 3, 1).contiguous().numpy()
        yield k, x, None if labels is None else labels.numpy().astype(np.int64)


def export_samples(
    task: Task,
    n: int,
    seed: int,
    batch: int,
    *,
    npz: str | Path | None = None,
    png_dir: str | Path | None = None,
    classes: list[int] | None = None,
    **options: Any,
) -> dict[str, Any]:
    """Collective under a process group. Write ``n`` samples to ``npz`` (ADM layout; grayscale
    repeated to 3 channels) and/or one PNG each in ``png_dir`` (``000000.png`` ..., with
    ``labels.txt`` when conditional). Returns a summary (on the main process)."""
    plan = rank_batches(n, batch, bdist.rank(), bdist.world_size())
    if not task.eval_source().splittable:  # e.g. a ZeRO-3 prior: only the main process holds weights
        plan = rank_batches(n, batch) if bdist.is_main() else []
    rank = bdist.rank()
    if png_dir is not None:
        Path(png_dir).mkdir(parents=True, exist_ok=True)
    mine: dict[int, tuple[np.ndarray, np.ndarray | None]] = {}
    labels: dict[int, np.ndarray] = {}
    for k, x, y in draw(task, plan, seed, classes, **options):
        if png_dir is not None:
            for j, img in enumerate(x):
                Image.fromarray(img[..., 0] if img.shape[-1] == 1 else img).save(
                    Path(png_dir) / f"{k * batch + j:06d}.png"
                )
        if npz is not None:
            mine[k] = (x, y)
        if y is not None:
            labels[k] = y
    for part in bdist.all_gather_objects(labels):  # small: every rank's labels, for labels.txt
        labels.update(part)
    y_all = np.concatenate([labels[k] for k in sorted(labels)]) if labels else None
    shape: tuple[int, ...] = ()
    if npz is not None:
        part = Path(f"{npz}.rank{rank}.part.npz")
        np.savez(part, **{f"x{k}": x for k, (x, _) in mine.items()})
        bdist.barrier()
        if bdist.is_main():
            images = {}
            for r in range(bdist.world_size()):  # every rank wrote a part (maybe empty)
                other = Path(f"{npz}.rank{r}.part.npz")
                with np.load(other) as data:
                    images.update({int(name[1:]): data[name] for name in data.files})
                other.unlink()
            arr = np.concatenate([images[k] for k in sorted(images)])
            if arr.shape[-1] == 1:
                arr = np.repeat(arr, 3, axis=-1)  # the ADM evaluator and Inception read RGB
            arrays = {"arr_0": arr} if y_all is None else {"arr_0": arr, "arr_1": y_all}
            tmp = Path(f"{npz}.part.npz")
            np.savez(tmp, **arrays)
            tmp.replace(npz)
            shape = arr.shape
        bdist.barrier()
    if png_dir is not None and y_all is not None and bdist.is_main():
        (Path(png_dir) / "labels.txt").write_text("".join(f"{int(v)}\n" for v in y_all))
    return {"num": n, "npz": None if npz is None else str(npz), "png_dir": None if png_dir is None else str(png_dir),
            "shape": list(shape), "labels": y_all is not None, "processes": bdist.world_size()}  # fmt: skip


__all__ = ["draw", "export_samples"]
