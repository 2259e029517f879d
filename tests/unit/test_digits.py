"""The digit transforms and measurements behind the mnist5k-edges, -domains and -captions built-ins:
outlines that are thin and around the ink, a second domain that is thicker and inverted, and
measured attributes whose caption words agree with the recorded thresholds."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from scipy import ndimage

from bigtrain.data import digits
from bigtrain.data.builtin import load_builtin
from bigtrain.data.digits import DIGIT_WORDS, DigitAttributes, Thresholds


@pytest.fixture(scope="module")
def mnist() -> tuple[np.ndarray, np.ndarray]:
    ds = load_builtin("mnist5k")
    return ds.images, ds.labels


def _bar(shear: float = 0.0, width: int = 3, top: int = 4, height: int = 20) -> np.ndarray:
    """A white bar on black, its columns shifted by ``shear`` pixels per row upwards (> 0: the top
    leans right)."""
    img = np.zeros((28, 28), np.uint8)
    mid = top + height / 2
    for r in range(top, top + height):
        left = int(round(12 + shear * (mid - r)))
        img[r, left : left + width] = 255
    return img


def test_an_upright_bar_measures_as_drawn() -> None:
    a = digits.measure(_bar())
    assert a.slant == pytest.approx(0.0, abs=1e-9)
    # 60 ink pixels over an 18-pixel skeleton (it stops one pixel short of each end): 3.3 px
    assert a.thickness == pytest.approx(3 / 28, rel=0.15)
    assert a.size == pytest.approx(20 / 28) and a.width == pytest.approx(3 / 28)


@pytest.mark.parametrize("shear", [0.4, -0.3])
def test_slant_is_the_shear_of_the_ink(shear: float) -> None:
    a = digits.measure(_bar(shear))
    assert a.slant == pytest.approx(shear, abs=0.05)
    assert digits.measure(_bar(shear, width=6)).thickness > a.thickness


def test_a_batch_measures_as_its_images_one_by_one(mnist: tuple[np.ndarray, np.ndarray]) -> None:
    images = mnist[0][::500]
    batch = digits.measure(images)
    assert batch.thickness.shape == (10,)
    for i, img in enumerate(images):
        assert digits.measure(img) == batch[i]
    blank = digits.measure(np.zeros((2, 28, 28), np.uint8))
    assert not np.any(blank.thickness) and not np.any(blank.slant) and not np.any(blank.width)
    with pytest.raises(ValueError, match="uint8"):
        digits.measure(images.astype(np.float32))


def test_outline_is_a_thin_ring_just_outside_the_ink(mnist: tuple[np.ndarray, np.ndarray]) -> None:
    images = mnist[0][::50]
    out = digits.outline(images)
    assert out.shape == images.shape and out.dtype == np.uint8 and set(np.unique(out)) == {0, 255}
    ink = images >= digits.INK
    ring = out == 255
    dilated = np.stack([ndimage.binary_dilation(m, np.ones((3, 3), bool)) for m in ink])
    assert not np.any(ring & ~dilated) and not np.any(ring & ink)  # around the strokes, not on them
    assert ring.sum(axis=(1, 2)).min() > 20  # every digit has a visible outline
    # thin: a 3x3 erosion leaves almost nothing of it (a filled shape would keep its inside)
    eroded = np.stack([ndimage.binary_erosion(m, np.ones((3, 3), bool)) for m in ring])
    assert eroded.sum() < 0.02 * ring.sum()
    assert np.array_equal(digits.outline(images[3]), out[3])


def test_thick_inverted_is_white_background_and_thicker(mnist: tuple[np.ndarray, np.ndarray]) -> None:
    images = mnist[0][::50]
    b = digits.thick_inverted(images)
    assert b.dtype == np.uint8 and b.mean(axis=(1, 2)).min() > 127
    before, after = digits.measure(images), digits.measure(255 - b)
    assert np.all(after.thickness > before.thickness)
    assert np.median(after.thickness / before.thickness) > 1.3


def test_tertile_thresholds_split_the_dataset_in_thirds(mnist: tuple[np.ndarray, np.ndarray]) -> None:
    attrs = digits.measure(mnist[0])
    t = Thresholds.tertiles(attrs)
    assert np.mean(attrs.thickness < t.thickness[0]) == pytest.approx(1 / 3, abs=0.01)
    assert np.mean(attrs.thickness > t.thickness[1]) == pytest.approx(1 / 3, abs=0.01)
    assert np.mean(np.abs(attrs.slant) < t.slant[0]) == pytest.approx(1 / 3, abs=0.01)
    # widths are whole pixels: ties make the outer groups smaller, never larger
    assert 0.2 < np.mean(attrs.width < t.width[0]) <= 1 / 3 + 0.01
    assert 0.2 < np.mean(attrs.width > t.width[1]) <= 1 / 3 + 0.01


def test_captions_name_the_digit_and_the_measured_attributes(mnist: tuple[np.ndarray, np.ndarray]) -> None:
    images, labels = mnist
    attrs = digits.measure(images)
    t = Thresholds.tertiles(attrs)
    rng = np.random.default_rng(0)
    seen: set[str] = set()
    for i in range(0, len(labels), 7):
        text = digits.caption(int(labels[i]), attrs[i], t, rng)
        label, words = digits.parse_caption(text)
        assert label == labels[i] and DIGIT_WORDS[int(labels[i])] in text
        a = attrs[i]
        assert words.get("thickness") == (
            "thin" if a.thickness < t.thickness[0] else "thick" if a.thickness > t.thickness[1] else None
        )
        assert words.get("width") == (
            "narrow" if a.width < t.width[0] else "wide" if a.width > t.width[1] else None
        )
        if abs(a.slant) < t.slant[0]:
            assert words.get("slant") == "upright"
        elif abs(a.slant) > t.slant[1]:
            assert words.get("slant") == ("right-slanted" if a.slant > 0 else "left-slanted")
        else:
            assert "slant" not in words
        seen.update(words.values())
    assert seen == {"thin", "thick", "narrow", "wide", "upright", "right-slanted", "left-slanted"}


def test_caption_grammar_and_seeded_phrasing() -> None:
    t = Thresholds((0.1, 0.2), (0.1, 0.3), (0.4, 0.6))
    middle = DigitAttributes(0.15, 0.2, 0.7, 0.5)
    texts = {digits.caption(8, middle, t, np.random.default_rng(s)) for s in range(20)}
    assert texts == {"an eight", "an eight, handwritten", "a drawing of an eight"}
    upright_one = DigitAttributes(0.25, -0.05, 0.7, 0.2)
    text = digits.caption(1, upright_one, t, np.random.default_rng(1))
    assert "a narrow, thick, upright one" in text
    assert digits.parse_caption(text) == (1, {"width": "narrow", "thickness": "thick", "slant": "upright"})
    a = [digits.caption(7, middle, t, np.random.default_rng(5)) for _ in range(3)]
    assert a == [digits.caption(7, middle, t, np.random.default_rng(5)) for _ in range(3)]


def test_digits_and_prepare_never_import_torch() -> None:
    code = "import sys, bigtrain.data.digits, bigtrain.data.prepare; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
