"""The training stream: WebDataset shards -> shuffled, decoded batches in [-1, 1], with a resumable position.

Why it is built this way:

* Every (rank, worker) pair is a *slot* that reads its own, disjoint part of the data: whole shards
  when there are at least as many shards as slots, else every n-th sample of every shard (so a
  small dataset still splits evenly). WebDataset's default node splitter is not used: it raises
  under ``WORLD_SIZE > 1``.
* Each slot loops over epochs forever. Shard order and the sample shuffle buffer are seeded from
  ``(seed, epoch, slot)``, so the stream is a pure function of those numbers. Ranks never run out
  of batches at different times (which would hang a collective).
* A slot's position is ``(epoch, cursor)``: how many shuffled raw samples it has pulled in this
  epoch. Every batch carries its slot's position after it was filled; the main process keeps the
  position of the last batch *consumed by training*. Resuming rebuilds the same shuffle and drops
  ``cursor`` raw samples before decoding, so the resumed run sees exactly the samples the
  uninterrupted run would have seen.
* A DataLoader visits its workers round-robin starting from worker 0. After ``n`` consumed batches
  the next batch belongs to worker ``n % W``, so on resume physical worker ``p`` plays logical
  worker ``(p + n) % W``.
* A sample that does not decode is skipped and counted (the count travels with the position and is
  logged as a metric); flips are decided by hashing (seed, epoch, slot, cursor), stateless.
* A paired sample (``layout="pairs"``: ``src.*`` + ``tgt.*``) is one raw sample: its source and
  target get the same crop offset and the same flip, so they stay pixel-aligned, and the position
  protocol does not change. A dataset of ``domains`` is streamed one domain at a time (one stream
  per domain's shards).
"""

from __future__ import annotations

import hashlib
import io
import itertools
import json
import logging
import random
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch
from PIL import UnidentifiedImageError
from torch.utils.data import DataLoader, IterableDataset, get_worker_info
from webdataset.filters import _shuffle

from bigtrain.data.device_decode import JPEG_KEYS, decode_batch, device_ready
from bigtrain.data.images import decode, image_format, image_key, source_key, unit_hash
from bigtrain.data.manifest import DatasetError
from bigtrain.data.read import ReadPolicy, ShardReadError, decode_text, label_index, read_shards

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StreamSpec:
    """Everything that determines the stream's content (and so must match across a resume)."""

    shards: tuple[str, ...]
    batch_size: int
    resolution: int
    channels: int
    seed: int = 0
    rank: int = 0
    world_size: int = 1
    num_workers: int = 0
    shuffle_buffer: int = 1000
    flip: bool = False
    # "images": PNG samples -> "image" float [B, C, H, W]; "tokens": token shards written by
    # `bigtrain tokenize` -> "tokens" long [B, h * w] (raster order), no flips
    kind: str = "images"
    # how images above ``resolution`` are shrunk: "lanczos" (as `bigtrain prepare`) or "box" (ProGAN's
    # 2x2 means, for the lower stages of a progressive run)
    downsample: str = "lanczos"
    # how a non-square or other-sized image becomes resolution x resolution (bigtrain.data.images.Resize)
    resize: str = "center"
    # where labels are: "cls", "json:FIELD", or None (all 0); ``classes`` maps name labels to indices
    label_key: str | None = "cls"
    classes: tuple[str, ...] = ()
    text: bool = False  # batch["text"]: the samples' .txt captions
    meta: bool = False  # batch["meta"]: the samples' parsed .json
    # remote shards: retries with backoff, then counted and skipped, up to max_shard_errors per slot
    # and epoch; one more stops the run naming the shard
    retries: int = 3
    backoff_s: float = 1.0
    max_shard_errors: int = 10
    storage_options: tuple[tuple[str, Any], ...] = ()
    # each shard's sample count from dataset.json, in ``shards`` order (empty: unknown): a shard
    # that ends early is a failed read, not a silent end
    shard_counts: tuple[int, ...] = ()
    # "cpu": workers decode; "gpu": workers pass JPEG bytes, DataStream decodes them on its device
    # (bigtrain.data.device_decode)
    decode: str = "cpu"
    # "images": one image per sample -> batch["image"]; "pairs": src.* and tgt.* -> batch["source"]
    # and batch["image"] (the target), cropped and flipped alike
    layout: str = "images"
    source_channels: int | None = None  # pairs: the sources' channels (None: ``channels``)
    # token shards of pairs (`bigtrain tokenize` of a paired set): each sample's condition codes,
    # ``cond.npy`` -> batch["cond"] long [B, h * w]
    cond_tokens: bool = False

    def __post_init__(self) -> None:
        if self.layout == "domains":
            raise ValueError(
                "a 'domains' dataset is streamed one domain at a time: give one domain's shards "
                "(DatasetManifest.shard_paths(split, domain)) with layout 'images'"
            )
        if self.layout not in ("images", "pairs"):
            raise ValueError(f"unknown stream layout '{self.layout}' (choose images or pairs)")
        if self.layout == "pairs" and self.kind != "images":
            raise ValueError(f"paired samples are images, not {self.kind}")
        if self.layout == "pairs" and self.decode == "gpu":
            raise ValueError("data.decode=gpu does not support paired samples yet; use data.decode=cpu")


@dataclass(frozen=True)
class _Deferred:
    """An image left for the training device to decode (``data.decode=gpu``): JPEG bytes, or other
    formats' pixels at their stored size, with the sample's crop offset and flip."""

    data: np.ndarray
    jpeg: bool
    u: float
    flip: bool


@dataclass
class SlotPosition:
    epoch: int = 0
    cursor: int = 0
    skipped: int = 0  # samples that did not decode
    shard_errors: int = 0  # shard reads that failed (missing, truncated, unreadable tar)
    # this epoch's failed shards so far, as (index in StreamSpec.shards, samples it gave first): a
    # resumed replay of the epoch reads each only that far, so the cursor lands on the same sample
    # even if the shard reads fine (or fails elsewhere) now
    failed: tuple[tuple[int, int], ...] = ()


class _ShardStream(IterableDataset):
    """Yields dict batches; see the module docstring for the position protocol."""

    def __init__(
        self, spec: StreamSpec, positions: dict[int, SlotPosition], rotation: int, uint8: bool = False
    ):
        super().__init__()
        self.spec = spec
        self.uint8 = uint8  # images stay uint8 (the GPU makes floats); else floats are made here
        self.positions = positions
        self.rotation = rotation
        self.shard_errors = 0  # this slot's failed shard reads, carried in its position
        self.epoch_errors = 0  # ... in the current epoch (the limit applies to these)
        self.epoch_failed: list[tuple[int, int]] = []  # ... as (shard index, samples given)
        self._shard_index = {url: i for i, url in enumerate(spec.shards)}
        self._class_index = {name: i for i, name in enumerate(spec.classes)}

    # -- the deterministic per-slot sample order -------------------------------------------------
    def _epoch_samples(
        self, epoch: int, slot: int, nslots: int, replay: tuple[tuple[int, int], ...] = ()
    ) -> Iterator[dict[str, Any]]:
        s = self.spec
        shards = list(s.shards)
        random.Random(f"shards-{s.seed}-{epoch}").shuffle(shards)
        policy = ReadPolicy(s.retries, s.backoff_s, dict(s.storage_options))
        counts = dict(zip(s.shards, s.shard_counts, strict=True)) if s.shard_counts else None
        # a resumed epoch: shards that failed before the checkpoint give what they gave then
        limits = {s.shards[i]: n for i, n in replay}
        if counts and limits:
            counts = {u: c for u, c in counts.items() if u not in limits}
        self.epoch_failed = list(replay)
        self.epoch_errors = len(replay)
        read = read_shards(
            shards[slot::nslots] if len(shards) >= nslots else shards, policy, self._bad_shard, counts, limits
        )
        raw: Iterator[dict[str, Any]] = (
            read if len(shards) >= nslots else itertools.islice(read, slot, None, nslots)
        )
        rng = random.Random(f"shuffle-{s.seed}-{epoch}-{slot}")
        buf = max(1, s.shuffle_buffer)
        return _shuffle(raw, bufsize=buf, initial=buf, rng=rng)

    def _bad_shard(self, err: ShardReadError) -> None:
        """A shard that vanished, was truncated, is not a tar or failed every retry: count it and go on
        to the next, unless this epoch has had more than ``max_shard_errors`` such shards."""
        self.shard_errors += 1
        self.epoch_errors += 1
        self.epoch_failed.append((self._shard_index.get(err.url, -1), err.samples))
        if self.epoch_errors > self.spec.max_shard_errors:
            raise DatasetError(
                f"more than data.max_shard_errors={self.spec.max_shard_errors} unreadable shards in one "
                f"epoch; the last: {err}"
            )
        log.warning("unreadable shard skipped: %s", err)

    def _decode(self, raw: dict[str, Any], epoch: int, slot: int, cursor: int) -> tuple[Any, int]:
        """An image sample -> uint8 HxWxC (converted to [-1, 1] per batch, in one vectorised op) and
        its label; a pair -> (target, source), cropped at the same offset and flipped alike; or a
        token sample -> its codes, flattened in raster order."""
        s = self.spec
        if s.kind == "tokens":
            codes = np.load(io.BytesIO(raw["tokens.npy"]), allow_pickle=False).reshape(-1).astype(np.int64)
            label = int(raw["cls"]) if "cls" in raw else 0
            if s.cond_tokens:
                cond = np.load(io.BytesIO(raw["cond.npy"]), allow_pickle=False).reshape(-1).astype(np.int64)
                return (codes, cond), label
            return codes, label
        # first: an unlabelled sample is skipped before any decoding
        label = label_index(raw, s.label_key, self._class_index)
        u = unit_hash(s.seed, epoch, slot, cursor, "crop") if s.resize == "random" else 0.5
        flip = self._flip(epoch, slot, cursor)
        key = image_key(raw)
        if s.decode == "gpu":
            # JPEG bytes as they are; other formats decoded at their stored size (device_decode)
            if image_format(key) in JPEG_KEYS and device_ready(raw[key]):
                data, jpeg = np.frombuffer(raw[key], np.uint8).copy(), True
            else:
                data, jpeg = decode(raw[key], s.channels), False
            return _Deferred(data, jpeg, u, flip), label
        target = self._pixels(raw[key], s.channels, u, flip)
        if s.layout == "pairs":
            return (
                target,
                self._pixels(raw[source_key(raw)], s.source_channels or s.channels, u, flip),
            ), label
        return target, label

    def _pixels(self, data: bytes, channels: int, u: float, flip: bool) -> np.ndarray:
        """Encoded bytes -> uint8 HxWxC at the stream's resolution, cropped at ``u``, maybe flipped."""
        s = self.spec
        arr = decode(data, channels, s.resolution, s.resize, u, s.downsample)
        return arr[:, ::-1] if flip else arr

    def _flip(self, epoch: int, slot: int, cursor: int) -> bool:
        if not self.spec.flip:
            return False
        h = hashlib.blake2b(f"{self.spec.seed}-{epoch}-{slot}-{cursor}".encode(), digest_size=1).digest()
        return bool(h[0] & 1)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        s = self.spec
        info = get_worker_info()
        nworkers = max(1, s.num_workers)
        physical = info.id if info is not None else 0
        logical = (physical + self.rotation) % nworkers
        slot, nslots = s.rank * nworkers + logical, s.world_size * nworkers
        pos = self.positions.get(logical, SlotPosition())
        epoch, cursor, skipped = pos.epoch, pos.cursor, pos.skipped
        self.shard_errors = pos.shard_errors
        replay = pos.failed  # the resumed epoch's failed shards, read again only as far as then
        images: list[np.ndarray] = []
        labels: list[int] = []
        keys: list[str] = []
        texts: list[str] = []
        metas: list[Any] = []
        while True:
            produced = decoded = 0
            for raw in itertools.islice(self._epoch_samples(epoch, slot, nslots, replay), cursor, None):
                cursor += 1
                produced += 1
                try:
                    x, y = self._decode(raw, epoch, slot, cursor)
                    meta = json.loads(raw["json"]) if s.meta and "json" in raw else None
                except (OSError, UnidentifiedImageError, KeyError, ValueError, SyntaxError, TypeError) as exc:
                    skipped += 1
                    log.warning(
                        "skipped corrupt sample %s (%s: %s)", raw.get("__key__"), type(exc).__name__, exc
                    )
                    continue
                decoded += 1
                images.append(x)
                labels.append(y)
                keys.append(f"{raw.get('__url__', '?').rsplit('/', 1)[-1]}:{raw.get('__key__')}")
                if s.text:
                    texts.append(decode_text(raw))
                if s.meta:
                    metas.append(meta)
                if len(images) == s.batch_size:
                    batch = {
                        **self._collate(images),
                        "label": torch.tensor(labels, dtype=torch.long),
                        "keys": keys,
                        "worker": logical,
                        "position": (epoch, cursor, skipped, self.shard_errors, tuple(self.epoch_failed)),
                    }
                    if s.text:
                        batch["text"] = texts
                    if s.meta:
                        batch["meta"] = metas
                    yield batch
                    images, labels, keys, texts, metas = [], [], [], [], []
            if produced == 0 and cursor == 0:
                raise DatasetError(
                    f"data slot {slot} (rank {s.rank}) read no samples in epoch {epoch}: its shards are "
                    f"missing or unreadable ({self.shard_errors} failed shard reads); check data.path"
                )
            if decoded == 0 and produced == cursor:  # a whole epoch read, not one sample usable
                raise DatasetError(
                    f"data slot {slot} (rank {s.rank}): none of the {produced} samples of epoch {epoch} "
                    f"decoded (see the skipped-sample warnings: wrong image type, labels or channels?)"
                )
            replay = ()
            epoch, cursor = epoch + 1, 0

    def _collate(self, items: list[Any]) -> dict[str, Any]:
        if self.spec.kind == "tokens" and self.spec.cond_tokens:
            return {
                "tokens": torch.from_numpy(np.stack([t for t, _ in items])),
                "cond": torch.from_numpy(np.stack([c for _, c in items])),
            }
        if self.spec.kind == "tokens":
            return {"tokens": torch.from_numpy(np.stack(items))}
        if self.spec.decode == "gpu":
            return {
                "encoded": [d.data for d in items],
                "is_jpeg": [d.jpeg for d in items],
                "crop_u": [d.u for d in items],
                "flip": [d.flip for d in items],
            }
        if self.spec.layout == "pairs":
            return {
                "image": self._images([t for t, _ in items]),
                "source": self._images([s for _, s in items]),
            }
        return {"image": self._images(items)}

    def _images(self, items: list[np.ndarray]) -> torch.Tensor:
        """uint8 HxWxC arrays -> [B, C, H, W]: uint8 (``self.uint8``), else float32 in [-1, 1]."""
        images = torch.from_numpy(np.stack(items)).permute(0, 3, 1, 2)
        # for a GPU, uint8 across the process boundary and PCIe (a quarter of float32's bytes), made
        # float there; for the CPU, floats made here, in the loader's worker, not the training process
        if self.uint8:
            return images.contiguous()
        # the strides the conversion has always given (a 1-channel batch keeps the permuted ones):
        # convolution kernels pick their path by strides, and training must stay bit-identical
        layout = torch.preserve_format if images.shape[1] == 1 else torch.contiguous_format
        out = torch.empty_like(images, dtype=torch.float32, memory_format=layout)
        if get_worker_info() is not None:
            # made in shared memory, so handing it to the training process costs no copy (a 256 px
            # batch of 64 is 50 MB: 30% of a worker's time went into that copy)
            out.share_memory_()
        return out.copy_(images).div_(127.5).sub_(1.0)


def to_unit_range(images: torch.Tensor) -> torch.Tensor:
    """uint8 [B, C, H, W] -> float32 [B, C, H, W] in [-1, 1], contiguous."""
    return images.float().div_(127.5).sub_(1.0).contiguous()


def _position(v: Any) -> SlotPosition:
    """A position from a batch's tuple or a checkpoint's list: four counts, then the failed shards."""
    failed = tuple((int(i), int(n)) for i, n in v[4]) if len(v) > 4 else ()
    return SlotPosition(int(v[0]), int(v[1]), int(v[2]), int(v[3]), failed)


@dataclass
class StreamState:
    """The main process's record of what training consumed; this is what a checkpoint stores."""

    positions: dict[int, SlotPosition] = field(default_factory=dict)
    batches: int = 0

    def state_dict(self) -> dict[str, Any]:
        return {
            "batches": self.batches,
            "positions": {
                # the failed shards only when there are some: the same bytes as before otherwise
                int(k): [v.epoch, v.cursor, v.skipped, v.shard_errors]
                + ([[list(f) for f in v.failed]] if v.failed else [])
                for k, v in sorted(self.positions.items())
            },
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.batches = int(state["batches"])
        self.positions = {int(k): _position(v) for k, v in state["positions"].items()}

    @property
    def skipped(self) -> int:
        return sum(p.skipped for p in self.positions.values())

    @property
    def shard_errors(self) -> int:
        return sum(p.shard_errors for p in self.positions.values())


class DataStream:
    """An infinite iterator of batches whose position is checkpointed with ``state_dict``."""

    def __init__(self, spec: StreamSpec, device: torch.device | None = None):
        self.spec = spec
        self.state = StreamState()
        self._iter: Iterator[dict[str, Any]] | None = None
        # where batches go: a CUDA device gets uint8 images through pinned memory and turns them into
        # floats itself (4x fewer bytes over PCIe); otherwise floats are made on the CPU
        self.device = device

    def reshape(self, resolution: int, batch_size: int) -> bool:
        """Deliver ``resolution`` px batches of ``batch_size`` from the next batch on (a resolution
        stage): the position is kept, so no sample is skipped or repeated. True if it changed."""
        if (resolution, batch_size) == (self.spec.resolution, self.spec.batch_size):
            return False
        self.spec = replace(self.spec, resolution=resolution, batch_size=batch_size)
        self._iter = None  # batches a worker prefetched at the old shape are dropped, not consumed
        return True

    def state_dict(self) -> dict[str, Any]:
        return {
            **self.state.state_dict(),
            "num_workers": self.spec.num_workers,
            "world_size": self.spec.world_size,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if (
            int(state.get("num_workers", self.spec.num_workers)) != self.spec.num_workers
            or int(state.get("world_size", self.spec.world_size)) != self.spec.world_size
        ):
            log.warning(
                "data.num_workers or world size changed since the checkpoint (%s workers, %s ranks): "
                "the stream restarts at the checkpoint's epoch, not at the exact sample",
                state.get("num_workers"),
                state.get("world_size"),
            )
            epoch = max((v[0] for v in state["positions"].values()), default=0)
            self.state = StreamState(
                {w: SlotPosition(epoch, 0, 0) for w in range(max(1, self.spec.num_workers))}, 0
            )
        else:
            self.state.load_state_dict(state)
        self._iter = None

    def _loader(self) -> Iterator[dict[str, Any]]:
        nworkers = max(1, self.spec.num_workers)
        ds = _ShardStream(
            self.spec, dict(self.state.positions), self.state.batches % nworkers, uint8=self._on_gpu
        )
        if self.spec.num_workers == 0:
            return iter(ds)
        return iter(
            DataLoader(
                ds,
                batch_size=None,
                num_workers=self.spec.num_workers,
                prefetch_factor=2,
                persistent_workers=False,
                # the loader's own thread pins batches for the copy to the GPU
                pin_memory=self._on_gpu,
                # a private generator: creating the loader must not draw from the global torch RNG
                generator=torch.Generator().manual_seed(self.spec.seed),
            )
        )

    def __iter__(self) -> DataStream:
        return self

    def __next__(self) -> dict[str, Any]:
        if self._iter is None:
            self._iter = self._loader()
        batch = next(self._iter)
        self.state.positions[int(batch["worker"])] = _position(batch["position"])
        self.state.batches += 1
        if "encoded" in batch:
            s = self.spec
            images = decode_batch(
                batch.pop("encoded"),
                batch.pop("is_jpeg"),
                s.channels,
                s.resolution,
                s.resize,
                batch.pop("crop_u"),
                batch.pop("flip"),
                s.downsample,
                self.device or torch.device("cpu"),
            )
            batch["image"] = to_unit_range(images)
        elif self._on_gpu and "image" in batch:
            # from pinned memory, asynchronously; the conversion to floats runs on the GPU
            for name in ("image", "source"):
                if name in batch:
                    images = batch[name]
                    images = images if images.is_pinned() else images.pin_memory()
                    batch[name] = to_unit_range(images.to(self.device, non_blocking=True))
        return batch

    @property
    def _on_gpu(self) -> bool:
        return self.device is not None and self.device.type == "cuda"

    def close(self) -> None:
        self._iter = None


class DomainStreams:
    """Unpaired domains stepped together (CycleGAN): one :class:`DataStream` per domain, each over
    its own shards with its own shuffle, and every batch holds a batch of each. The first domain's
    fields keep their names (``image``, ``label``, ...); the others' get a suffix (``image_B``,
    ``label_B``). Positions are checkpointed per domain, so a resume is exact for both."""

    def __init__(self, streams: dict[str, DataStream]):
        if len(streams) < 2:
            raise ValueError("DomainStreams needs at least two domains")
        self.streams = streams
        self.names = list(streams)

    @classmethod
    def build(
        cls,
        spec: StreamSpec,
        shards: dict[str, tuple[str, ...]],
        counts: dict[str, tuple[int, ...]],
        device: torch.device | None = None,
    ) -> DomainStreams:
        """One stream per domain from ``spec`` (its shards replaced by the domain's; domain i's
        shuffle seeded with ``spec.seed + i``, so two domains of equal size are not read in step)."""
        return cls(
            {
                name: DataStream(
                    replace(spec, shards=shards[name], shard_counts=counts[name], seed=spec.seed + i), device
                )
                for i, name in enumerate(shards)
            }
        )

    @property
    def spec(self) -> StreamSpec:
        return self.streams[self.names[0]].spec

    @property
    def state(self) -> StreamState:
        """The domains' positions together (for the skipped-sample and shard-error counts)."""
        merged = StreamState()
        for i, s in enumerate(self.streams.values()):
            merged.positions |= {i * 1000 + k: v for k, v in s.state.positions.items()}
            merged.batches += s.state.batches
        return merged

    def reshape(self, resolution: int, batch_size: int) -> bool:
        return any([s.reshape(resolution, batch_size) for s in self.streams.values()])

    def state_dict(self) -> dict[str, Any]:
        return {"domains": {name: s.state_dict() for name, s in self.streams.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        saved = state.get("domains")
        if not isinstance(saved, dict) or set(saved) != set(self.streams):
            raise DatasetError(
                f"the checkpoint's data position is not one of domains {', '.join(self.names)} "
                "(was it trained on another dataset layout?)"
            )
        for name, s in self.streams.items():
            s.load_state_dict(saved[name])

    def __iter__(self) -> DomainStreams:
        return self

    def __next__(self) -> dict[str, Any]:
        first, *others = self.names
        batch = next(self.streams[first])
        keys = list(batch["keys"])
        for name in others:
            other = next(self.streams[name])
            keys += other["keys"]
            for k, v in other.items():
                if k not in ("keys", "worker", "position"):
                    batch[f"{k}_{name}"] = v
        batch["keys"] = keys
        return batch

    def close(self) -> None:
        for s in self.streams.values():
            s.close()
