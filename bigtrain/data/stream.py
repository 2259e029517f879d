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
"""

from __future__ import annotations

import hashlib
import io
import itertools
import logging
import random
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import DataLoader, IterableDataset, get_worker_info
from webdataset.filters import _shuffle
from webdataset.tariterators import tarfile_samples

from bigtrain.data.manifest import DatasetError
from bigtrain.data.prepare import downsample, to_pil

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


@dataclass
class SlotPosition:
    epoch: int = 0
    cursor: int = 0
    skipped: int = 0  # samples that did not decode
    shard_errors: int = 0  # shard reads that failed (missing, truncated, unreadable tar)


class _ShardStream(IterableDataset):
    """Yields dict batches; see the module docstring for the position protocol."""

    def __init__(self, spec: StreamSpec, positions: dict[int, SlotPosition], rotation: int):
        super().__init__()
        self.spec = spec
        self.positions = positions
        self.rotation = rotation
        self.shard_errors = 0  # this slot's failed shard reads since its position was saved

    # -- the deterministic per-slot sample order -------------------------------------------------
    def _epoch_samples(self, epoch: int, slot: int, nslots: int) -> Iterator[dict[str, Any]]:
        s = self.spec
        shards = list(s.shards)
        random.Random(f"shards-{s.seed}-{epoch}").shuffle(shards)
        if len(shards) >= nslots:
            mine = shards[slot::nslots]
            raw: Iterator[dict[str, Any]] = tarfile_samples([{"url": p} for p in mine], handler=self._bad_tar)
        else:
            every = tarfile_samples([{"url": p} for p in shards], handler=self._bad_tar)
            raw = itertools.islice(every, slot, None, nslots)
        rng = random.Random(f"shuffle-{s.seed}-{epoch}-{slot}")
        buf = max(1, s.shuffle_buffer)
        return _shuffle(raw, bufsize=buf, initial=buf, rng=rng)

    def _bad_tar(self, exn: Exception) -> bool:
        """A shard that vanished, was truncated or is not a tar: log, count, go on to the next one."""
        self.shard_errors += 1
        log.warning("unreadable shard data skipped: %s: %s", type(exn).__name__, exn)
        return True

    def _decode(self, raw: dict[str, Any], flip: bool) -> tuple[np.ndarray, int]:
        """PNG bytes -> uint8 HxWxC (converted to [-1, 1] per batch, in one vectorised op); or a
        token sample -> its codes, flattened in raster order."""
        s = self.spec
        if s.kind == "tokens":
            codes = np.load(io.BytesIO(raw["tokens.npy"]), allow_pickle=False)
            return codes.reshape(-1).astype(np.int64), int(raw["cls"]) if "cls" in raw else 0
        with Image.open(io.BytesIO(raw["png"])) as im:
            img = im if im.mode == ("L" if s.channels == 1 else "RGB") else to_pil(im, s.channels)
            if img.size != (s.resolution, s.resolution):
                arr = downsample(img, s.resolution, s.downsample)
            else:
                arr = np.asarray(img, dtype=np.uint8)
        if arr.ndim == 2:
            arr = arr[:, :, None]
        if flip:
            arr = arr[:, ::-1]
        label = int(raw["cls"]) if "cls" in raw else 0
        return arr, label

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
        images: list[np.ndarray] = []
        labels: list[int] = []
        keys: list[str] = []
        while True:
            produced = 0
            for raw in itertools.islice(self._epoch_samples(epoch, slot, nslots), cursor, None):
                cursor += 1
                produced += 1
                try:
                    x, y = self._decode(raw, self._flip(epoch, slot, cursor))
                except (OSError, UnidentifiedImageError, KeyError, ValueError, SyntaxError) as exc:
                    skipped += 1
                    log.warning(
                        "skipped corrupt sample %s (%s: %s)", raw.get("__key__"), type(exc).__name__, exc
                    )
                    continue
                images.append(x)
                labels.append(y)
                keys.append(f"{raw.get('__url__', '?').rsplit('/', 1)[-1]}:{raw.get('__key__')}")
                if len(images) == s.batch_size:
                    yield {
                        **self._collate(images),
                        "label": torch.tensor(labels, dtype=torch.long),
                        "keys": keys,
                        "worker": logical,
                        "position": (epoch, cursor, skipped, self.shard_errors),
                    }
                    images, labels, keys = [], [], []
            if produced == 0 and cursor == 0:
                raise DatasetError(
                    f"data slot {slot} (rank {s.rank}) read no samples in epoch {epoch}: its shards are "
                    f"missing or unreadable ({self.shard_errors} failed shard reads); check data.path"
                )
            epoch, cursor = epoch + 1, 0

    def _collate(self, items: list[np.ndarray]) -> dict[str, torch.Tensor]:
        if self.spec.kind == "tokens":
            return {"tokens": torch.from_numpy(np.stack(items))}
        return {"image": _to_unit_range(np.stack(items))}


def _to_unit_range(batch: np.ndarray) -> torch.Tensor:
    """uint8 [B, H, W, C] -> float32 [B, C, H, W] in [-1, 1]."""
    return torch.from_numpy(batch).permute(0, 3, 1, 2).float().div_(127.5).sub_(1.0).contiguous()


@dataclass
class StreamState:
    """The main process's record of what training consumed; this is what a checkpoint stores."""

    positions: dict[int, SlotPosition] = field(default_factory=dict)
    batches: int = 0

    def state_dict(self) -> dict[str, Any]:
        return {
            "batches": self.batches,
            "positions": {
                int(k): [v.epoch, v.cursor, v.skipped, v.shard_errors]
                for k, v in sorted(self.positions.items())
            },
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.batches = int(state["batches"])
        self.positions = {int(k): SlotPosition(*map(int, v)) for k, v in state["positions"].items()}

    @property
    def skipped(self) -> int:
        return sum(p.skipped for p in self.positions.values())

    @property
    def shard_errors(self) -> int:
        return sum(p.shard_errors for p in self.positions.values())


class DataStream:
    """An infinite iterator of batches whose position is checkpointed with ``state_dict``."""

    def __init__(self, spec: StreamSpec):
        self.spec = spec
        self.state = StreamState()
        self._iter: Iterator[dict[str, Any]] | None = None

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
        ds = _ShardStream(self.spec, dict(self.state.positions), self.state.batches % nworkers)
        if self.spec.num_workers == 0:
            return iter(ds)
        return iter(
            DataLoader(
                ds,
                batch_size=None,
                num_workers=self.spec.num_workers,
                prefetch_factor=2,
                persistent_workers=False,
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
        self.state.positions[int(batch["worker"])] = SlotPosition(*(int(v) for v in batch["position"]))
        self.state.batches += 1
        return batch

    def close(self) -> None:
        self._iter = None
