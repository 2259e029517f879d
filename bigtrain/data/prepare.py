"""Images -> WebDataset shards: ``OUT/train-000000.tar``, ``OUT/val-000000.tar``, ``OUT/dataset.json``.

Each sample is ``<key>.<png|jpg|webp>`` (the image at the prepared resolution), ``<key>.cls`` (the
class index as text, when the source has class folders), and ``<key>.txt`` / ``<key>.json`` when
the image has a caption or metadata: plain tars that ``tar -tf`` lists and stock ``webdataset``
reads. Resizing happens once here with the same decoder the training stream uses for foreign
shards (:func:`bigtrain.data.images.decode`), so an image looks the same either way.

Why it is planned before anything is decoded: the item list, the seeded train/val permutation and
the samples of every shard are fixed first, so each shard is an independent job. That is what
makes the output byte-identical for any number of worker processes, and lets a SLURM array split
one folder across nodes (``--shard-range i/n``, then ``--merge``) with the same result as a single
run. An unreadable image only makes its own shard one smaller (tar mtimes are fixed too).

Samples with several parts (see :mod:`bigtrain.data.manifest` for the layouts): :class:`Pairs` of
folders give ``<key>.src.<fmt>`` + ``<key>.tgt.<fmt>`` samples, files matched by their path without
the suffix; :class:`Domains` give one image per sample, each folder its own seeded train/val split
and its own shards (``train-A-000000.tar``, ...), so no shard mixes domains. A built-in brings its
own layout. Every part is resized by the same rule, and both are one job's work, so the output
stays byte-identical for any number of workers.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import os
import re
import tarfile
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO

import numpy as np
from PIL import Image
from tqdm import tqdm

from bigtrain.data.builtin import load_builtin
from bigtrain.data.images import FORMATS, IMAGE_SUFFIXES, Resize, decode, encode, fit, to_pil
from bigtrain.data.manifest import MANIFEST_NAME, DatasetError, DatasetManifest, ShardInfo
from bigtrain.utils.console import bar_disable

log = logging.getLogger(__name__)

SPLITS = ("train", "val")  # job order, and so the order of dataset.json's splits
RESIZE_CHOICES = (Resize.center.value, Resize.pad.value, Resize.shorter.value)
# what an unreadable image raises (UnidentifiedImageError and truncated files are OSErrors; a bad
# caption's UnicodeDecodeError and bad metadata's JSONDecodeError are ValueErrors)
_UNREADABLE = (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError)
_PART_RE = re.compile(r"dataset\.part-(\d+)-of-(\d+)\.json")
# train-000000.tar, or a domain's train-A-000000.tar
_SHARD_RE = re.compile(r"(train|val)-(?:([A-Za-z][A-Za-z0-9_]*)-)?(\d+)\.tar")
DOMAIN_NAMES = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"  # --domains folders are domains A, B, ... in order


@dataclass(frozen=True)
class Pairs:
    """``--pairs SRC_DIR TGT_DIR``: sources (what a model is given) and targets (what it should
    make), matched by path without suffix; class folders of the targets give labels."""

    sources: str
    targets: str


@dataclass(frozen=True)
class Domains:
    """``--domains A_DIR B_DIR``: unpaired sets, each folder one domain (flat or class folders)."""

    folders: tuple[str, ...]


Input = str | Pairs | Domains  # an image folder or builtin:NAME, or folders of a multi-part layout


@dataclass
class PrepareOptions:
    resolution: int | None = None  # None: keep the source size (built-ins) / required for folders
    val_fraction: float = 0.1
    samples_per_shard: int = 1000
    channels: int | None = None  # None: 1 for grayscale built-ins, 3 for folders
    seed: int = 0
    progress: bool = True
    workers: int = 1  # processes; 0: one per CPU this process may use. The output does not depend on it
    format: str = "png"  # png | jpg | webp
    quality: int = 95  # jpg and webp
    resize: str = "center"  # center | pad | shorter (see bigtrain.data.images.Resize)
    shard_range: tuple[int, int] | None = None  # (i, n): write only shard jobs j with j % n == i
    captions: str | None = None  # a folder mirroring SRC with .txt files, or a .jsonl/.csv/.tsv file


@dataclass(frozen=True, slots=True)  # slots: a million of them for an ImageNet-sized folder
class Sample:
    """One planned sample: everything needed to write it, decided before any image is decoded."""

    key: str
    name: str  # for logs: the path relative to SRC (a pair: both parts'), or ``#i`` for a built-in
    image: str | np.ndarray  # a file path, or a built-in's pixels (a pair: the target)
    label: int | None  # None: unlabelled source
    caption: str | None = None  # from --captions FILE
    caption_file: str | None = None  # a sidecar .txt or a --captions folder's file (read by the job)
    meta_file: str | None = None  # a sidecar .json (read by the job)
    source: str | np.ndarray | None = None  # a pair's source image: a file path or pixels
    domain: str = ""  # layout "domains": the sample's domain

    @property
    def has_caption(self) -> bool:
        return self.caption is not None or self.caption_file is not None


@dataclass(frozen=True)
class ShardJob:
    """One shard to write: its place in the plan and its samples, in order."""

    index: int  # global job number: train shards first, then val (domain by domain within a split)
    split: str
    file: str
    samples: tuple[Sample, ...]
    domain: str = ""


@dataclass(frozen=True)
class Encoding:
    """How every image of a run is turned into sample bytes (the same for every job)."""

    resolution: int
    channels: int
    resize: str
    format: str
    quality: int


@dataclass
class ShardResult:
    index: int
    split: str
    shard: ShardInfo | None  # None: every image of the shard was unreadable (no file is left)
    skipped: list[str] = field(default_factory=list)  # "name (Error: message)"


@dataclass
class Source:
    """The listed input: the samples in key order and the dataset's shape."""

    name: str
    classes: list[str]
    samples: list[Sample]
    resolution: int
    channels: int
    layout: str = "images"
    domains: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)  # a built-in's own dataset.json entries


# ---------------------------------------------------------------------------------------- listing


def _is_hidden(rel: Path) -> bool:
    # ".DS_Store", macOS "._photo.jpg" resource forks, ".git": never images of the dataset
    return any(part.startswith(".") for part in rel.parts)


def _list_files(root: Path) -> list[Path]:
    """Every visible file under ``root``, relative to it, sorted by path components."""
    return sorted(
        p.relative_to(root) for p in root.rglob("*") if p.is_file() and not _is_hidden(p.relative_to(root))
    )


CaptionLookup = Callable[[str], tuple[str | None, str | None]]  # rel path -> (caption, caption file)


def _caption_table(path: Path) -> dict[str, str]:
    """A .jsonl ({"file", "caption"} per line) or .csv/.tsv (path, caption) file as {rel path: caption}."""
    table: dict[str, str] = {}
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                table[_norm_rel(str(row["file"]))] = str(row["caption"]).strip()
            except (ValueError, KeyError, TypeError) as exc:
                raise DatasetError(
                    f'{path}:{n}: expected {{"file": ..., "caption": ...}} ({type(exc).__name__}: {exc})'
                ) from exc
        return table
    if suffix not in (".csv", ".tsv"):
        raise DatasetError(f"--captions {path}: expected a folder, a .jsonl, .csv or .tsv file")
    with path.open(newline="", encoding="utf-8") as f:
        for n, row in enumerate(csv.reader(f, delimiter="\t" if suffix == ".tsv" else ","), 1):
            if not row or (n == 1 and row[0].strip().lower() in ("file", "path", "filename", "image")):
                continue  # blank lines, and a header row
            if len(row) != 2:
                raise DatasetError(f"{path}:{n}: expected 2 columns (path, caption), got {len(row)}")
            table[_norm_rel(row[0])] = row[1].strip()
    return table


def _norm_rel(rel: str) -> str:
    return PurePosixPath(rel.strip().replace("\\", "/")).as_posix().removeprefix("./")


def _caption_lookup(spec: str, rels: list[str]) -> CaptionLookup:
    """``--captions``: a folder mirroring SRC (``a/b.jpg`` -> ``CAPTIONS/a/b.txt``) or a table."""
    path = Path(spec).expanduser()
    if path.is_dir():
        return lambda rel: (None, _existing(path / PurePosixPath(rel).with_suffix(".txt")))
    if not path.is_file():
        raise DatasetError(f"--captions {path}: no such folder or file")
    table = _caption_table(path)
    unknown = sorted(set(table) - set(rels))
    if unknown:
        log.warning("%d captions in %s name no image of the source (e.g. %s)", len(unknown), path, unknown[0])
    return lambda rel: (table.get(rel), None)


def _existing(path: Path) -> str | None:
    return str(path) if path.is_file() else None


@dataclass
class _Folder:
    """A listed image folder: its class folders (empty: unlabelled), images and every file."""

    root: Path
    classes: list[str]
    images: list[Path]  # relative to root, sorted
    present: set[Path]

    def label(self, image: Path, index: dict[str, int]) -> int | None:
        return index[image.parts[0]] if self.classes else None


def _folder_root(src: str, opts: PrepareOptions) -> Path:
    root = Path(src).expanduser()
    if not root.is_dir():
        raise DatasetError(f"source folder not found: {root}")
    if opts.resolution is None:
        raise ValueError("--resolution is required when preparing an image folder")
    return root


def _list_folder(root: Path) -> _Folder:
    """SRC/<class>/**/<image> (labelled), or images directly in SRC (unlabelled)."""
    files = _list_files(root)
    classes = sorted({f.parts[0] for f in files if len(f.parts) > 1})
    # with class folders, images are theirs (loose top-level files are ignored, as before); without, the
    # top level is one unlabelled set
    images = [f for f in files if f.suffix.lower() in IMAGE_SUFFIXES and (len(f.parts) > 1) == bool(classes)]
    if not images:
        raise DatasetError(f"no image files under {root}")
    return _Folder(root, classes, images, set(files))


def _folder_samples(
    folder: _Folder,
    images: list[Path],
    index: dict[str, int],
    captions: CaptionLookup | None,
    first_key: int = 0,
    sources: list[Path] | None = None,
    source_root: Path | None = None,
    domain: str = "",
) -> list[Sample]:
    """The samples of ``images`` (files of ``folder``), keyed from ``first_key`` on, with their
    labels, captions and metadata; a pair's source file from ``sources`` (under ``source_root``)."""
    root, samples = folder.root, []
    for i, f in enumerate(images):
        rel = f.as_posix()
        if captions is not None:
            caption, caption_file = captions(rel)
        else:
            caption, caption_file = None, _sidecar(root, f, ".txt", folder.present)
        source = sources[i] if sources is not None else None
        samples.append(
            Sample(
                key=f"{first_key + i:08d}",
                name=rel if source is None else f"{rel} (source {source.as_posix()})",
                image=str(root / f),
                label=folder.label(f, index),
                caption=caption,
                caption_file=caption_file,
                meta_file=_sidecar(root, f, ".json", folder.present),
                source=str(source_root / source) if source is not None and source_root else None,
                domain=domain,
            )
        )
    return samples


def _warn_uncaptioned(samples: list[Sample], opts: PrepareOptions) -> None:
    missing = sum(not s.has_caption for s in samples)
    if opts.captions and missing:
        log.warning("%d of %d images have no caption in %s", missing, len(samples), opts.captions)


def _folder_source(src: str, opts: PrepareOptions) -> Source:
    """SRC/<class>/**/<image> (labelled), or images directly in SRC (unlabelled)."""
    folder = _list_folder(_folder_root(src, opts))
    rels = [f.as_posix() for f in folder.images]
    captions = _caption_lookup(opts.captions, rels) if opts.captions else None
    index = {c: i for i, c in enumerate(folder.classes)}
    samples = _folder_samples(folder, folder.images, index, captions)
    _warn_uncaptioned(samples, opts)
    assert opts.resolution is not None  # _folder_root checked it
    return Source(folder.root.name, folder.classes, samples, opts.resolution, opts.channels or 3)


def _by_stem(root: Path, images: list[Path]) -> dict[str, Path]:
    """``images`` by their path without suffix (``a/b.png`` -> ``a/b``), in their order."""
    stems: dict[str, Path] = {}
    for f in images:
        stem = f.with_suffix("").as_posix()
        if stem in stems:
            raise DatasetError(
                f"{root} holds two images named {stem} ({stems[stem].as_posix()}, {f.as_posix()}): "
                "pairs are matched by path without suffix"
            )
        stems[stem] = f
    return stems


def _pairs_source(pairs: Pairs, opts: PrepareOptions) -> Source:
    """Targets listed as a normal folder (class folders give labels, sidecars captions), each
    paired with the file of ``pairs.sources`` at the same path without suffix (a/b.png with
    a/b.jpg). Files of either side without a partner are left out with one warning."""
    src_root, tgt_root = _folder_root(pairs.sources, opts), _folder_root(pairs.targets, opts)
    if src_root.resolve() == tgt_root.resolve():
        raise DatasetError(f"--pairs: the source and target folders are the same ({src_root})")
    folder = _list_folder(tgt_root)
    targets = _by_stem(tgt_root, folder.images)
    sources = _by_stem(src_root, [f for f in _list_files(src_root) if f.suffix.lower() in IMAGE_SUFFIXES])
    stems = [k for k in targets if k in sources]
    if not stems:
        raise DatasetError(
            f"--pairs: no image of {tgt_root} has a source of the same path without suffix in {src_root} "
            f"(e.g. {next(iter(targets.values())).as_posix()} has none)"
        )
    lonely_t = [targets[k].as_posix() for k in targets if k not in sources]
    lonely_s = [sources[k].as_posix() for k in sources if k not in targets]
    if lonely_t or lonely_s:
        example = lonely_t[0] if lonely_t else f"source {lonely_s[0]}"
        log.warning(
            "--pairs: %d of %d targets have no source and %d of %d sources no target; left out (e.g. %s)",
            len(lonely_t), len(targets), len(lonely_s), len(sources), example,
        )  # fmt: skip
    images = [targets[k] for k in stems]
    captions = _caption_lookup(opts.captions, [f.as_posix() for f in images]) if opts.captions else None
    index = {c: i for i, c in enumerate(folder.classes)}
    samples = _folder_samples(
        folder, images, index, captions, sources=[sources[k] for k in stems], source_root=src_root
    )
    _warn_uncaptioned(samples, opts)
    assert opts.resolution is not None
    return Source(tgt_root.name, folder.classes, samples, opts.resolution, opts.channels or 3, layout="pairs")


def _domains_source(domains: Domains, opts: PrepareOptions) -> Source:
    """Each folder a domain (A, B, ...), listed as a normal folder; labels index the union of their
    class folders. Keys run on across domains, so every sample's key is unique in the dataset."""
    if not 2 <= len(domains.folders) <= len(DOMAIN_NAMES):
        raise ValueError(f"--domains needs 2 to {len(DOMAIN_NAMES)} folders, got {len(domains.folders)}")
    if opts.captions:
        raise DatasetError(
            "--captions cannot tell the domains' files apart (their paths may repeat): use sidecar .txt files"
        )
    folders = [_list_folder(_folder_root(src, opts)) for src in domains.folders]
    if len({bool(f.classes) for f in folders}) > 1:
        flat = next(f.root for f in folders if not f.classes)
        raise DatasetError(
            f"--domains: {flat} has no class folders but another domain has: use both or neither"
        )
    classes = sorted({c for f in folders for c in f.classes})
    index = {c: i for i, c in enumerate(classes)}
    samples: list[Sample] = []
    for name, folder in zip(DOMAIN_NAMES, folders, strict=False):
        samples += _folder_samples(folder, folder.images, index, None, first_key=len(samples), domain=name)
    names = list(DOMAIN_NAMES[: len(folders)])
    assert opts.resolution is not None
    title = "+".join(f.root.name for f in folders)
    return Source(
        title, classes, samples, opts.resolution, opts.channels or 3, layout="domains", domains=names
    )


def _sidecar(root: Path, image: Path, suffix: str, present: set[Path]) -> str | None:
    side = image.with_suffix(suffix)
    return str(root / side) if side in present else None


def _builtin_source(src: str, opts: PrepareOptions) -> Source:
    if opts.captions:
        raise DatasetError("--captions needs an image folder as SRC, not a built-in dataset")
    name = src.split(":", 1)[1]
    ds = load_builtin(name)
    samples = [
        Sample(
            key=f"{i:08d}",
            name=f"#{i}",
            image=ds.images[i],
            label=int(ds.labels[i]),
            caption=ds.captions[i] if ds.captions else None,
            source=ds.sources[i] if ds.sources is not None else None,
            domain=ds.domains[i] if ds.domains else "",
        )
        for i in range(len(ds))
    ]
    channels = opts.channels or (1 if ds.images.ndim == 3 else 3)
    domains = list(dict.fromkeys(ds.domains))
    res = opts.resolution or int(ds.images.shape[1])
    return Source(name, list(ds.classes), samples, res, channels, ds.layout, domains, dict(ds.extra))


def list_source(src: Input, opts: PrepareOptions) -> Source:
    """The samples of ``src`` (a folder or ``builtin:NAME``, or :class:`Pairs` / :class:`Domains` of
    folders) in key order."""
    if isinstance(src, Pairs):
        return _pairs_source(src, opts)
    if isinstance(src, Domains):
        return _domains_source(src, opts)
    return _builtin_source(src, opts) if src.startswith("builtin:") else _folder_source(src, opts)


# --------------------------------------------------------------------------------------- planning


def plan_shards(samples: list[Sample], opts: PrepareOptions) -> list[ShardJob]:
    """Every shard of the run: a seeded permutation, the first ``round(n * val_fraction)`` of it is
    'val', and each split is cut in that order into consecutive chunks of ``samples_per_shard``.
    With domains, each domain's samples get that treatment on their own (the same seed, their own
    count), and its shards its name (``train-A-000000.tar``): a shard never mixes domains."""
    groups: dict[str, list[Sample]] = {}
    for s in samples:
        groups.setdefault(s.domain, []).append(s)
    by_split: dict[str, list[tuple[str, list[Sample]]]] = {split: [] for split in SPLITS}
    for domain, members in groups.items():
        order = np.random.default_rng(opts.seed).permutation(len(members)).tolist()
        n_val = int(round(len(members) * opts.val_fraction))
        by_split["train"].append((domain, [members[i] for i in order[n_val:]]))
        by_split["val"].append((domain, [members[i] for i in order[:n_val]]))
    per = opts.samples_per_shard
    jobs: list[ShardJob] = []
    for split in SPLITS:
        for domain, chosen in by_split[split]:
            prefix = f"{split}-{domain}" if domain else split
            for c, start in enumerate(range(0, len(chosen), per)):
                chunk = tuple(chosen[start : start + per])
                jobs.append(ShardJob(len(jobs), split, f"{prefix}-{c:06d}.tar", chunk, domain))
    return jobs


def plan_digest(jobs: list[ShardJob]) -> str:
    """A digest of the plan (which source file goes where, with which label and caption): parts of
    one SLURM array must agree on it, or the source changed between their runs."""
    h = hashlib.sha256()
    for job in jobs:
        h.update(job.file.encode())
        for s in job.samples:
            row = [s.key, s.name, s.label, s.caption, s.caption_file is not None, s.meta_file is not None]
            # a pair's source is in its name; a domain in the shard's, and named here too
            row += [s.domain] if s.domain else []
            h.update(json.dumps(row).encode())
    return h.hexdigest()


# ---------------------------------------------------------------------------------------- writing


class _HashingFile:
    """A write-only file that hashes and counts the bytes through it: the shard's checksum and size
    come from the single write, without reading the shard back."""

    def __init__(self, f: BinaryIO) -> None:
        self._f = f
        self.sha256 = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self._f.write(data)
        self.sha256.update(data)
        self.size += len(data)
        return len(data)


def _add_sample(tar: tarfile.TarFile, key: str, members: dict[str, bytes]) -> None:
    """``key.ext`` members in sorted extension order, with the header fields webdataset's TarWriter
    uses (mode 0444, owner bigdata, mtime 0), so shards stay byte-identical to earlier ones; an int
    mtime, because a float one makes tarfile add a PAX header to every member."""
    for ext in sorted(members):
        data = members[ext]
        info = tarfile.TarInfo(f"{key}.{ext}")
        info.size, info.mtime, info.mode = len(data), 0, 0o444
        info.uname = info.gname = "bigdata"
        tar.addfile(info, io.BytesIO(data))


def _image(image: str | np.ndarray, enc: Encoding) -> Image.Image:
    if isinstance(image, np.ndarray):
        return fit(to_pil(image, enc.channels), enc.resolution, enc.resize)
    arr = decode(Path(image).read_bytes(), enc.channels, enc.resolution, enc.resize)
    return Image.fromarray(arr[:, :, 0] if arr.shape[2] == 1 else arr)


def _encoded(image: str | np.ndarray, enc: Encoding) -> bytes:
    return encode(_image(image, enc), enc.format, enc.quality)


def _members(s: Sample, enc: Encoding) -> dict[str, bytes]:
    """The sample's tar members; raises one of ``_UNREADABLE`` if an image, its caption or
    metadata is bad (a pair's source or target: the whole pair)."""
    if s.source is None:
        members = {enc.format: _encoded(s.image, enc)}
    else:
        members = {f"src.{enc.format}": _encoded(s.source, enc), f"tgt.{enc.format}": _encoded(s.image, enc)}
    if s.label is not None:
        members["cls"] = str(s.label).encode()
    if s.caption is not None:
        members["txt"] = s.caption.encode("utf-8")
    elif s.caption_file is not None:
        # decoded to check it is text; a text file's final newline is not part of the caption
        members["txt"] = Path(s.caption_file).read_bytes().decode("utf-8").strip().encode("utf-8")
    if s.meta_file is not None:
        raw = Path(s.meta_file).read_bytes()
        json.loads(raw)  # a sample with broken metadata would fail later, at train time
        members["json"] = raw
    return members


def write_shard(
    job: ShardJob, enc: Encoding, out: str, tick: Callable[[], object] | None = None
) -> ShardResult:
    """Write one shard (to a temporary name, renamed when complete, so an interrupted run never
    leaves a truncated shard under a final name). Runs in a worker process."""
    path = Path(out) / job.file
    tmp = path.with_name(path.name + ".tmp")
    skipped, count = [], 0
    with tmp.open("wb") as f:
        sink = _HashingFile(f)
        with tarfile.open(fileobj=sink, mode="w|") as tar:  # type: ignore[call-overload]
            for s in job.samples:
                try:
                    members = _members(s, enc)
                except _UNREADABLE as exc:
                    skipped.append(f"{s.name} ({type(exc).__name__}: {exc})")
                else:
                    _add_sample(tar, s.key, members)
                    count += 1
                if tick is not None:
                    tick()
    if count == 0:
        tmp.unlink()
        path.unlink(missing_ok=True)
        return ShardResult(job.index, job.split, None, skipped)
    tmp.replace(path)
    return ShardResult(
        job.index,
        job.split,
        ShardInfo(job.file, count, sink.sha256.hexdigest(), sink.size, enc.format, job.domain),
        skipped,
    )


def _worker_count(workers: int) -> int:
    # sched_getaffinity: the CPUs this process may use (a SLURM allocation), not all of the node's
    return workers if workers > 0 else len(os.sched_getaffinity(0))


def run_jobs(
    jobs: list[ShardJob], enc: Encoding, out: Path, workers: int, progress: bool, desc: str
) -> list[ShardResult]:
    """Write ``jobs`` in this process (``workers`` 1) or in a pool; results in job order."""
    total = sum(len(j.samples) for j in jobs)
    with tqdm(total=total, desc=desc, unit="img", disable=bar_disable(progress)) as bar:
        if workers <= 1 or len(jobs) <= 1:
            return [write_shard(j, enc, str(out), lambda: bar.update(1)) for j in jobs]
        # spawn, not fork: the parent may hold threads (a test process with torch loaded, tqdm's
        # monitor), and a worker only needs this module (numpy and PIL, no torch)
        pool = ProcessPoolExecutor(min(workers, len(jobs)), mp_context=get_context("spawn"))
        try:
            futures: dict[Future[ShardResult], ShardJob] = {
                pool.submit(write_shard, j, enc, str(out)): j for j in jobs
            }
            results = []
            for fut in as_completed(futures):
                results.append(fut.result())
                bar.update(len(futures[fut].samples))
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)  # stop at once, not after every queued shard
            raise
        pool.shutdown()
    return sorted(results, key=lambda r: r.index)


# -------------------------------------------------------------------------------------- manifests


def _part_name(i: int, n: int) -> str:
    return f"dataset.part-{i}-of-{n}.json"


def _splits(results: Iterable[ShardResult]) -> dict[str, list[ShardInfo]]:
    splits: dict[str, list[ShardInfo]] = {}
    for r in results:
        if r.shard is not None:
            splits.setdefault(r.split, []).append(r.shard)
    return splits


def _write_json(path: Path, data: dict[str, Any]) -> None:
    """As :meth:`DatasetManifest.write` formats it, atomically."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    tmp.replace(path)


def _check_options(opts: PrepareOptions) -> None:
    if not 0.0 <= opts.val_fraction < 1.0:
        raise ValueError(f"val fraction must be in [0, 1), got {opts.val_fraction}")
    if opts.samples_per_shard < 1:
        raise ValueError("samples per shard must be >= 1")
    if opts.format not in FORMATS:
        raise ValueError(f"unknown image format '{opts.format}' (choose {', '.join(FORMATS)})")
    if not 1 <= opts.quality <= 100:
        raise ValueError(f"quality must be in 1..100, got {opts.quality}")
    if opts.resize not in RESIZE_CHOICES:
        raise ValueError(f"unknown resize '{opts.resize}' (choose {', '.join(RESIZE_CHOICES)})")
    if opts.workers < 0:
        raise ValueError(f"workers must be >= 0 (0: one per CPU), got {opts.workers}")
    if opts.shard_range is not None and not 0 <= opts.shard_range[0] < opts.shard_range[1]:
        raise ValueError(f"shard range must be i/n with 0 <= i < n, got {opts.shard_range}")


def _clear_stale(out: Path, shard_range: tuple[int, int] | None) -> None:
    """A whole run replaces every shard and part file; a part run only drops dataset.json (it will
    be stale until the merge) and part files of an array of another size."""
    if shard_range is None:
        stale = [*out.glob("train-*.tar"), *out.glob("val-*.tar"), *out.glob("dataset.part-*-of-*.json")]
    else:
        stale = [out / MANIFEST_NAME]
        for p in out.glob("dataset.part-*-of-*.json"):
            m = _PART_RE.fullmatch(p.name)
            if m and int(m.group(2)) != shard_range[1]:
                log.info("removing %s: a part of an array of another size", p.name)
                stale.append(p)
    for p in stale:
        p.unlink(missing_ok=True)


def _origin(src: Input) -> str | list[str]:
    """``src`` as ``dataset.json`` records it (``source``): the folder or built-in, or the folders."""
    if isinstance(src, Pairs):
        return [src.sources, src.targets]
    return list(src.folders) if isinstance(src, Domains) else src


def _layout_extra(source: Source) -> dict[str, Any]:
    """dataset.json entries of a multi-part layout, and a built-in's own (none for plain images)."""
    extra: dict[str, Any] = {}
    if source.layout != "images":
        extra["layout"] = source.layout
    if source.layout == "pairs":
        extra["source_channels"] = source.channels  # both parts are converted alike
    if source.layout == "domains":
        extra["domains"] = source.domains
    return {**extra, **source.extra}


def prepare(src: Input, out: str | Path, opts: PrepareOptions) -> DatasetManifest:
    """Write shards for ``src`` (an image folder or ``builtin:NAME``, or :class:`Pairs` or
    :class:`Domains` of folders) into ``out``; returns the manifest (with ``opts.shard_range``: the
    manifest of this part, written as ``dataset.part-i-of-n.json``)."""
    out = Path(out).expanduser()
    _check_options(opts)
    source = list_source(src, opts)
    jobs = plan_shards(source.samples, opts)
    enc = Encoding(source.resolution, source.channels, opts.resize, opts.format, opts.quality)
    desc = f"prepare {source.name}"
    if opts.shard_range is not None:
        i, n = opts.shard_range
        desc += f" {i}/{n}"
        mine = [j for j in jobs if j.index % n == i]
    else:
        mine = jobs
    out.mkdir(parents=True, exist_ok=True)
    _clear_stale(out, opts.shard_range)
    results = run_jobs(mine, enc, out, _worker_count(opts.workers), opts.progress, desc)
    skipped = [name for r in results for name in r.skipped]
    for name in skipped:
        log.warning("skipped unreadable image %s", name)
    extra: dict[str, Any] = {
        "source": _origin(src),
        "skipped": len(skipped),
        "seed": opts.seed,
        "val_fraction": opts.val_fraction,
        "label_key": "cls" if source.classes else None,
        "captions": any(s.has_caption for s in source.samples),
        "metadata": any(s.meta_file is not None for s in source.samples),
        "resize": opts.resize,
        "format": opts.format,
        "quality": opts.quality if opts.format != "png" else None,
        "samples_per_shard": opts.samples_per_shard,
        **_layout_extra(source),
    }
    splits = _splits(results)
    manifest = DatasetManifest(
        out, source.name, source.resolution, source.channels, source.classes, splits, extra
    )
    if opts.shard_range is None:
        manifest.write()
        log.info("wrote %s: %s", out, {k: manifest.count(k) for k in splits})
    else:
        i, n = opts.shard_range
        manifest.extra["shard_range"] = {"index": i, "count": n, "plan": plan_digest(jobs)}
        _write_json(out / _part_name(i, n), manifest.to_json())
        log.info("wrote part %d/%d of %s: %s", i, n, out, {k: manifest.count(k) for k in splits})
    return manifest


# ------------------------------------------------------------------------------------------ merge

# what may differ between the parts of one array: their own shards, skips and index
_PER_PART = ("splits", "skipped", "shard_range")
# the manifest's own fields (the rest of a manifest's JSON is ``extra``)
_KNOWN = {"version", "name", "resolution", "channels", "classes", "num_classes", "splits"}


def _load_parts(out: Path) -> list[dict[str, Any]]:
    """Every part file of ``out``, checked complete (0..n-1 of one n), in part order."""
    found: dict[int, set[int]] = {}
    for p in out.glob("dataset.part-*-of-*.json"):
        m = _PART_RE.fullmatch(p.name)
        if m:
            found.setdefault(int(m.group(2)), set()).add(int(m.group(1)))
    if not found:
        raise DatasetError(
            f"no dataset.part-*-of-*.json in {out} "
            f"(write them with: bigtrain prepare SRC {out} --shard-range i/n)"
        )
    if len(found) > 1:
        sizes = ", ".join(f"of {n}" for n in sorted(found))
        raise DatasetError(f"{out} holds parts of arrays of different sizes ({sizes}); delete the stale ones")
    n, have = next(iter(found.items()))
    missing = sorted(set(range(n)) - have)
    if missing:
        names = ", ".join(f"{i}/{n}" for i in missing)
        raise DatasetError(
            f"missing part(s) {names} in {out} "
            f"(run: bigtrain prepare SRC {out} --shard-range {missing[0]}/{n})"
        )
    parts = []
    for i in range(n):
        path = out / _part_name(i, n)
        try:
            parts.append(json.loads(path.read_text()))
        except ValueError as exc:
            raise DatasetError(f"unreadable {path}: {exc}") from exc
    return parts


def _settings(part: dict[str, Any]) -> dict[str, Any]:
    rng = {k: v for k, v in part.get("shard_range", {}).items() if k != "index"}
    return {**{k: v for k, v in part.items() if k not in _PER_PART}, "shard_range": rng}


def _check_same_settings(parts: list[dict[str, Any]], out: Path) -> None:
    first = _settings(parts[0])
    n = len(parts)
    for i, part in enumerate(parts[1:], 1):
        other = _settings(part)
        diff = sorted(k for k in first.keys() | other.keys() if first.get(k) != other.get(k))
        if not diff:
            continue
        if diff == ["shard_range"]:
            what = "a different source listing (images added, removed or renamed between the runs?)"
        else:
            shown = [k for k in diff if k != "shard_range"]
            what = "different settings: " + "; ".join(
                f"{k} {_short(other.get(k))} vs {_short(first.get(k))} in part 0/{n}" for k in shown
            )
        raise DatasetError(f"part {i}/{n} in {out} was written with {what}")


def _short(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _shard_order(split: str, shard: ShardInfo, domains: list[str]) -> tuple[int, int, int]:
    """A single run's order: split, then domain (as dataset.json lists them), then shard number."""
    m = _SHARD_RE.fullmatch(shard.file)
    domain = domains.index(shard.domain) if shard.domain in domains else -1
    return (SPLITS.index(split), domain, int(m.group(3)) if m else 0)


def _part_shards(parts: list[dict[str, Any]], out: Path) -> dict[str, list[ShardInfo]]:
    """The parts' shards by split, in a single run's order; each must exist with its recorded size."""
    domains = [str(d) for d in parts[0].get("domains", [])]
    shards: list[tuple[str, ShardInfo]] = []
    for i, part in enumerate(parts):
        for split, entry in part["splits"].items():
            for s in entry["shards"]:
                info = ShardInfo(**s)
                path = out / info.file
                if not path.is_file() or path.stat().st_size != info.bytes:
                    raise DatasetError(
                        f"shard {path} of part {i}/{len(parts)} is missing or has another size"
                    )
                shards.append((split, info))
    splits: dict[str, list[ShardInfo]] = {}
    for split, info in sorted(shards, key=lambda t: _shard_order(t[0], t[1], domains)):
        splits.setdefault(split, []).append(info)
    return splits


def merge(out: str | Path) -> DatasetManifest:
    """Join the parts of a ``--shard-range`` array into ``out/dataset.json`` (byte-identical to a
    single run's), after checking all are present, agree on their settings and their shards exist;
    then remove the part files, and shards no part lists (a larger earlier run's), as a single run
    would have at its start."""
    out = Path(out).expanduser()
    if not out.is_dir():
        raise DatasetError(f"dataset folder not found: {out}")
    parts = _load_parts(out)
    _check_same_settings(parts, out)
    splits = _part_shards(parts, out)
    first = parts[0]
    extra = {k: v for k, v in first.items() if k not in _KNOWN and k != "shard_range"}
    extra["skipped"] = sum(int(p.get("skipped", 0)) for p in parts)
    manifest = DatasetManifest(
        out, str(first["name"]), int(first["resolution"]), int(first["channels"]), list(first["classes"]),
        splits, extra,
    )  # fmt: skip
    manifest.write()
    listed = {s.file for v in splits.values() for s in v}
    for p in [*out.glob("train-*.tar"), *out.glob("val-*.tar")]:
        if p.name not in listed:
            p.unlink()
    for i in range(len(parts)):
        (out / _part_name(i, len(parts))).unlink()
    log.info(
        "merged %d parts into %s: %s", len(parts), out / MANIFEST_NAME, {k: manifest.count(k) for k in splits}
    )
    return manifest
