"""Digit images made into other datasets, and measured: what ``builtin:mnist5k-edges``,
``builtin:mnist5k-domains`` and ``builtin:mnist5k-captions`` are built from.

Why measured attributes: a caption such as "a thick, right-slanted seven" is only worth training on
if its words say something true about the pixels, and evaluation can only check that a model
follows them if the same measurement applies to generated samples. So every attribute word comes
from a number :func:`measure` computes (on a whole batch of ``[N, H, W]`` uint8 images at once,
as evaluation needs), compared with thresholds taken from the dataset itself (its tertiles), and
those thresholds are recorded in ``dataset.json``.

The measurements, for white ink on black (MNIST's convention), ink being grey level >= 128:

* ``thickness``: ink pixels / skeleton pixels (scikit-image's ``skeletonize``), the mean stroke
  width, as a fraction of the image side;
* ``slant``: ``-mu11 / mu02`` of the grey levels' central moments, the horizontal shift per row
  (0: upright, > 0: the top leans right, as italics);
* ``size`` and ``width``: the ink's bounding-box height and width, as fractions of the image side.

MNIST scales every digit so that its larger side is 20 of 28 pixels: 85% of the 5,000 are exactly
20 pixels tall, so height says almost nothing and tertiles of it are all 20. The captions therefore
use the box's *width* ("narrow", "wide") as their third attribute; ``size`` is measured all the same
(a generated digit that shrinks is worth noticing).

Pure numpy, scipy and scikit-image, deterministic, and no torch: ``bigtrain prepare``'s workers
never import it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage
from skimage.morphology import skeletonize

INK = 128  # grey level from which a pixel counts as ink
DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
# the attributes captions name, in the order their words appear, with the words for (low, high)
ATTRIBUTE_WORDS: dict[str, tuple[str, ...]] = {
    "width": ("narrow", "wide"),
    "thickness": ("thin", "thick"),
    "slant": ("upright", "left-slanted", "right-slanted"),
}
# how a caption is phrased around "a thick, right-slanted seven"; chosen per image by a seeded RNG
TEMPLATES = ("{}", "{}, handwritten", "a drawing of {}")
_SQUARE = np.ones((3, 3), dtype=bool)


def _batched(img: np.ndarray) -> tuple[np.ndarray, bool]:
    """``img`` as ``[N, H, W]`` uint8, and whether it was a single ``[H, W]`` image."""
    arr = np.asarray(img)
    if arr.dtype != np.uint8 or arr.ndim not in (2, 3):
        raise ValueError(f"expected uint8 [H, W] or [N, H, W] grayscale images, got {arr.dtype} {arr.shape}")
    return (arr[None], True) if arr.ndim == 2 else (arr, False)


def _per_image(structure: np.ndarray) -> np.ndarray:
    """A 2-D structuring element for a batch: nothing spreads from one image into the next."""
    return structure[None]


def outline(img: np.ndarray) -> np.ndarray:
    """The digit's outline: the one-pixel ring just outside its ink (the ink dilated by a 3x3 square,
    minus the ink), white (255) on black. A hollow tracing of the strokes rather than the strokes'
    own edge pixels, because MNIST strokes are 2-3 pixels wide: the ink minus its erosion would be
    nearly the whole stroke, not an outline."""
    batch, single = _batched(img)
    ink = batch >= INK
    ring = ndimage.binary_dilation(ink, _per_image(_SQUARE)) & ~ink
    out = np.where(ring, 255, 0).astype(np.uint8)
    return out[0] if single else out


def thick_inverted(img: np.ndarray, passes: int = 1) -> np.ndarray:
    """The digit with strokes thickened (a 3x3 grey-level max filter, ``passes`` times: about two
    pixels wider each) and the grey levels inverted (black ink on white): a second, visibly
    different domain of the same digits."""
    batch, single = _batched(img)
    out = batch
    for _ in range(passes):
        out = ndimage.maximum_filter(out, footprint=_per_image(_SQUARE), mode="constant", cval=0)
    out = (255 - out).astype(np.uint8)
    return out[0] if single else out


@dataclass(frozen=True)
class DigitAttributes:
    """Measured attributes (see the module docstring): floats for one image, arrays [N] for a batch."""

    thickness: Any
    slant: Any
    size: Any
    width: Any

    def __getitem__(self, i: int) -> DigitAttributes:
        """Image ``i`` of a batch's attributes."""
        return DigitAttributes(
            float(self.thickness[i]), float(self.slant[i]), float(self.size[i]), float(self.width[i])
        )


def _extent(any_ink: np.ndarray) -> np.ndarray:
    """Rows (or columns) from the first to the last holding ink, per image; 0 for a blank image."""
    n = any_ink.shape[1]
    first = any_ink.argmax(axis=1)
    last = n - 1 - any_ink[:, ::-1].argmax(axis=1)
    return np.where(any_ink.any(axis=1), last - first + 1, 0)


def _slant(batch: np.ndarray) -> np.ndarray:
    """``-mu11 / mu02`` of each image's grey levels (0 for a blank or one-row image)."""
    w = batch.astype(np.float64) / 255.0
    h, wd = batch.shape[1:]
    rows = np.arange(h, dtype=np.float64)[None, :, None]
    cols = np.arange(wd, dtype=np.float64)[None, None, :]
    mass = w.sum(axis=(1, 2))
    safe = np.where(mass > 0, mass, 1.0)
    dy = rows - ((w * rows).sum(axis=(1, 2)) / safe)[:, None, None]
    dx = cols - ((w * cols).sum(axis=(1, 2)) / safe)[:, None, None]
    mu11 = (w * dx * dy).sum(axis=(1, 2))
    mu02 = (w * dy * dy).sum(axis=(1, 2))
    return np.where(mu02 > 1e-9, -mu11 / np.where(mu02 > 1e-9, mu02, 1.0), 0.0)


def measure(img: np.ndarray) -> DigitAttributes:
    """The attributes of one ``[H, W]`` uint8 digit (floats) or a batch ``[N, H, W]`` (arrays),
    white ink on black; sizes are fractions of the image height, so thresholds hold at any
    resolution (up to resampling)."""
    batch, single = _batched(img)
    side = float(batch.shape[1])
    ink: np.ndarray = batch >= INK
    skeleton = np.array([int(skeletonize(m).sum()) for m in ink], dtype=np.float64)
    area = ink.sum(axis=(1, 2)).astype(np.float64)
    thickness = np.where(skeleton > 0, area / np.maximum(skeleton, 1.0), 0.0) / side
    attrs = DigitAttributes(
        thickness=thickness,
        slant=_slant(batch),
        size=_extent(np.asarray(ink.any(axis=2))) / side,
        width=_extent(np.asarray(ink.any(axis=1))) / side,
    )
    return attrs[0] if single else attrs


@dataclass(frozen=True)
class Thresholds:
    """Each captioned attribute's (low, high) bounds: below low gets the first word, above high the
    second; in between, no word. Slant compares its magnitude (its sign gives the direction)."""

    thickness: tuple[float, float]
    slant: tuple[float, float]
    width: tuple[float, float]

    @classmethod
    def tertiles(cls, attrs: DigitAttributes) -> Thresholds:
        """The dataset's own tertiles (``attrs`` of a whole batch), rounded to 6 decimals so the
        recorded numbers are the ones the words were chosen with."""

        def cut(values: np.ndarray) -> tuple[float, float]:
            lo, hi = np.quantile(np.asarray(values, dtype=np.float64), [1 / 3, 2 / 3])
            return round(float(lo), 6), round(float(hi), 6)

        return cls(cut(attrs.thickness), cut(np.abs(attrs.slant)), cut(attrs.width))


def attribute_words(attrs: DigitAttributes, thresholds: Thresholds) -> dict[str, str | None]:
    """One image's word per captioned attribute (None: in the middle tertile)."""

    def pick(value: float, bounds: tuple[float, float], low: str, high: str) -> str | None:
        return low if value < bounds[0] else high if value > bounds[1] else None

    slant = float(attrs.slant)
    slanted = "right-slanted" if slant > 0 else "left-slanted"
    return {
        "width": pick(float(attrs.width), thresholds.width, "narrow", "wide"),
        "thickness": pick(float(attrs.thickness), thresholds.thickness, "thin", "thick"),
        "slant": pick(abs(slant), thresholds.slant, "upright", slanted),
    }


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" and word != "one" else "a"


def caption(label: int, attrs: DigitAttributes, thresholds: Thresholds, rng: np.random.Generator) -> str:
    """E.g. "a wide, thick, right-slanted seven" or "a drawing of an eight": the digit's word after
    its attribute words (width, thickness, slant; middle values say nothing), in one of
    :data:`TEMPLATES` drawn from ``rng``. :func:`parse_caption` reads it back."""
    adjectives = [w for w in attribute_words(attrs, thresholds).values() if w is not None]
    phrase = ", ".join(adjectives)
    phrase = f"{phrase} {DIGIT_WORDS[label]}" if phrase else DIGIT_WORDS[label]
    return TEMPLATES[int(rng.integers(len(TEMPLATES)))].format(f"{_article(phrase)} {phrase}")


_VOCAB = {w: name for name, words in ATTRIBUTE_WORDS.items() for w in words}


def parse_caption(text: str) -> tuple[int | None, dict[str, str]]:
    """A caption's digit (None if it names none) and its attribute words by attribute: what a
    prompt asked for, to compare with :func:`measure` of what was generated."""
    tokens = re.findall(r"[a-z]+(?:-[a-z]+)?", text.lower())
    digit = next((DIGIT_WORDS.index(t) for t in tokens if t in DIGIT_WORDS), None)
    return digit, {_VOCAB[t]: t for t in tokens if t in _VOCAB}


def describe(thresholds: Thresholds, resolution: int) -> dict[str, Any]:
    """The thresholds and how each attribute was measured, as recorded in ``dataset.json``
    (``extra["attributes"]``)."""
    return {
        "measured_at": resolution,
        "ink": f"grey level >= {INK}, white ink on black",
        "thickness": {
            "how": "ink pixels / skeleton pixels (skimage.morphology.skeletonize) / image side",
            "thresholds": list(thresholds.thickness),
            "words": {"below": "thin", "above": "thick"},
        },
        "slant": {
            "how": "-mu11 / mu02 of the grey levels' central moments (> 0: the top leans right); "
            "thresholds on its magnitude",
            "thresholds": list(thresholds.slant),
            "words": {"below": "upright", "above": "left-slanted if < 0, right-slanted if > 0"},
        },
        "width": {
            "how": "ink bounding-box width / image side",
            "thresholds": list(thresholds.width),
            "words": {"below": "narrow", "above": "wide"},
        },
        "rule": "the dataset's tertiles: below the first threshold, the first word; above the second, "
        "the second; in between, no word",
    }
