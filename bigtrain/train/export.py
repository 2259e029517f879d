"""Samples out, for the evaluators papers report with: the ADM evaluator (``arr_0``: uint8
``[N, H, W, 3]`` and, for class-conditional models, ``arr_1``: int64 labels, in one ``.npz``) and
torch-fidelity / clean-fid's folder mode (one PNG per sample).

The images are quantised exactly as bigtrain's own FID quantises them (``quantize_images``), so a
score computed elsewhere on these files judges the images bigtrain judged. Labels are drawn
uniformly (from ``classes`` when given) with the same generator as the images, batch by batch, so
the same seed gives the same files.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from bigtrain.eval.fid import quantize_images
from bigtrain.train.task import Task


def draw(
    task: Task,
    n: int,
    generator: torch.Generator,
    batch: int,
    classes: list[int] | None = None,
    **options: Any,
) -> Iterator[tuple[np.ndarray, np.ndarray | None]]:
    """Batches of ``(uint8 [B, H, W, C] images, labels or None)`` until ``n`` samples are drawn."""
    done = 0
    while done < n:
        b = min(batch, n - done)
        labels = None
        if task.num_classes:
            pool = torch.tensor(classes if classes else range(task.num_classes))
            labels = pool[torch.randint(0, len(pool), (b,), generator=generator)]
            images = task.sample_labels(labels, generator, **options)
        else:
            images = task.sample(b, generator, **options)
        yield (
            quantize_images(images).permute(0, 2, 3, 1).contiguous().numpy(),
            None if labels is None else labels.numpy().astype(np.int64),
        )
        done += b


def export_samples(
    task: Task,
    n: int,
    generator: torch.Generator,
    batch: int,
    *,
    npz: str | Path | None = None,
    png_dir: str | Path | None = None,
    classes: list[int] | None = None,
    **options: Any,
) -> dict[str, Any]:
    """Write ``n`` samples to ``npz`` (ADM layout; grayscale repeated to 3 channels) and/or one PNG
    each in ``png_dir`` (``000000.png`` ..., with ``labels.txt`` when conditional)."""
    images: list[np.ndarray] = []
    labels: list[np.ndarray] = []
    if png_dir is not None:
        Path(png_dir).mkdir(parents=True, exist_ok=True)
    index = 0
    for x, y in draw(task, n, generator, batch, classes, **options):
        if png_dir is not None:
            for img in x:
                Image.fromarray(img[..., 0] if img.shape[-1] == 1 else img).save(
                    Path(png_dir) / f"{index:06d}.png"
                )
                index += 1
        if npz is not None:
            images.append(x)
        if y is not None:
            labels.append(y)
    y_all = np.concatenate(labels) if labels else None
    if png_dir is not None and y_all is not None:
        (Path(png_dir) / "labels.txt").write_text("".join(f"{int(v)}\n" for v in y_all))
    shape: tuple[int, ...] = ()
    if npz is not None:
        arr = np.concatenate(images)
        if arr.shape[-1] == 1:
            arr = np.repeat(arr, 3, axis=-1)  # the ADM evaluator and Inception read RGB
        arrays = {"arr_0": arr} if y_all is None else {"arr_0": arr, "arr_1": y_all}
        tmp = Path(f"{npz}.part.npz")
        np.savez(tmp, **arrays)
        tmp.replace(npz)
        shape = arr.shape
    return {"num": n, "npz": None if npz is None else str(npz), "png_dir": None if png_dir is None else str(png_dir),
            "shape": list(shape), "labels": y_all is not None}  # fmt: skip


__all__ = ["draw", "export_samples"]
