"""FID the clean-fid way, for in-memory images and generators, with bigtrain-owned caches.

clean-fid's public entry points assume image folders, download reference statistics and weights, and
write custom statistics into site-packages. bigtrain instead reuses clean-fid's *pieces* -- the "clean"
PIL-bicubic resize, :func:`cleanfid.fid.get_batch_features` and :func:`cleanfid.fid.frechet_distance` --
so numbers match clean-fid's "clean" mode, while data comes from shards / a generator in memory and
reference statistics live in :func:`bigtrain.utils.cache.cache_dir`.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import scipy.linalg
import torch
from cleanfid.fid import frechet_distance as _cleanfid_frechet_distance
from cleanfid.fid import get_batch_features
from cleanfid.resize import make_resizer
from torch import Tensor

from bigtrain.eval.features import FeatureExtractor, _atomic_write
from bigtrain.utils.cache import build_lock, cache_dir
from bigtrain.utils.console import bar_disable

logger = logging.getLogger(__name__)

__all__ = [
    "ImageBatch",
    "SampleFn",
    "compute_fid",
    "feature_stats",
    "frechet_distance",
    "generator_features",
    "images_to_features",
    "quantize_images",
    "reference_stats",
    "reference_stats_path",
]

ImageBatch = np.ndarray | Tensor
"""uint8 images ``[B, H, W, C]``, ``[B, C, H, W]`` (C = 1 or 3) or grayscale ``[B, H, W]``."""

SampleFn = Callable[[int, torch.Generator], Tensor]
"""``sample_fn(n, generator)`` -> ``n`` images in ``[-1, 1]``, ``[n, C, H, W]``."""


def _to_bhwc3_uint8(batch: ImageBatch) -> np.ndarray:
    """Normalise one batch to uint8 ``[B, H, W, 3]`` (grayscale repeated), the layout clean-fid's
    resizer expects. Layout is inferred from where a 1- or 3-sized axis sits; channel-first wins ties
    because that is torch's convention."""
    arr = batch.detach().cpu().numpy() if isinstance(batch, Tensor) else np.asarray(batch)
    if arr.dtype != np.uint8:
        raise TypeError(
            f"images must be uint8 in [0, 255], got dtype {arr.dtype}; quantise first "
            "(see quantize_images) or use generator_features for [-1, 1] samples"
        )
    if arr.ndim == 3:
        arr = arr[..., None]
    if arr.ndim != 4:
        raise ValueError(f"expected an image batch [B, H, W, C] or [B, C, H, W], got shape {arr.shape}")
    if arr.shape[1] in (1, 3):
        arr = arr.transpose(0, 2, 3, 1)
    elif arr.shape[-1] not in (1, 3):
        raise ValueError(f"cannot find a 1- or 3-channel axis in image batch of shape {arr.shape}")
    if arr.shape[-1] == 1:
        arr = np.repeat(arr, 3, axis=-1)
    return arr


def images_to_features(
    batches: Iterable[ImageBatch],
    extractor: FeatureExtractor,
    device: torch.device | str,
    *,
    progress: bool = True,
    total: int | None = None,
    desc: str = "FID features",
    probs_out: list[np.ndarray] | None = None,
) -> np.ndarray:
    """Features ``[N, extractor.dim]`` of uint8 image batches, via clean-fid's "clean" pipeline.

    With ``probs_out`` (a list) and an extractor that has class probabilities, each batch's
    probabilities are appended to it from the same resized images (for the Inception Score).

    Each image is made HxWx3, resized to ``extractor.input_size`` with clean-fid's PIL-bicubic float
    resizer (no re-quantisation, as clean-fid does), stacked to a ``[B, 3, S, S]`` float tensor in
    ``[0, 255]`` and fed through :func:`cleanfid.fid.get_batch_features`. ``total`` (images) only sizes
    the progress bar.
    """
    from tqdm.auto import tqdm

    device = torch.device(device)
    size = extractor.input_size
    resize = make_resizer("PIL", False, "bicubic", (size, size))
    feats: list[np.ndarray] = []
    with tqdm(total=total, desc=desc, unit="img", disable=bar_disable(progress), leave=False) as bar:
        for batch in batches:
            images = _to_bhwc3_uint8(batch)
            if len(images) == 0:
                continue
            x = _network_input(images, resize)
            feats.append(np.asarray(get_batch_features(x, extractor, device)))
            if probs_out is not None and extractor.probs is not None:
                with torch.no_grad():
                    probs_out.append(extractor.probs(x.to(device)).float().cpu().numpy())
            bar.update(len(images))
    if not feats:
        raise ValueError("no images to compute features from")
    out = np.concatenate(feats, axis=0)
    if out.ndim != 2 or out.shape[1] != extractor.dim:
        raise ValueError(
            f"extractor {extractor.name!r} returned features {out.shape}, expected [N, {extractor.dim}]"
        )
    return out


def resize_threads() -> int:
    """Threads for clean-fid's per-image resize: ``$BIGTRAIN_RESIZE_THREADS``, else this process's
    cores up to 16. PIL resizes outside the GIL, and the resize, one image at a time on the CPU, is
    what bounds FID on a GPU machine (clean-fid runs it on one thread)."""
    env = os.environ.get("BIGTRAIN_RESIZE_THREADS")
    if env:
        return max(1, int(env))
    return max(1, min(16, len(os.sched_getaffinity(0))))


_POOL: ThreadPoolExecutor | None = None


def _resize_pool() -> ThreadPoolExecutor:
    global _POOL
    if _POOL is None:
        _POOL = ThreadPoolExecutor(resize_threads(), thread_name_prefix="fid-resize")
    return _POOL


def _network_input(images: np.ndarray, resize: Callable[[np.ndarray], np.ndarray]) -> Tensor:
    """uint8 ``[B, H, W, 3]`` -> the feature network's float input ``[B, 3, S, S]`` (clean-fid's resize,
    image by image, spread over :func:`resize_threads` threads: the same function on each image, in
    order, so the result is the one-thread result bit for bit)."""
    pool = _resize_pool() if len(images) > 1 and resize_threads() > 1 else None
    parts = list(pool.map(resize, images)) if pool is not None else [resize(img) for img in images]
    resized = np.stack(parts).transpose(0, 3, 1, 2)
    return torch.from_numpy(np.ascontiguousarray(resized, dtype=np.float32))


def class_probs(
    images: Tensor, extractor: FeatureExtractor, device: torch.device | str = "cpu"
) -> np.ndarray:
    """The feature network's class probabilities ``[N, K]`` for ``[-1, 1]`` images ``[N, C, H, W]``,
    quantised and resized exactly as FID's samples are (the digits classifier's reading of a sample)."""
    if extractor.probs is None:
        raise ValueError(f"feature network {extractor.name} has no class head")
    size = extractor.input_size
    resize = make_resizer("PIL", False, "bicubic", (size, size))
    x = _network_input(_to_bhwc3_uint8(quantize_images(images)), resize)
    with torch.no_grad():
        return extractor.probs(x.to(device)).float().cpu().numpy()


def quantize_images(x: Tensor) -> Tensor:
    """``[-1, 1]`` float images -> uint8 ``[0, 255]`` exactly as when saved to PNG.

    Scoring the quantised images keeps generator FID comparable with FID of the same samples written
    to disk (and with the uint8 reference data).
    """
    return ((x.detach().float() + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8)


def batch_seed(seed: int, index: int) -> int:
    """The seed of evaluation batch ``index``: each batch has its own generator, so a sample does not
    depend on which process draws it, and the sample set is the same for any number of processes."""
    return int(np.random.SeedSequence([seed, index]).generate_state(1, np.uint64)[0] >> 1)


def rank_batches(num: int, batch_size: int, rank: int = 0, world: int = 1) -> list[tuple[int, int]]:
    """``(index, size)`` of the batches of ``num`` samples that process ``rank`` of ``world`` draws:
    batches of ``batch_size`` (the last may be short), every world-th from ``rank``."""
    sizes = [min(batch_size, num - start) for start in range(0, num, batch_size)]
    return [(k, sizes[k]) for k in range(rank, len(sizes), world)]


def generator_features(
    sample_fn: SampleFn,
    num: int,
    batch_size: int,
    extractor: FeatureExtractor,
    device: torch.device | str,
    seed: int,
    *,
    progress: bool = True,
    probs_out: list[np.ndarray] | None = None,
    rank: int = 0,
    world: int = 1,
) -> np.ndarray:
    """Features ``[num, dim]`` of ``num`` generator samples, quantised like saved PNGs first.

    The samples come in batches of ``batch_size``; batch ``k`` draws from a private
    :class:`torch.Generator` (on ``device``) seeded with :func:`batch_seed` ``(seed, k)``, so the global
    RNG is never consumed (evaluating mid-training does not perturb training; exact resume keeps
    working) and the same seed gives the same samples. With ``world > 1`` (collective: every rank
    calls it) rank ``r`` draws batches ``r, r + world, ...`` and the features are gathered in batch
    order, identical to one process's. Sampling runs under ``torch.no_grad``.
    """
    if num < 1 or batch_size < 1:
        raise ValueError(f"num and batch_size must be positive, got num={num}, batch_size={batch_size}")
    device = torch.device(device)
    mine = rank_batches(num, batch_size, rank, world)

    def batches() -> Iterator[Tensor]:
        for k, n in mine:
            generator = torch.Generator(device=device).manual_seed(batch_seed(seed, k))
            with torch.no_grad():
                x = sample_fn(n, generator)
            if x.ndim != 4 or x.shape[0] != n or x.shape[1] not in (1, 3):
                raise ValueError(
                    f"sample_fn({n}, generator) must return [{n}, C, H, W] with C in (1, 3), got {list(x.shape)}"
                )
            yield quantize_images(x)

    probs: list[np.ndarray] | None = [] if probs_out is not None else None
    if mine:
        feats = images_to_features(
            batches(),
            extractor,
            device,
            progress=progress,
            total=sum(n for _, n in mine),
            desc=f"FID {extractor.name} samples",
            probs_out=probs,
        )
    else:  # more processes than batches
        feats = np.zeros((0, extractor.dim), dtype=np.float32)
    if world == 1:
        if probs_out is not None and probs:
            probs_out.extend(probs)
        return feats
    from bigtrain import distributed as bdist

    cuts = np.cumsum([n for _, n in mine])[:-1]
    local = {
        k: (f, probs[i] if probs else None)
        for i, ((k, _), f) in enumerate(zip(mine, np.split(feats, cuts), strict=True))
    }
    everything: dict[int, tuple[np.ndarray, np.ndarray | None]] = {}
    for part in bdist.all_gather_objects(local):
        everything.update(part)
    ordered = [everything[k] for k in sorted(everything)]
    if probs_out is not None and all(p is not None for _, p in ordered):
        probs_out.extend(p for _, p in ordered)  # type: ignore[misc]
    return np.concatenate([f for f, _ in ordered], axis=0)


def feature_stats(feats: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(mean [dim], covariance [dim, dim])`` in float64, the Gaussian FID fits to features."""
    feats = np.asarray(feats, dtype=np.float64)
    if feats.ndim != 2 or feats.shape[0] < 2:
        raise ValueError(f"need features [N >= 2, dim], got shape {feats.shape}")
    return feats.mean(axis=0), np.atleast_2d(np.cov(feats, rowvar=False))


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """Frechet distance between two Gaussians: ``|mu1 - mu2|^2 + Tr(S1 + S2 - 2 sqrt(S1 S2))``.

    clean-fid's own function is used where it works; it passes ``disp=False`` to
    ``scipy.linalg.sqrtm``, which SciPy 1.18 removed (seen on the GPU machine), so there the same
    formula runs here, with clean-fid's fallback of a small diagonal offset for a singular product.
    """
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    s1, s2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    try:
        return float(_cleanfid_frechet_distance(mu1, s1, mu2, s2))
    except TypeError:
        pass
    covmean = _sqrtm(s1 @ s2)
    if not np.isfinite(covmean).all():
        offset = np.eye(s1.shape[0]) * 1e-6
        covmean = _sqrtm((s1 + offset) @ (s2 + offset))
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            raise ValueError(f"FID: imaginary component {np.max(np.abs(covmean.imag))} in sqrt(S1 S2)")
        covmean = covmean.real
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


def _sqrtm(m: np.ndarray) -> np.ndarray:
    out = scipy.linalg.sqrtm(m)
    return out[0] if isinstance(out, tuple) else out


REFERENCE_SUBSET = 10_000  # real features kept beside (mu, sigma) for precision/recall

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
_MAX_STEM = 120


def _safe_name(text: str) -> str:
    """Filename-safe form of ``text``; when characters were replaced or the text truncated, a short hash
    of the original is appended so distinct keys (``a/b`` vs ``a_b``) never share a file."""
    if not text:
        raise ValueError("cache key must be a non-empty string")
    safe = _UNSAFE.sub("_", text).strip("._-")
    if safe == text and len(safe) <= _MAX_STEM:
        return safe
    digest = hashlib.sha256(text.encode()).hexdigest()[:10]
    return f"{safe[:_MAX_STEM]}-{digest}" if safe else digest


def reference_stats_path(key: str, extractor_name: str, cache_root: Path | None = None) -> Path:
    """``<cache>/fid_stats/<key>__<extractor_name>.npz`` with both parts sanitised for a filename.

    ``cache_root`` replaces :func:`cache_dir` (the ``fid_stats`` folder is created under it).
    """
    root = Path(cache_root) if cache_root is not None else cache_dir()
    return root / "fid_stats" / f"{_safe_name(key)}__{_safe_name(extractor_name)}.npz"


def user_reference_stats(path: str | Path, extractor: FeatureExtractor) -> tuple[np.ndarray, np.ndarray]:
    """``(mu, sigma)`` from a user's ``.npz`` (``eval.ref_stats``: keys ``mu`` [dim] and ``sigma``
    [dim, dim], as clean-fid, pytorch-fid and the ADM evaluator's reference batches store them),
    checked against the feature network's dimension; any problem is one :class:`ConfigError` line."""
    from bigtrain.errors import ConfigError

    p = Path(path).expanduser()
    if not p.is_file():
        raise ConfigError(
            f"eval.ref_stats: {p} not found (an .npz with arrays mu [dim] and sigma [dim, dim])"
        )
    try:
        with np.load(p) as data:
            if "mu" not in data or "sigma" not in data:
                raise ConfigError(f"eval.ref_stats: {p} has arrays {sorted(data.files)}, needs mu and sigma")
            mu, sigma = np.asarray(data["mu"], dtype=np.float64), np.asarray(data["sigma"], dtype=np.float64)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"eval.ref_stats: {p} is not a readable .npz ({exc})") from None
    if mu.shape != (extractor.dim,) or sigma.shape != (extractor.dim, extractor.dim):
        raise ConfigError(
            f"eval.ref_stats: {p} holds mu {tuple(mu.shape)} and sigma {tuple(sigma.shape)}, but feature "
            f"network {extractor.name} gives {extractor.dim}-d features (mu ({extractor.dim},), sigma "
            f"({extractor.dim}, {extractor.dim})): statistics of another network"
        )
    return mu, sigma


def reference_stats(
    key: str,
    make_batches: Callable[[], Iterable[ImageBatch]],
    extractor: FeatureExtractor,
    device: torch.device | str,
    cache_root: Path | None = None,
    *,
    progress: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """Reference ``(mu, sigma)`` for ``key`` under ``extractor``, computed once and then loaded.

    ``key`` is built by the caller from what determines the images (dataset id/checksum, split,
    resolution); the extractor name is added here. ``make_batches`` is only called on a cache miss,
    so a warm cache never touches the dataset. The npz is written atomically and records the number
    of images, the key and the extractor for later inspection.
    """
    path = reference_stats_path(key, extractor.cache_name, cache_root)
    with build_lock(path):  # jobs starting together compute them once
        return _reference_stats(path, key, make_batches, extractor, device, progress)


def _reference_stats(
    path: Path,
    key: str,
    make_batches: Callable[[], Iterable[ImageBatch]],
    extractor: FeatureExtractor,
    device: torch.device | str,
    progress: bool,
) -> tuple[np.ndarray, np.ndarray]:
    if path.is_file():
        with np.load(path) as data:
            mu, sigma = data["mu"], data["sigma"]
            has_subset = "feats_subset" in data
        if mu.shape == (extractor.dim,) and has_subset:
            return mu, sigma
        logger.warning(
            "%s has %s-d statistics, extractor %r is %d-d; recomputing",
            path,
            mu.shape,
            extractor.name,
            extractor.dim,
        )

    feats = images_to_features(
        make_batches(), extractor, device, progress=progress, desc=f"FID reference {key}"
    )
    mu, sigma = feature_stats(feats)
    # a fixed random subset of the real features, for precision/recall (k-NN needs the points)
    pick = np.random.default_rng(0).permutation(len(feats))[:REFERENCE_SUBSET]
    subset = feats[np.sort(pick)].astype(np.float32)

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:  # a file object stops np.savez from appending ".npz" to the temp name
            np.savez(
                f,
                mu=mu,
                sigma=sigma,
                feats_subset=subset,
                num_images=np.int64(len(feats)),
                key=np.str_(key),
                extractor=np.str_(extractor.cache_name),
            )

    _atomic_write(path, write)
    logger.info("FID reference statistics for %r (%d images) cached at %s", key, len(feats), path)
    return mu, sigma


def reference_features(key: str, extractor_name: str, cache_root: Path | None = None) -> np.ndarray | None:
    """The cached subset of real features for ``key`` (written by :func:`reference_stats`), or None."""
    path = reference_stats_path(key, extractor_name, cache_root)
    if not path.is_file():
        return None
    with np.load(path) as data:
        return data.get("feats_subset")


def compute_fid(
    sample_fn: SampleFn,
    num: int,
    batch_size: int,
    extractor: FeatureExtractor,
    device: torch.device | str,
    seed: int,
    ref: tuple[np.ndarray, np.ndarray],
    *,
    progress: bool = True,
) -> float:
    """FID of ``num`` generator samples (seeded, global RNG untouched) against reference ``(mu, sigma)``."""
    feats = generator_features(sample_fn, num, batch_size, extractor, device, seed, progress=progress)
    mu, sigma = feature_stats(feats)
    return frechet_distance(mu, sigma, ref[0], ref[1])
