"""Image grids as PNG files and arrays: what the run's ``samples/`` grids, MLflow images and
``bigtrain sample`` write.

The layout is torchvision's ``make_grid(normalize=True, value_range=(-1, 1), padding=2)`` followed by
``save_image`` (the same pixels); it is written out here because importing ``torchvision.utils``
imports all of torchvision and, through its ops, ``torch._dynamo``: 1.7 s of start-up for every
command on the 2-core machine, for twenty lines of tiling.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image


def grid_uint8(images: torch.Tensor, nrow: int, padding: int = 2) -> np.ndarray:
    """``[B, C, H, W]`` images in [-1, 1] as one ``[rows, cols, 3]`` uint8 grid, ``nrow`` images per
    row, ``padding`` black pixels around each."""
    x = images.detach().float().cpu()
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    x = (x.clamp(-1.0, 1.0) + 1.0) / 2.0  # torchvision's normalize over value_range (-1, 1)
    b, c, h, w = x.shape
    if b == 1:  # as make_grid: a single image comes back as it is, without padding
        padding = 0
    cols = min(nrow, b)
    rows = math.ceil(b / cols)
    grid = torch.zeros(c, rows * (h + padding) + padding, cols * (w + padding) + padding)
    for i in range(b):
        r, k = divmod(i, cols)
        top, left = r * (h + padding) + padding, k * (w + padding) + padding
        grid[:, top : top + h, left : left + w] = x[i]
    return grid.mul(255).add_(0.5).clamp_(0, 255).permute(1, 2, 0).to(torch.uint8).numpy()


def save_grid(images: torch.Tensor, path: str | Path, nrow: int, padding: int = 2) -> None:
    Image.fromarray(grid_uint8(images, nrow, padding)).save(path)


__all__ = ["grid_uint8", "save_grid"]
