"""`bigtrain prepare` throughput and shard size: a folder of distinct JPEG photos (random crops and
flips of scikit-image's colour photos at about their native size, 2 class folders) prepared at
128 px with 1 and with N worker processes (images/s, start-up included), then bytes per image as
png, jpg and webp. Prints one JSON line last.

The worker processes are spawned, and a spawned process imports the parent's main module: so this
script imports torch (``_common``) and scikit-image inside functions, and its workers start as
light as the ``bigtrain`` command's do.

    python benchmarks/prepare.py [images=200] [resolution=128] [workers=2] [quality=95] [repeat=2]
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from bigtrain.data.manifest import DatasetManifest
from bigtrain.data.prepare import PrepareOptions, prepare

# colour photos that ship with scikit-image (coins and camera are grayscale, so not here)
PHOTOS = (
    "astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field", "immunohistochemistry", "retina",
    "stereo_motorcycle",
)  # fmt: skip


def _photos() -> list[np.ndarray]:
    from skimage import data as skdata

    out = []
    for name in PHOTOS:
        img = getattr(skdata, name)()
        out.append(img[0] if isinstance(img, tuple) else img)  # stereo_motorcycle: (left, right, disparity)
    return out


def build_source(root: Path, images: int, seed: int = 0) -> tuple[Path, float]:
    """``images`` distinct JPEGs (q95): a random crop of 70-100% of each side of a photo, flipped
    half the time, alternately in class folders ``a`` and ``b``; returns the folder and mean pixels."""
    rng = np.random.default_rng(seed)
    photos = _photos()
    pixels = 0
    for i in range(images):
        photo = photos[i % len(photos)]
        h, w = photo.shape[:2]
        ch, cw = int(h * rng.uniform(0.7, 1.0)), int(w * rng.uniform(0.7, 1.0))
        top, left = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
        crop = photo[top : top + ch, left : left + cw]
        if rng.random() < 0.5:
            crop = crop[:, ::-1]
        folder = root / ("a" if i % 2 == 0 else "b")
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.ascontiguousarray(crop)).save(folder / f"{i:05d}.jpg", quality=95)
        pixels += ch * cw
    return root, pixels / images


def time_prepare(src: Path, out: Path, opts: PrepareOptions, repeat: int) -> tuple[float, DatasetManifest]:
    """Best images/s over ``repeat`` runs of the whole ``prepare`` call (listing, pool start, writing)."""
    best, manifest = 0.0, None
    for _ in range(repeat):
        t = time.perf_counter()
        manifest = prepare(str(src), out, opts)
        n = manifest.count("train") + manifest.count("val")
        best = max(best, n / (time.perf_counter() - t))
    assert manifest is not None
    return best, manifest


def shard_bytes(m: DatasetManifest) -> int:
    return sum(s.bytes for v in m.splits.values() for s in v)


def main() -> None:
    from _common import emit, parse_args

    a = parse_args({"images": 200, "resolution": 128, "workers": 2, "quality": 95, "repeat": 2})
    with tempfile.TemporaryDirectory() as tmp:
        src, mean_px = build_source(Path(tmp) / "src", a["images"])
        base = {"resolution": a["resolution"], "samples_per_shard": 50, "progress": False}
        rate1, m1 = time_prepare(src, Path(tmp) / "w1", PrepareOptions(workers=1, **base), a["repeat"])
        rate_n, m_n = time_prepare(
            src, Path(tmp) / "wn", PrepareOptions(workers=a["workers"], **base), a["repeat"]
        )
        assert m1.dataset_id == m_n.dataset_id, "workers changed the output"
        per_image = {"png": shard_bytes(m1) / a["images"]}
        for fmt in ("jpg", "webp"):
            m = prepare(str(src), Path(tmp) / fmt, PrepareOptions(format=fmt, quality=a["quality"], **base))
            per_image[fmt] = shard_bytes(m) / a["images"]
    emit(
        {
            "bench": "prepare",
            "images": a["images"],
            "source_mean_megapixels": round(mean_px / 1e6, 3),
            "resolution": a["resolution"],
            "img_per_s_workers_1": round(rate1, 1),
            f"img_per_s_workers_{a['workers']}": round(rate_n, 1),
            "speedup": round(rate_n / rate1, 2),
            "quality": a["quality"],
            "bytes_per_image": {k: round(v) for k, v in per_image.items()},
        }
    )


if __name__ == "__main__":
    main()
