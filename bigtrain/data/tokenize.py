"""Image shards -> token shards with a frozen tokenizer (stage 1 -> stage 2 of the VQ-GAN pipeline).

Each image shard becomes a token shard of the same name and sample keys: ``<key>.tokens.npy`` (the
code indices, ``uint16 [h, w]``, or ``int32`` for codebooks over 65,536) and ``<key>.cls``. The
prior then trains from token shards, so the tokenizer is not run again every epoch. The output's
``dataset.json`` records the token grid, the vocabulary and the tokenizer's identity (checkpoint,
step, weight digest, architecture), so a prior knows exactly which tokenizer decodes its samples.

Shards are independent: ``workers`` processes take them in turns, each loading the tokenizer
once. Writing is deterministic (fixed tar mtimes, evaluation-mode encoder): tokenizing the same
shards with the same checkpoint gives byte-identical token shards.

A paired set (``bigtrain prepare --pairs``) tokenizes both parts: the target with the tokenizer,
the source with a *condition tokenizer* (``--condition-tokenizer``; the same one by default) into
``<key>.cond.npy``. A prior trained on such shards draws targets given sources: taming's
cond-transformer, whose ``cond_stage_model`` is that second tokenizer. ``dataset.json`` records it
under ``condition`` as it records the image tokenizer.
"""

from __future__ import annotations

import hashlib
import io
import multiprocessing as mp
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
import webdataset as wds
from omegaconf import OmegaConf
from PIL import UnidentifiedImageError
from tqdm import tqdm

from bigtrain.data.images import decode, image_key, source_key
from bigtrain.data.manifest import DatasetManifest, ShardInfo
from bigtrain.data.read import ReadPolicy, configure, default_policy, label_index, shard_samples
from bigtrain.data.urls import is_url
from bigtrain.errors import ConfigError
from bigtrain.utils.console import bar_disable

_WORKER: dict[str, Any] = {}


TokenizerLoader = Callable[[str, str], tuple[Any, Any]]
"""``load(checkpoint, device) -> (frozen VQ model, Checkpoint)``: the caller's (``bigtrain tokenize``
passes ``bigtrain.train.snapshot.load_tokenizer``), so this data module needs no training code. A
module-level function, so the spawned workers receive it by reference."""


def _init_worker(
    load: TokenizerLoader,
    ckpt: str,
    device: str,
    threads: int,
    policy: ReadPolicy,
    cond_ckpt: str | None = None,
) -> None:
    torch.set_num_threads(threads)
    configure(policy)  # a spawned worker starts with the default read settings
    _WORKER["vq"], _ = load(ckpt, device)
    _WORKER["cond"] = (
        None if cond_ckpt is None else (_WORKER["vq"] if cond_ckpt == ckpt else load(cond_ckpt, device)[0])
    )


def _codes_npy(codes: np.ndarray, num_codes: int) -> bytes:
    buf = io.BytesIO()
    np.save(buf, codes.astype(np.uint16 if num_codes <= 2**16 else np.int32), allow_pickle=False)
    return buf.getvalue()


@torch.no_grad()
def _encode(vq: Any, images: list[np.ndarray], device: torch.device) -> np.ndarray:
    x = torch.from_numpy(np.stack(images)).to(device).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)
    return vq.encode_indices(x).cpu().numpy()


def tokenize_shard(
    src: str,
    dst: str,
    channels: int,
    batch_size: int,
    resolution: int | None = None,
    label_key: str | None = "cls",
    classes: tuple[str, ...] = (),
    source_channels: int | None = None,
) -> tuple[str, int, str, int]:
    """Encode one image shard (a path or URL) into ``dst``; returns (file name, samples, sha256,
    skipped). Images not at ``resolution`` are centre-cropped to it, as the FID references are;
    ``.txt`` captions and ``.json`` metadata travel with the tokens (a text-conditioned prior's data),
    and the label, wherever the source kept it, becomes the token sample's ``.cls``. With a
    condition tokenizer (a paired set), each source image becomes ``.cond.npy``."""
    vq, cvq = _WORKER["vq"], _WORKER.get("cond")
    device = next(vq.parameters()).device
    count = skipped = 0
    pending: list[tuple[dict[str, Any], np.ndarray, np.ndarray | None]] = []
    class_index = {name: i for i, name in enumerate(classes)}
    with wds.TarWriter(dst, mtime=0) as sink:

        def flush() -> None:
            nonlocal count
            if not pending:
                return
            codes = _encode(vq, [p[1] for p in pending], device)
            conds = _encode(cvq, [p[2] for p in pending], device) if cvq is not None else [None] * len(codes)
            for (extra, _, _), tokens, cond in zip(pending, codes, conds, strict=True):
                parts = {**extra, "tokens.npy": _codes_npy(tokens, vq.num_codes)}
                if cond is not None:
                    parts["cond.npy"] = _codes_npy(cond, cvq.num_codes)
                sink.write(parts)
                count += 1
            pending.clear()

        for sample in shard_samples(src):
            try:
                label = label_index(sample, label_key, class_index)
                arr = decode(sample[image_key(sample)], channels, resolution)
                src = None
                if cvq is not None:
                    src = decode(sample[source_key(sample)], source_channels or channels, resolution)
            except (OSError, UnidentifiedImageError, KeyError, ValueError):
                skipped += 1
                continue
            extra = {k: sample[k] for k in ("__key__", "txt", "json") if k in sample}
            extra["cls"] = str(label).encode()
            pending.append((extra, arr, src))
            if len(pending) == batch_size:
                flush()
        flush()
    digest = hashlib.sha256(Path(dst).read_bytes()).hexdigest()
    return Path(dst).name, count, digest, skipped


def _token_shard_name(split: str, i: int, shard: ShardInfo) -> str:
    """A prepared shard keeps its name; an indexed one (a URL or a path elsewhere) is numbered."""
    plain = "/" not in shard.file and not is_url(shard.file) and shard.file.endswith(".tar")
    return shard.file if plain else f"{split}-{i:06d}.tar"


def tokenize_dataset(
    load: TokenizerLoader,
    ckpt: str | Path,
    src: str | Path,
    out: str | Path,
    workers: int = 1,
    batch_size: int = 64,
    device: str = "cpu",
    progress: bool = True,
    on_shard: Callable[[str], None] | None = None,
    policy: ReadPolicy | None = None,
    cond_ckpt: str | Path | None = None,
) -> DatasetManifest:
    """Tokenize every split of the image dataset at ``src`` into ``out``; returns the new manifest.
    ``policy`` (retries, fsspec options) reaches the workers' reads of remote shards. A paired set's
    sources are tokenized with ``cond_ckpt`` (default: ``ckpt``)."""
    ckpt = str(Path(ckpt).resolve())
    manifest = DatasetManifest.load(src)
    if cond_ckpt is not None and manifest.layout != "pairs":
        raise ValueError(
            f"a condition tokenizer encodes a paired set's sources; {src} holds {manifest.layout}"
        )
    cond = str(Path(cond_ckpt or ckpt).resolve()) if manifest.layout == "pairs" else None
    vq, ck = load(ckpt, device)
    cvq, cck = (vq, ck) if cond in (None, ckpt) else load(str(cond), device)
    if cond is not None and cvq.channels != manifest.source_channels:
        raise ConfigError(
            f"the condition tokenizer {cond} reads {cvq.channels}-channel images; the sources of {src} "
            f"have {manifest.source_channels} (give --condition-tokenizer CKPT trained on such images)"
        )
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    jobs = [
        (split, s, _token_shard_name(split, i, s))
        for split, shards in manifest.splits.items()
        for i, s in enumerate(shards)
    ]
    threads = max(1, torch.get_num_threads() // max(1, workers))
    results: dict[str, tuple[str, int, str, int]] = {}
    bar = tqdm(total=len(jobs), unit="shard", desc="tokenize", disable=bar_disable(progress))
    ctx = mp.get_context("spawn")  # no forked CUDA state, no shared RNG
    with ProcessPoolExecutor(
        max(1, workers),
        mp_context=ctx,
        initializer=_init_worker,
        initargs=(load, ckpt, device, threads, policy or default_policy(), cond),
    ) as pool:
        futures = {
            name: pool.submit(
                tokenize_shard,
                manifest.location(s),
                str(out / name),
                manifest.channels,
                batch_size,
                manifest.resolution,
                manifest.label_key,
                manifest.label_names,
                manifest.source_channels,
            )
            for _, s, name in jobs
        }
        for name, fut in futures.items():
            results[name] = fut.result()
            bar.update(1)
            if on_shard is not None:
                on_shard(name)
    bar.close()
    splits: dict[str, list[ShardInfo]] = {}
    for split, _, name in jobs:
        splits.setdefault(split, []).append(ShardInfo(*results[name][:3]))
    grid = vq.token_grid
    tokens_manifest = DatasetManifest(
        root=out,
        name=f"{manifest.name}-tokens",
        resolution=manifest.resolution,
        channels=manifest.channels,
        classes=manifest.classes,
        splits=splits,
        extra={
            "kind": "tokens",
            **({"source_channels": manifest.source_channels} if cond is not None else {}),
            # the captions' measured attribute thresholds (builtin:mnist5k-captions): what a
            # text-conditioned prior's attribute agreement checks
            **({"attributes": manifest.extra["attributes"]} if "attributes" in manifest.extra else {}),
            "label_key": "cls" if manifest.label_key else None,
            "captions": manifest.has_text,
            "metadata": manifest.has_meta,
            "tokens": {
                "grid": [grid, grid],
                "vocab": vq.num_codes,
                "dtype": "uint16" if vq.num_codes <= 2**16 else "int32",
            },
            "skipped": sum(r[3] for r in results.values()),
            "source": {"path": str(manifest.root.resolve()), "dataset_id": manifest.dataset_id},
            "tokenizer": _identity(ckpt, ck),
            **({"condition": _condition_entry(cond, cvq, cck, manifest)} if cond is not None else {}),
        },
    )
    tokens_manifest.write()
    return tokens_manifest


def _identity(ckpt: str, ck: Any) -> dict[str, Any]:
    """What names a tokenizer exactly: its checkpoint, step, weight digest and architecture."""
    return {
        "checkpoint": ckpt,
        "step": ck.step,
        "digest": ck.meta.get("digests", {}).get("vq"),
        "arch": OmegaConf.to_container(
            OmegaConf.load(ck.path / "config.yaml").model.get("arch", {}), resolve=True
        ),
    }


def _condition_entry(ckpt: str, cvq: Any, ck: Any, manifest: DatasetManifest) -> dict[str, Any]:
    """``dataset.json``'s ``condition``: the sources' code grid and the tokenizer that made them."""
    g = cvq.token_grid
    return {
        "grid": [g, g],
        "vocab": cvq.num_codes,
        "dtype": "uint16" if cvq.num_codes <= 2**16 else "int32",
        "channels": manifest.source_channels,
        "tokenizer": _identity(ckpt, ck),
    }


def read_tokens(manifest: DatasetManifest, split: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """All ``(tokens [N, h, w], labels [N], keys)`` of a token split, in shard order (small sets, tests)."""
    toks, labels, keys = [], [], []
    for sample in wds.tarfile_samples([{"url": p} for p in manifest.shard_paths(split)]):
        toks.append(np.load(io.BytesIO(sample["tokens.npy"]), allow_pickle=False))
        labels.append(int(sample.get("cls", b"0")))
        keys.append(sample["__key__"])
    return np.stack(toks), np.array(labels), keys


def read_conditions(manifest: DatasetManifest, split: str) -> tuple[np.ndarray, np.ndarray]:
    """All ``(condition codes [N, h, w], labels [N])`` of a paired token split, in shard order
    (what a conditioned prior is evaluated on, in order)."""
    conds, labels = [], []
    for sample in wds.tarfile_samples([{"url": p} for p in manifest.shard_paths(split)]):
        conds.append(np.load(io.BytesIO(sample["cond.npy"]), allow_pickle=False))
        labels.append(int(sample.get("cls", b"0")))
    if not conds:
        raise ValueError(f"no condition codes in the {split} split of {manifest.root}")
    return np.stack(conds), np.array(labels)


__all__ = ["read_conditions", "read_tokens", "tokenize_dataset", "tokenize_shard"]
