"""Sample grids: the same pixels as torchvision's make_grid + save_image, without importing it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.utils import save_image

from bigtrain.utils.images import save_grid


@pytest.mark.parametrize(
    ("shape", "nrow"), [((10, 1, 8, 8), 4), ((7, 3, 5, 6), 3), ((1, 3, 4, 4), 8), ((5, 3, 8, 8), 10)]
)
def test_grid_is_torchvisions_pixel_for_pixel(shape: tuple[int, ...], nrow: int, tmp_path: Path) -> None:
    x = torch.rand(*shape, generator=torch.Generator().manual_seed(0)) * 2.4 - 1.2  # out of range too
    save_image(x, tmp_path / "tv.png", nrow=nrow, normalize=True, value_range=(-1, 1), padding=2)
    save_grid(x, tmp_path / "ours.png", nrow)
    assert np.array_equal(
        np.asarray(Image.open(tmp_path / "tv.png")), np.asarray(Image.open(tmp_path / "ours.png"))
    )
