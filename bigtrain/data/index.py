"""``bigtrain index``: a ``dataset.json`` for WebDataset shards someone else wrote, where they are.

ImageNet and caption sets usually come as shards that img2dataset or a ``*-wds`` release wrote:
``{key}.jpg`` (or ``.webp``, ``.png``) with ``{key}.json`` metadata, ``{key}.txt`` captions and
sometimes ``{key}.cls`` labels, on a shared disk, an HTTP server or S3. Copying and re-encoding them
would cost hours and disk; instead one pass over the shards (a thread per shard in flight: the work
is reading, plus image headers) records what training needs to know before it starts: per-shard
sample counts, sizes, digests and image format, the label source and class list, whether captions
and metadata exist, and the image sizes. Training then reads the shards from where they are.
"""

from __future__ import annotations

import hashlib
import io
import logging
import random
import time
from collections import Counter
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from bigtrain.data import urls
from bigtrain.data.images import IMAGE_KEYS, image_format, image_key
from bigtrain.data.manifest import DatasetManifest, ShardInfo
from bigtrain.data.read import raw_label, tar_samples
from bigtrain.errors import DatasetError
from bigtrain.utils.console import bar_disable

log = logging.getLogger(__name__)


@dataclass
class IndexOptions:
    resolution: int | None = None  # None: the images' own size, when they all share one square size
    label_key: str | None = None  # "cls", "json:FIELD", "none"; None: "cls" when samples have one
    val: str | None = None  # a second shard pattern for the val split
    val_fraction: float = 0.0  # else: this share of the shards (seeded choice) held out as val
    channels: int | None = None  # None: 1 when every image is grayscale, else 3
    workers: int = 8  # shards scanned at once (threads: the work waits on reads)
    digests: bool | None = None  # sha256 of each shard; None: for local shards only
    retries: int = 3
    backoff_s: float = 1.0
    storage_options: Mapping[str, Any] = field(default_factory=dict)
    name: str | None = None
    seed: int = 0
    progress: bool = True


@dataclass
class ShardScan:
    """What one pass over one shard found."""

    url: str
    count: int = 0
    bytes: int = 0
    sha256: str = ""
    exts: Counter[str] = field(default_factory=Counter)
    labels: Counter[str] = field(default_factory=Counter)
    unlabelled: int = 0
    texts: int = 0
    metas: int = 0
    no_image: int = 0
    unreadable: int = 0
    modes: Counter[str] = field(default_factory=Counter)
    sizes: Counter[tuple[int, int]] = field(default_factory=Counter)


class _Tee:
    """Counts (and optionally hashes) the bytes a reader pulls through it."""

    def __init__(self, raw: Any, digest: bool):
        self.raw, self.n = raw, 0
        self.h = hashlib.sha256() if digest else None

    def read(self, n: int = -1) -> bytes:
        data = self.raw.read(n)
        self.n += len(data)
        if self.h is not None:
            self.h.update(data)
        return data

    def drain(self) -> None:
        while self.read(1 << 20):
            pass


def scan_shard(url: str, label_key: str | None, digest: bool, opts: IndexOptions) -> ShardScan:
    """One pass over ``url``, started again from the top after a failed read (up to the retries)."""
    for attempt in range(opts.retries + 1):
        scan = ShardScan(url)
        try:
            with urls.open_stream(url, opts.storage_options) as raw:
                tee = _Tee(raw, digest)
                for sample in tar_samples(tee, url):
                    _scan_sample(scan, sample, label_key)
                tee.drain()
            scan.bytes = tee.n
            scan.sha256 = tee.h.hexdigest() if tee.h is not None else ""
            return scan
        except Exception as exc:  # noqa: BLE001 - network and tar errors come in many types
            if not urls.is_url(url) or attempt == opts.retries:
                raise DatasetError(f"cannot read shard {url}: {type(exc).__name__}: {exc}") from exc
            delay = opts.backoff_s * 2**attempt
            log.warning("reading %s failed (%s); retrying in %.1f s", url, exc, delay)
            time.sleep(delay)
    raise AssertionError("unreachable")


def _scan_sample(scan: ShardScan, sample: Mapping[str, Any], label_key: str | None) -> None:
    scan.count += 1
    try:
        key = image_key(sample)  # a pair's target (tgt.png, ...) is its image
    except KeyError:
        scan.no_image += 1
        return
    scan.exts[image_format(key)] += 1
    try:
        with Image.open(io.BytesIO(sample[key])) as im:  # the header only: no pixel decoding
            scan.sizes[im.size] += 1
            scan.modes[im.mode] += 1
    except (OSError, UnidentifiedImageError, ValueError):
        scan.unreadable += 1
    if "txt" in sample:
        scan.texts += 1
    if "json" in sample:
        scan.metas += 1
    if label_key is not None:
        try:
            label = raw_label(sample, label_key)
        except ValueError:  # a .json that does not parse (or a .cls that is not text): training skips it
            label = None
        if label is None:
            scan.unlabelled += 1
        else:
            scan.labels[label] += 1


def _integers(labels: Counter[str]) -> bool:
    return all(v.lstrip("-").isdigit() for v in labels)


def _classes(labels: Counter[str]) -> list[str]:
    """Integer labels give classes 0..max (names are the numbers); other labels are names, sorted."""
    if _integers(labels):
        top = max((int(v) for v in labels), default=-1)
        if min((int(v) for v in labels), default=0) < 0:
            raise DatasetError(f"negative class labels in the shards: {sorted(labels)[:5]}")
        return [str(i) for i in range(top + 1)]
    return sorted(labels)


def index(shards: str, out: str | Path, opts: IndexOptions) -> DatasetManifest:
    """Scan ``shards`` (and ``opts.val``) and write ``out/dataset.json`` that points at them."""
    out = Path(out).expanduser()
    train = [_absolute(u) for u in urls.expand(shards)]
    val = [_absolute(u) for u in urls.expand(opts.val)] if opts.val else []
    if not val and opts.val_fraction > 0:
        if not 0 < opts.val_fraction < 1:
            raise DatasetError(f"--val-fraction must be in (0, 1), got {opts.val_fraction}")
        k = min(len(train) - 1, max(1, round(len(train) * opts.val_fraction)))
        if k < 1:
            raise DatasetError("--val-fraction needs at least 2 shards (one stays for training)")
        held = set(random.Random(opts.seed).sample(range(len(train)), k))
        val = [u for i, u in enumerate(train) if i in held]
        train = [u for i, u in enumerate(train) if i not in held]
    # auto: scan for .cls labels; the samples decide afterwards whether there are any
    label_key = None if opts.label_key == "none" else (opts.label_key or "cls")
    if label_key is not None and label_key != "cls" and not label_key.startswith("json:"):
        raise DatasetError(f"--label-key {label_key}: use cls, json:FIELD (dotted for nested) or none")
    jobs = [("train", u) for u in train] + [("val", u) for u in val]
    scans: dict[str, ShardScan] = {}
    bar = tqdm(total=len(jobs), unit="shard", desc="index", disable=bar_disable(opts.progress))

    def run(job: tuple[str, str]) -> ShardScan:
        url = job[1]
        digest = opts.digests if opts.digests is not None else not urls.is_url(url)
        return scan_shard(url, label_key, digest, opts)

    with ThreadPoolExecutor(max(1, opts.workers)) as pool:
        for (_, url), scan in zip(jobs, pool.map(run, jobs), strict=True):
            scans[url] = scan
            bar.update(1)
    bar.close()
    if opts.label_key is None and not any(scan.labels for scan in scans.values()):
        label_key = None  # no sample has a .cls: an unlabelled set
    manifest = _manifest(out, shards, jobs, scans, label_key, opts)
    out.mkdir(parents=True, exist_ok=True)
    manifest.write()
    return manifest


def _absolute(loc: str) -> str:
    return loc if urls.is_url(loc) else str(Path(loc).resolve())


def _manifest(
    out: Path,
    source: str,
    jobs: list[tuple[str, str]],
    scans: dict[str, ShardScan],
    label_key: str | None,
    opts: IndexOptions,
) -> DatasetManifest:
    total = _sum(scans.values())
    if total.count == 0:
        raise DatasetError(f"no samples in the shards of '{source}'")
    if total.no_image == total.count:
        raise DatasetError(f"no images ({'/'.join(IMAGE_KEYS)}) in the shards of '{source}'")
    if not total.sizes:
        raise DatasetError(f"none of the {total.count} images in the shards of '{source}' could be read")
    resolution = opts.resolution or _native_resolution(total.sizes, source)
    channels = opts.channels or (1 if set(total.modes) <= {"L", "1", "I;16", "I"} else 3)
    classes = _classes(total.labels) if label_key is not None else []
    if label_key is not None and total.unlabelled:
        log.warning("%d samples have no label under '%s': training skips them", total.unlabelled, label_key)
    splits: dict[str, list[ShardInfo]] = {}
    for split, url in jobs:
        s = scans[url]
        ext = s.exts.most_common(1)[0][0] if s.exts else ""
        splits.setdefault(split, []).append(ShardInfo(url, s.count, s.sha256, s.bytes, ext))
    widths = sorted(w for (w, _), n in total.sizes.items() for _ in range(n))
    heights = sorted(h for (_, h), n in total.sizes.items() for _ in range(n))
    return DatasetManifest(
        root=out,
        name=opts.name or out.name,
        resolution=resolution,
        channels=channels,
        classes=classes,
        splits=splits,
        extra={
            "kind": "images",
            "indexed": True,
            "source": source,
            "label_key": label_key,
            # labels are names to look up in classes (not indices): see DatasetManifest.label_names
            "label_names": bool(classes) and not _integers(total.labels),
            "captions": total.texts > 0,
            "metadata": total.metas > 0,
            "label_counts": {c: total.labels.get(c, 0) for c in classes} if classes else {},
            "image_formats": dict(total.exts),
            "image_sizes": {
                "min": [widths[0], heights[0]] if widths else None,
                "median": [widths[len(widths) // 2], heights[len(heights) // 2]] if widths else None,
                "max": [widths[-1], heights[-1]] if widths else None,
            },
            "skipped": total.no_image + total.unreadable + (total.unlabelled if label_key else 0),
        },
    )


def _sum(scans: Any) -> ShardScan:
    total = ShardScan("*")
    for s in scans:
        for name in ("count", "bytes", "unlabelled", "texts", "metas", "no_image", "unreadable"):
            setattr(total, name, getattr(total, name) + getattr(s, name))
        for name in ("exts", "labels", "modes", "sizes"):
            getattr(total, name).update(getattr(s, name))
    return total


def _native_resolution(sizes: Counter[tuple[int, int]], source: str) -> int:
    if len(sizes) == 1:
        (w, h), _ = next(iter(sizes.items()))
        if w == h:
            return w
    lo, hi = min(sizes), max(sizes)
    raise DatasetError(
        f"the images in '{source}' are not all one square size ({lo[0]}x{lo[1]} to {hi[0]}x{hi[1]}): "
        f"give --resolution R (training resizes them by data.resize)"
    )
