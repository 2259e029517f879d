"""Images -> WebDataset shards: ``OUT/train-000000.tar``, ``OUT/val-000000.tar``, ``OUT/dataset.json``.

Each sample is ``<key>.png`` (the image at the prepared resolution) plus ``<key>.cls`` (the class
index as text): plain tars that ``tar -tf`` lists and stock ``webdataset`` reads. Resizing happens
once here (shorter side to the resolution with an antialiasing filter, then a centre crop), so the
training stream only decodes. The split is a seeded permutation, so preparing twice gives the same
shards byte for byte (tar mtimes are fixed).
"""

from __future__ import annotations

import hashlib
import io
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import webdataset as wds
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from bigtrain.data.builtin import load_builtin
from bigtrain.data.manifest import DatasetError, DatasetManifest, ShardInfo
from bigtrain.utils.console import bar_disable

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


@dataclass
class PrepareOptions:
    resolution: int | None = None  # None: keep the source size (built-ins) / required for folders
    val_fraction: float = 0.1
    samples_per_shard: int = 1000
    channels: int | None = None  # None: 1 for grayscale built-ins, 3 for folders
    seed: int = 0
    progress: bool = True


def to_pil(image: np.ndarray | Image.Image, channels: int) -> Image.Image:
    img = image if isinstance(image, Image.Image) else Image.fromarray(image)
    return img.convert("L" if channels == 1 else "RGB")


def resize_square(img: Image.Image, resolution: int) -> Image.Image:
    """Shorter side to ``resolution`` (Lanczos when shrinking, bicubic when growing), then centre crop."""
    w, h = img.size
    if (w, h) == (resolution, resolution):
        return img
    scale = resolution / min(w, h)
    nw, nh = max(resolution, round(w * scale)), max(resolution, round(h * scale))
    resample = Image.Resampling.LANCZOS if scale < 1 else Image.Resampling.BICUBIC
    img = img.resize((nw, nh), resample=resample)
    left, top = (nw - resolution) // 2, (nh - resolution) // 2
    return img.crop((left, top, left + resolution, top + resolution))


def box_downsample(arr: np.ndarray, resolution: int) -> np.ndarray:
    """A square uint8 ``[H, W, C]`` image shrunk to ``resolution`` by repeated 2x2 means in float32,
    rounded to uint8 at the end: ProGAN's ``dataset_tool.py`` (``add_image``), which makes each lower
    level of detail this way (it rounds each level for storage and computes the next from the
    unrounded floats, so the stored level equals this). The side must be ``resolution * 2^k``."""
    side = arr.shape[0]
    if arr.shape[1] != side or side % resolution or (side // resolution) & (side // resolution - 1):
        raise ValueError(
            f"box downsampling needs a square image whose side is resolution x 2^k, got "
            f"{arr.shape[1]}x{side} for {resolution}"
        )
    img = arr.astype(np.float32)
    while img.shape[0] > resolution:
        img = (img[0::2, 0::2] + img[0::2, 1::2] + img[1::2, 0::2] + img[1::2, 1::2]) * 0.25
    return np.rint(img).clip(0, 255).astype(np.uint8)


def downsample(img: Image.Image, resolution: int, method: str = "lanczos") -> np.ndarray:
    """``img`` at ``resolution`` as uint8 ``[H, W]`` or ``[H, W, C]``: ``lanczos`` as
    :func:`resize_square` (what ``bigtrain prepare`` does) or ``box`` (:func:`box_downsample`)."""
    if method == "box" and img.size != (resolution, resolution):
        arr = np.asarray(img, dtype=np.uint8)
        squeeze = arr.ndim == 2
        out = box_downsample(arr[..., None] if squeeze else arr, resolution)
        return out[..., 0] if squeeze else out
    return np.asarray(resize_square(img, resolution), dtype=np.uint8)


def encode_png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def _folder_items(src: Path) -> tuple[list[tuple[Path, int]], list[str]]:
    classes = sorted(p.name for p in src.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise DatasetError(f"no class sub-folders in {src} (expected SRC/<class>/<image files>)")
    items = []
    for idx, name in enumerate(classes):
        for f in sorted((src / name).rglob("*")):
            if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES:
                items.append((f, idx))
    if not items:
        raise DatasetError(f"no image files under {src}")
    return items, classes


class _ShardSink:
    """Writes numbered shards of one split and records their counts and checksums."""

    def __init__(self, out: Path, split: str, per_shard: int):
        self.out, self.split, self.per_shard = out, split, per_shard
        self.shards: list[ShardInfo] = []
        self._writer: wds.TarWriter | None = None
        self._count = 0
        self._path: Path | None = None

    def add(self, key: str, png: bytes, label: int) -> None:
        if self._writer is None:
            self._path = self.out / f"{self.split}-{len(self.shards):06d}.tar"
            # mtime fixed so the same input gives the same shard bytes (and checksums); an int, because
            # a float mtime makes tarfile add a PAX header to every member (twice the parsing work)
            self._writer = wds.TarWriter(str(self._path), mtime=0)
        self._writer.write({"__key__": key, "png": png, "cls": str(label).encode()})
        self._count += 1
        if self._count >= self.per_shard:
            self._close()

    def _close(self) -> None:
        if self._writer is None or self._path is None:
            return
        self._writer.close()
        digest = hashlib.sha256(self._path.read_bytes()).hexdigest()
        self.shards.append(ShardInfo(self._path.name, self._count, digest))
        self._writer, self._count = None, 0

    def close(self) -> list[ShardInfo]:
        self._close()
        return self.shards


def prepare(src: str, out: str | Path, opts: PrepareOptions) -> DatasetManifest:
    """Write shards for ``src`` (an image folder or ``builtin:NAME``) into ``out``; returns the manifest."""
    out = Path(out).expanduser()
    if not 0.0 <= opts.val_fraction < 1.0:
        raise ValueError(f"val fraction must be in [0, 1), got {opts.val_fraction}")
    if opts.samples_per_shard < 1:
        raise ValueError("samples per shard must be >= 1")

    if src.startswith("builtin:"):
        ds = load_builtin(src.split(":", 1)[1])
        classes = list(ds.classes)
        channels = opts.channels or (1 if ds.images.ndim == 3 else 3)
        resolution = opts.resolution or int(ds.images.shape[1])
        n = len(ds)

        def load(i: int) -> Image.Image:
            return to_pil(ds.images[i], channels)

        labels = [int(v) for v in ds.labels]
        name = src.split(":", 1)[1]
    else:
        root = Path(src).expanduser()
        if not root.is_dir():
            raise DatasetError(f"source folder not found: {root}")
        if opts.resolution is None:
            raise ValueError("--resolution is required when preparing an image folder")
        items, classes = _folder_items(root)
        channels = opts.channels or 3
        resolution = opts.resolution
        n = len(items)

        def load(i: int) -> Image.Image:
            with Image.open(items[i][0]) as im:
                im.load()
                return to_pil(im, channels)

        labels = [lbl for _, lbl in items]
        name = root.name

    out.mkdir(parents=True, exist_ok=True)
    for stale in list(out.glob("train-*.tar")) + list(out.glob("val-*.tar")):
        stale.unlink()
    order = np.random.default_rng(opts.seed).permutation(n)
    n_val = int(round(n * opts.val_fraction))
    val_set = set(order[:n_val].tolist())
    sinks = {
        "train": _ShardSink(out, "train", opts.samples_per_shard),
        "val": _ShardSink(out, "val", opts.samples_per_shard),
    }
    skipped = 0
    # train samples are written in permuted order so consecutive shards are class-mixed
    for i in tqdm(order.tolist(), desc=f"prepare {name}", unit="img", disable=bar_disable(opts.progress)):
        try:
            img = resize_square(load(i), resolution)
        except (OSError, UnidentifiedImageError, ValueError) as exc:
            skipped += 1
            log.warning("skipping unreadable image #%d (%s: %s)", i, type(exc).__name__, exc)
            continue
        split = "val" if i in val_set else "train"
        sinks[split].add(f"{i:08d}", encode_png(img), labels[i])
    splits = {k: v for k, v in ((k, s.close()) for k, s in sinks.items()) if v}
    manifest = DatasetManifest(
        root=out,
        name=name,
        resolution=resolution,
        channels=channels,
        classes=classes,
        splits=splits,
        extra={"source": src, "skipped": skipped, "seed": opts.seed, "val_fraction": opts.val_fraction},
    )
    manifest.write()
    log.info("wrote %s: %s", out, {k: manifest.count(k) for k in splits})
    return manifest


def iter_images(
    manifest: DatasetManifest,
    split: str,
    batch_size: int,
    limit: int | None = None,
    resolution: int | None = None,
    method: str = "lanczos",
) -> Iterator[np.ndarray]:
    """Decoded uint8 images [B, H, W, C] of ``split`` in shard order (for FID reference statistics),
    resized to ``resolution`` the way the training stream does (a resolution stage's references;
    ``method`` as :func:`downsample`)."""
    paths = manifest.shard_paths(split)
    batch: list[np.ndarray] = []
    seen = 0
    for sample in wds.tarfile_samples([{"url": p} for p in paths]):
        if limit is not None and seen >= limit:
            break
        try:
            with Image.open(io.BytesIO(sample["png"])) as im:
                img = to_pil(im, manifest.channels)
                if resolution is not None and img.size != (resolution, resolution):
                    arr = downsample(img, resolution, method)
                else:
                    arr = np.asarray(img)
        except (OSError, UnidentifiedImageError, KeyError):
            continue
        batch.append(arr if arr.ndim == 3 else arr[..., None])
        seen += 1
        if len(batch) == batch_size:
            yield np.stack(batch)
            batch = []
    if batch:
        yield np.stack(batch)
