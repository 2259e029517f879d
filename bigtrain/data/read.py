"""Reading shards: samples out of tar streams, with retries for remote shards, and the decoded
images of a split in shard order (FID reference sets).

A remote read can fail half-way (a reset connection, a 503). The shard is then opened again after a
backoff (1 s, 2 s, 4 s, ...) and the samples it already gave are passed over, so the caller sees
each sample once, in the same order as an undisturbed read: the stream's position (and so an exact
resume) does not depend on network luck. A local file is not retried: a missing or truncated file
does not heal. A shard that still fails is reported to the caller, which counts and skips it.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import UnidentifiedImageError
from webdataset.tariterators import group_by_keys, tar_file_expander

from bigtrain.data import urls
from bigtrain.data.images import decode, image_key, parse_recipe
from bigtrain.data.manifest import DatasetManifest
from bigtrain.errors import DatasetError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReadPolicy:
    """How hard to try a remote shard before reporting it failed, and fsspec's options."""

    retries: int = 3
    backoff_s: float = 1.0
    storage_options: Mapping[str, Any] = field(default_factory=dict)


_DEFAULT: list[ReadPolicy] = [ReadPolicy()]


def configure(policy: ReadPolicy) -> None:
    """This process's policy for reads that name none (FID reference images, tokenizing): the
    trainer sets it from ``data.*`` so every read of a run uses the same endpoint and retries."""
    _DEFAULT[0] = policy


def default_policy() -> ReadPolicy:
    return _DEFAULT[0]


class ShardReadError(Exception):
    """A shard that could not be read to its end after every retry."""

    def __init__(self, url: str, cause: BaseException, samples: int):
        # webdataset appends the stream and URL to an exception's args: keep the first, the reason
        reason = cause.args[0] if len(cause.args) > 1 and cause.args[-1] == url else cause
        super().__init__(f"{url}: {type(cause).__name__}: {reason} (after {samples} samples)")
        self.url, self.cause, self.samples = url, cause, samples


def _raise(exn: Exception) -> bool:
    raise exn


def tar_samples(stream: Any, url: str) -> Iterator[dict[str, Any]]:
    """The samples of one open tar stream, grouped by key as WebDataset groups them; any error is
    raised (the callers retry, count or report it)."""
    files = tar_file_expander([{"url": url, "stream": stream}], handler=_raise)
    return group_by_keys(files, handler=_raise)


class ShortShard(EOFError):
    """A shard that ended cleanly but early: a file cut at a member boundary, or a connection
    closed before the end (tar itself cannot tell either from a real end)."""


def shard_samples(
    url: str, policy: ReadPolicy | None = None, expected: int | None = None, limit: int | None = None
) -> Iterator[dict[str, Any]]:
    """The samples of one shard, as WebDataset groups them (``{"__key__", "__url__", ext: bytes}``).
    With ``expected`` (the manifest's count), fewer samples is a failed read too; ``limit`` stops
    after that many. Raises ShardReadError once the retries are spent."""
    policy = policy or default_policy()
    given = 0
    attempt = 0
    if limit is not None and limit <= 0:
        return
    while True:
        try:
            seen = 0
            with urls.open_stream(url, policy.storage_options) as stream:
                for sample in tar_samples(stream, url):
                    seen += 1
                    if seen <= given:
                        continue  # given before a retry
                    given += 1
                    yield sample
                    if limit is not None and given >= limit:
                        return
            if expected is not None and seen < expected:
                raise ShortShard(f"ended after {seen} of its {expected} samples")
            return
        except Exception as exc:  # noqa: BLE001 - network and tar errors come in many types
            attempt += 1
            if not urls.is_url(url) or attempt > policy.retries:
                raise ShardReadError(url, exc, given) from exc
            delay = policy.backoff_s * 2 ** (attempt - 1)
            log.warning(
                "reading %s failed (%s: %s); retry %d of %d in %.1f s",
                url,
                type(exc).__name__,
                exc,
                attempt,
                policy.retries,
                delay,
            )
            time.sleep(delay)


def read_shards(
    shard_urls: Iterable[str],
    policy: ReadPolicy | None = None,
    on_error: Callable[[ShardReadError], None] | None = None,
    counts: Mapping[str, int] | None = None,
    limits: Mapping[str, int] | None = None,
) -> Iterator[dict[str, Any]]:
    """The samples of every shard in turn; a shard that fails (or, with ``counts``, ends short)
    goes to ``on_error`` (which may raise to stop) and the next shard follows. Without
    ``on_error`` the failure is raised. ``limits`` caps what a shard gives (a resumed stream
    replaying a shard that failed after that many samples the first time)."""
    for url in shard_urls:
        limit = limits.get(url) if limits else None
        try:
            yield from shard_samples(url, policy, counts.get(url) if counts else None, limit)
        except ShardReadError as err:
            if on_error is None:
                raise
            on_error(err)


def iter_images(
    manifest: DatasetManifest,
    split: str,
    batch_size: int,
    limit: int | None = None,
    resolution: int | None = None,
    method: str = "lanczos",
    policy: ReadPolicy | None = None,
) -> Iterator[np.ndarray]:
    """Decoded uint8 images [B, H, W, C] of ``split`` in shard order (for FID reference statistics),
    at ``resolution`` (default: the manifest's) the way the training stream makes them: ``method``
    is a filter (or ``box``) with an optional ``:pad`` (:func:`bigtrain.data.images.recipe`)."""
    for images, _ in iter_labelled(manifest, split, batch_size, limit, resolution, method, policy):
        yield images


def iter_labelled(
    manifest: DatasetManifest,
    split: str,
    batch_size: int,
    limit: int | None = None,
    resolution: int | None = None,
    method: str = "lanczos",
    policy: ReadPolicy | None = None,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """As :func:`iter_images`, with each image's class index (0 when unlabelled, -1 when a
    labelled dataset's sample has no readable label)."""
    image, classes = _decoding(manifest, resolution, method)

    def part(sample: dict[str, Any]) -> tuple[np.ndarray, ...]:
        arr = image(sample[image_key(sample)], manifest.channels)
        try:
            label = label_index(sample, manifest.label_key, classes)
        except (KeyError, ValueError):
            label = -1
        return arr, np.int64(label)

    # statistics of a partial set would be cached and compared against for the whole run
    yield from _decoded_batches(
        manifest, split, batch_size, limit, policy, part, "images for the FID reference"
    )  # type: ignore[misc]


def iter_pairs(
    manifest: DatasetManifest,
    split: str,
    batch_size: int,
    limit: int | None = None,
    resolution: int | None = None,
    method: str = "lanczos",
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """``(sources, targets, labels)`` of a paired split (``bigtrain prepare --pairs``) in shard
    order: uint8 [B, H, W, C] each, made as :func:`iter_images` makes images, and int64 labels (0
    when unlabelled). A sample whose source, target or label does not read is passed over."""
    from bigtrain.data.images import source_key

    image, classes = _decoding(manifest, resolution, method)

    def part(sample: dict[str, Any]) -> tuple[np.ndarray, ...]:
        label = label_index(sample, manifest.label_key, classes)
        src = image(sample[source_key(sample)], manifest.source_channels)
        tgt = image(sample[image_key(sample)], manifest.channels)
        return src, tgt, np.int64(label)

    yield from _decoded_batches(manifest, split, batch_size, limit, None, part, "pairs")  # type: ignore[misc]


def _decoding(
    manifest: DatasetManifest, resolution: int | None, method: str
) -> tuple[Callable[[bytes, int], np.ndarray], dict[str, int]]:
    """What every reader of decoded samples derives from its arguments alike, so that images,
    labelled images and pairs are made the same way: ``image(raw, channels)``, one encoded image
    decoded at ``resolution`` (default: the manifest's) by the ``method`` recipe, and the class
    index of each label name."""
    res = resolution if resolution is not None else manifest.resolution
    filter_method, fit_policy = parse_recipe(method)

    def image(raw: bytes, channels: int) -> np.ndarray:
        return decode(raw, channels, res, fit_policy, method=filter_method)

    return image, {name: i for i, name in enumerate(manifest.label_names)}


def _decoded_batches(
    manifest: DatasetManifest,
    split: str,
    batch_size: int,
    limit: int | None,
    policy: ReadPolicy | None,
    part: Callable[[dict[str, Any]], tuple[np.ndarray, ...]],
    what: str,
) -> Iterator[tuple[np.ndarray, ...]]:
    """``split``'s samples in shard order through ``part`` (a sample -> its arrays), stacked into
    batches; a sample ``part`` cannot decode is passed over, a shard that cannot be read stops."""
    rows: list[tuple[np.ndarray, ...]] = []
    seen = 0

    def fail(err: ShardReadError) -> None:
        raise DatasetError(f"cannot read the {split} split's {what}: {err}")

    counts = dict(zip(manifest.shard_paths(split), (x.count for x in manifest.splits[split]), strict=True))
    for sample in read_shards(counts, policy, on_error=fail, counts=counts):
        if limit is not None and seen >= limit:
            break
        try:
            rows.append(part(sample))
        except (OSError, UnidentifiedImageError, KeyError, ValueError):
            continue
        seen += 1
        if len(rows) == batch_size:
            yield tuple(np.stack(col) for col in zip(*rows, strict=True))
            rows = []
    if rows:
        yield tuple(np.stack(col) for col in zip(*rows, strict=True))


def raw_label(sample: Mapping[str, Any], key: str) -> str | None:
    """The sample's label as written, or None: ``cls`` reads the ``.cls`` text, ``json:FIELD`` a field
    of the ``.json`` (dotted for nested fields, as in ``json:meta.class``)."""
    if key == "cls":
        raw = sample.get("cls")
        return raw.decode().strip() if isinstance(raw, bytes) else None
    if not key.startswith("json:"):
        raise ValueError(f"unknown label key '{key}' (use cls, json:FIELD or none)")
    raw = sample.get("json")
    if not isinstance(raw, bytes):
        return None
    value: Any = json.loads(raw)
    for part in key[len("json:") :].split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return None if value is None else str(value)


def label_index(sample: Mapping[str, Any], key: str | None, classes: Mapping[str, int]) -> int:
    """The sample's class index: its label's position in ``classes`` (names), else the label as an
    integer; 0 for unlabelled data (``key`` None). KeyError when a labelled sample has none."""
    if key is None:
        return 0
    value = raw_label(sample, key)
    if value is None:
        raise KeyError(f"no label under '{key}'")
    return classes[value] if value in classes else int(value)


def decode_text(sample: Mapping[str, Any]) -> str:
    """The sample's ``.txt`` caption ("" when it has none)."""
    raw = sample.get("txt")
    return raw.decode("utf-8", errors="replace").strip() if isinstance(raw, bytes) else ""


__all__ = [
    "ReadPolicy",
    "ShardReadError",
    "decode_text",
    "iter_images",
    "label_index",
    "raw_label",
    "read_shards",
    "shard_samples",
]
