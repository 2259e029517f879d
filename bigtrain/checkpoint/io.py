"""Training checkpoints: ``run.dir/checkpoints/step-XXXXXXXX/``, written atomically, keep-last-k.

A checkpoint is a folder with one ``.pt`` file per component (``G``, ``D``, ``G_ema``, ``opt_G``,
... shared by all ranks; ``rng.rankR`` and ``data.rankR`` per rank), the resolved ``config.yaml``,
and ``meta.json`` written last with the step and a content digest of every component. Everything
is written into ``.tmp-step-XXXXXXXX`` first and renamed into place, so a crash mid-save leaves the
previous checkpoint untouched and the half-written folder is never mistaken for a checkpoint.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import re
import shutil
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch

from bigtrain import distributed as bdist
from bigtrain.checkpoint.best import protected_names
from bigtrain.checkpoint.digest import digest
from bigtrain.errors import CheckpointError

log = logging.getLogger(__name__)

STEP_RE = re.compile(r"^step-(\d{8})$")
META = "meta.json"


@dataclass
class Checkpoint:
    path: Path
    step: int
    meta: dict[str, Any]

    def component_names(self) -> list[str]:
        return sorted(self.meta.get("digests", {}))

    def shared_components(self, *, weights_only: bool = False) -> dict[str, Any]:
        """The rank-independent components a task loads: not ``rng.rankR`` / ``data.rankR``, not the
        trainer's counters, not an engine's own files in a subfolder (``deepspeed/...``)."""
        return {
            n: self.load(n, weights_only=weights_only)
            for n in self.component_names()
            if "." not in n and "/" not in n and n != "trainer"
        }

    def load(self, name: str, *, weights_only: bool = False) -> Any:
        """Component ``name``. ``weights_only=True`` unpickles tensors and plain containers only
        (never code): for a checkpoint from elsewhere, read for its weights (``bigtrain.load``,
        ``bigtrain export``, ``init_from``). Resuming a run reads its own files in full (optimizer
        and RNG states, an engine's pickles)."""
        f = self.path / f"{name}.pt"
        if not f.is_file():
            raise CheckpointError(f"checkpoint {self.path} has no component '{name}'")
        try:
            # an engine's pickles (DeepSpeed) import their library, whose logger would print to
            # stdout: keep stdout for the commands' own output (`bigtrain inspect --json`)
            with contextlib.redirect_stdout(sys.stderr):
                return torch.load(f, map_location="cpu", weights_only=weights_only)
        except Exception as exc:  # torch raises many types for a damaged zip/pickle
            raise CheckpointError(f"cannot read {f}: {type(exc).__name__}: {exc}") from exc

    def verify(self) -> None:
        """Recompute every component's digest and compare with meta.json (raises on a mismatch)."""
        for name, expected in self.meta.get("digests", {}).items():
            if digest(self.load(name)) != expected:
                raise CheckpointError(
                    f"checkpoint component {self.path / (name + '.pt')} does not match its digest"
                )


def checkpoint_root(run_dir: str | Path) -> Path:
    return Path(run_dir) / "checkpoints"


def open_checkpoint(path: str | Path) -> Checkpoint:
    path = Path(path).expanduser()
    meta_file = path / META
    if not meta_file.is_file():
        raise CheckpointError(f"not a complete checkpoint (no {META}): {path}")
    try:
        meta = json.loads(meta_file.read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"unreadable {meta_file}: {exc}") from exc
    return Checkpoint(path, int(meta["step"]), meta)


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    root = checkpoint_root(run_dir)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and STEP_RE.match(p.name) and (p / META).is_file()]
    return sorted(found, key=lambda p: int(STEP_RE.match(p.name).group(1)))  # type: ignore[union-attr]


def latest_valid(run_dir: str | Path, verify: bool = True) -> Checkpoint | None:
    """The newest checkpoint that opens (and verifies); damaged ones are reported and passed over."""
    for path in reversed(list_checkpoints(run_dir)):
        try:
            ck = open_checkpoint(path)
            if verify:
                ck.verify()
            return ck
        except CheckpointError as exc:
            log.error("skipping damaged checkpoint: %s", exc)
    return None


def resolve_checkpoint(path: str | Path) -> Checkpoint:
    """A checkpoint folder as it is, or a run folder's newest valid checkpoint (what the commands
    and ``bigtrain.load`` accept as CKPT)."""
    p = Path(path).expanduser()
    if (p / META).is_file():
        return open_checkpoint(p)
    if checkpoint_root(p).is_dir():
        ck = latest_valid(p)
        if ck is None:
            raise CheckpointError(f"{p}: no valid checkpoint under checkpoints/")
        return ck
    raise CheckpointError(f"{p}: not a checkpoint folder (meta.json) or a run folder (checkpoints/)")


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _save_file(obj: Any, path: Path) -> None:
    """Serialise in memory, then write and fsync.

    Streaming ``torch.save`` into the file reports a full disk as a RuntimeError from its zip
    writer ("unexpected pos ..."), which says nothing of the cause; a plain ``write`` of the bytes
    raises ``OSError(ENOSPC)`` / ``EROFS``, which the caller turns into one clear line.
    """
    buf = io.BytesIO()
    torch.save(obj, buf)
    with open(path, "wb") as f:
        f.write(buf.getbuffer())
        f.flush()
        os.fsync(f.fileno())


class NativeState(Protocol):
    """An engine that writes and reads its own files inside bigtrain's checkpoint folder (DeepSpeed's
    partitioned optimizer state), as one checkpoint component. Both calls are collective."""

    def save_native(self, folder: Path) -> dict[str, str]:
        """Write into ``folder``; the digests of the files this rank wrote, by component name
        (``deepspeed/zero_pp_rank_0_mp_rank_00_optim_states``)."""
        ...

    def load_native(self, ck: Checkpoint) -> None: ...


def save_checkpoint(
    run_dir: str | Path,
    step: int,
    shared: dict[str, Any],
    per_rank: dict[str, Any],
    meta: dict[str, Any],
    config_yaml: str,
    keep_last: int,
    natives: Sequence[NativeState] = (),
) -> Path:
    """Collective: every rank calls it. ``shared`` is written by rank 0, ``per_rank`` by each rank,
    and every :class:`NativeState` in ``natives`` writes its own files on every rank, after
    bigtrain's and before the atomic rename, with their digests in ``meta.json`` like the rest.

    Returns the final folder. On an I/O error the temporary folder is removed and the previous
    checkpoint is left as it was.
    """
    root = checkpoint_root(run_dir)
    final = root / f"step-{step:08d}"
    tmp = root / f".tmp-step-{step:08d}"
    rank = bdist.rank()
    error: str | None = None
    try:
        if rank == 0:
            root.mkdir(parents=True, exist_ok=True)
            if tmp.exists():
                shutil.rmtree(tmp)
            tmp.mkdir()
    except OSError as exc:
        error = f"{type(exc).__name__}: {exc}"
    bdist.barrier()
    digests: dict[str, str] = {}
    try:
        if error is None and not tmp.is_dir():
            raise OSError(f"checkpoint folder {tmp} is not visible on rank {rank}")
        if error is None:
            for name, obj in per_rank.items():
                key = f"{name}.rank{rank}"
                _save_file(obj, tmp / f"{key}.pt")
                digests[key] = digest(obj)
            if rank == 0:
                for name, obj in shared.items():
                    _save_file(obj, tmp / f"{name}.pt")
                    digests[name] = digest(obj)
    except OSError as exc:
        error = f"{type(exc).__name__}: {exc}"
    # collective: every rank writes its engine files, or (after an error anywhere) none does
    if natives and not any(bdist.all_gather_objects(error)):
        try:
            for native in natives:
                digests.update(native.save_native(tmp))
        except (OSError, RuntimeError) as exc:
            error = f"{type(exc).__name__}: {exc}"
    gathered = bdist.all_gather_objects((digests, error))
    errors = [e for _, e in gathered if e]
    if rank == 0:
        try:
            if errors:
                raise OSError(errors[0])
            for d, _ in gathered:
                digests.update(d)
            (tmp / "config.yaml").write_text(config_yaml)
            full_meta = {
                "format": 1,
                "step": step,
                "world_size": bdist.world_size(),
                "created": time.time(),
                **meta,
                "digests": dict(sorted(digests.items())),
            }
            meta_tmp = tmp / (META + ".part")
            with open(meta_tmp, "w") as f:
                json.dump(full_meta, f, indent=2)
                f.flush()
                os.fsync(f.fileno())
            meta_tmp.replace(tmp / META)
            _fsync_dir(tmp)
            if final.exists():  # the same step saved again (e.g. end of run right after a periodic save)
                shutil.rmtree(final)
            tmp.replace(final)
            _fsync_dir(root)
        except OSError as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            prev = list_checkpoints(run_dir)
            where = f"; previous checkpoint intact: {prev[-1]}" if prev else ""
            errors = [f"could not write checkpoint {final}: {type(exc).__name__}: {exc}{where}"]
        else:
            prune(run_dir, keep_last)
    # rank 0's verdict decides for everyone, so all ranks raise (or go on) together
    verdict = bdist.all_gather_objects(errors[0] if rank == 0 and errors else None)[0]
    if verdict:
        raise CheckpointError(verdict)
    return final


def prune(run_dir: str | Path, keep_last: int) -> None:
    """Main process: remove half-written folders, and checkpoints beyond the last ``keep_last``
    that are not among ``trainer.keep_best``'s (after each save, and when ``best.json`` changed)."""
    # Half-written folders left by a process killed mid-save (kill -9, node failure): only rank 0
    # writes them and it has just finished its own, so any that remain are dead.
    for stale in checkpoint_root(run_dir).glob(".tmp-step-*"):
        shutil.rmtree(stale, ignore_errors=True)
        log.warning("removed half-written checkpoint folder %s", stale)
    if keep_last <= 0:
        return
    best = protected_names(run_dir)  # trainer.keep_best's checkpoints stay
    for old in list_checkpoints(run_dir)[:-keep_last]:
        if old.name in best:
            continue
        shutil.rmtree(old, ignore_errors=True)
        log.info("removed old checkpoint %s (keep_last=%d)", old, keep_last)
