"""A split's captions as what a text-conditioned model samples for and is judged on (``task=text_gan``,
``task=prior`` with ``prior.condition=text``).

Evaluation draws the captions of ``eval.ref_split`` in order (:class:`bigtrain.train.in_order.InOrder`,
cycling), so the judged images are those of known captions: the digit a caption names is the class
``class_agreement`` checks, its attribute words (thick, slanted, ...) what ``attribute_agreement``
measures, with the thresholds ``bigtrain.data.digits`` recorded in ``dataset.json``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
import torch

from bigtrain.data import digits
from bigtrain.data.manifest import DatasetManifest
from bigtrain.data.read import decode_text, read_shards
from bigtrain.train.in_order import InOrder, Rows

# the grid's prompts for the digit captions (builtin:mnist5k-captions): every digit, every attribute word
DIGIT_PROMPTS = (
    "a zero",
    "a thick one",
    "a thin two",
    "a wide, thick three",
    "a narrow four",
    "an upright five",
    "a right-slanted six",
    "a left-slanted seven",
    "a wide, thin eight",
    "a thick nine",
)


def read_captions(manifest: DatasetManifest, split: str) -> list[str]:
    """The ``.txt`` captions of ``split`` in shard order ("" for a sample without one)."""
    counts = dict(zip(manifest.shard_paths(split), (x.count for x in manifest.splits[split]), strict=True))
    return [decode_text(s) for s in read_shards(counts, counts=counts)]


def word_ranges(attributes: Mapping[str, Any]) -> dict[str, dict[str, tuple[float, float]]]:
    """The measured range each attribute word asks for, from ``dataset.json``'s
    ``extra["attributes"]`` (:func:`bigtrain.data.digits.describe`): below the first threshold the
    first word, above the second the second; slant by its magnitude, its sign giving the side."""
    inf = math.inf
    out: dict[str, dict[str, tuple[float, float]]] = {}
    for attr, (low_word, high_word) in (("thickness", ("thin", "thick")), ("width", ("narrow", "wide"))):
        if attr in attributes:
            lo, hi = (float(v) for v in attributes[attr]["thresholds"])
            out[attr] = {low_word: (-inf, lo), high_word: (hi, inf)}
    if "slant" in attributes:
        lo, hi = (float(v) for v in attributes["slant"]["thresholds"])
        out["slant"] = {"left-slanted": (-inf, -hi), "upright": (-lo, lo), "right-slanted": (hi, inf)}
    return out


def measure_digits(images: np.ndarray) -> dict[str, np.ndarray]:
    """:func:`bigtrain.data.digits.measure` of uint8 ``[N, C, H, W]`` images (grey levels: the mean
    over channels) by attribute."""
    grey = images[:, 0] if images.shape[1] == 1 else images.mean(axis=1).round().astype(np.uint8)
    a = digits.measure(np.ascontiguousarray(grey))
    return {"thickness": np.asarray(a.thickness), "slant": np.asarray(a.slant), "width": np.asarray(a.width)}


class Captions:
    """``split``'s captions of ``manifest``, read once, and the evaluation fields they give."""

    def __init__(self, manifest: DatasetManifest, split: str) -> None:
        self.manifest, self.split = manifest, split
        self._captions: list[str] | None = None

    @property
    def all(self) -> list[str]:
        if self._captions is None:
            found = read_captions(self.manifest, self.split)
            if not found:
                raise ValueError(f"no captions in the {self.split} split")
            self._captions = found
        return self._captions

    def _indices(self) -> Iterator[Rows]:
        """The captions by index, as one batch: :class:`InOrder` cuts tensors, not lists of
        strings, so it draws the indices and :meth:`take` looks the captions up."""
        yield (torch.arange(len(self.all)),)

    def order(self) -> InOrder:
        """The captions in order from the first, continuing and cycling."""
        return InOrder(self._indices, f"captions in the {self.split} split")

    def take(self, order: InOrder, n: int) -> list[str]:
        """The next ``n`` captions ``order`` draws (none for ``n <= 0``)."""
        caps = self.all
        return [caps[i] for i in order.take(n)[0].tolist()] if n > 0 else []

    def first(self, n: int) -> list[str]:
        """The first ``n`` captions (cycling): those the judged images were drawn for."""
        return self.take(self.order(), n)

    def labels(self, n: int) -> np.ndarray:
        """The digit each of the first ``n`` captions names (-1: none)."""
        found = [digits.parse_caption(c)[0] for c in self.first(n)]
        return np.asarray([-1 if d is None else d for d in found], dtype=np.int64)

    def attributes(self, n: int) -> list[dict[str, str]]:
        return [digits.parse_caption(c)[1] for c in self.first(n)]

    def grid_prompts(self, rows: int) -> list[str]:
        """The grid's prompts: every digit and attribute word for the digit captions (a dataset
        with measured attributes), else the first distinct captions."""
        pool = list(DIGIT_PROMPTS) if self.manifest.extra.get("attributes") else list(dict.fromkeys(self.all))
        return [pool[i % len(pool)] for i in range(rows)]

    def eval_fields(self) -> dict[str, Any]:
        """``EvalSource`` keywords: the named digits, and for captions with measured attributes the
        words, the measurement and the ranges the words ask for."""
        attributes = self.manifest.extra.get("attributes")
        fields: dict[str, Any] = {"labels": self.labels}
        if attributes:
            fields |= {
                "attributes": self.attributes,
                "measure": measure_digits,
                "word_ranges": word_ranges(attributes),
            }
        return fields


__all__ = ["DIGIT_PROMPTS", "Captions", "measure_digits", "read_captions", "word_ranges"]
