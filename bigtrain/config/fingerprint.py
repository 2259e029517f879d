"""What makes a run the same run: the resolved config less the keys that may change on resume.

A run is resumed from its folder, so without a check a re-run with other overrides (another loss,
another normalisation) silently continues the old weights under a new recipe, or crashes deep in
``load_state_dict``. A checkpoint records the fingerprint of its config (``meta.json``) next to the
config itself (``config.yaml``); resuming compares the two key by key and stops on a difference
unless the user allows it (``allow_changes``).

:data:`MAY_CHANGE` is the one list of keys that never make a different run: how long it trains,
how often it logs, samples, evaluates and saves, where it logs and finds its data, and how the
process is launched. The README's "Resuming" section prints the same list (a test keeps them equal).
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
from collections.abc import Iterable, Mapping
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

# keys (fnmatch patterns over dotted names) that may change between a checkpoint and its resume
MAY_CHANGE: tuple[str, ...] = (
    "trainer.max_steps",
    "trainer.log_every",
    "trainer.sample_every",
    "trainer.ckpt_every",
    "trainer.keep_last",
    "trainer.keep_best.*",
    "trainer.progress",
    "trainer.max_nonfinite_skips",
    "trainer.requeue_signals",
    "trainer.stop_signals",
    "trainer.collective_timeout_s",
    "eval.every",
    "eval.enabled",
    "tracking.*",
    "data.path",
    "data.num_workers",
    "data.record_keys",
    "data.retries",
    "data.retry_backoff_s",
    "data.max_shard_errors",
    "data.storage_options",
    "data.storage_options.*",
    "run.*",
    "resume",
    "allow_changes",
    "init_from.*",  # fine-tuning's source: a resumed run continues its own checkpoint
    "prior.tokenizer",
)


def flatten(cfg: DictConfig | Mapping[str, Any]) -> dict[str, Any]:
    """Dotted leaf keys to plain values (lists are leaves: a schedule is one value)."""
    if isinstance(cfg, DictConfig):
        cfg = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)  # type: ignore[assignment]
    out: dict[str, Any] = {}

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, Mapping) and node:
            for k, v in node.items():
                walk(v, f"{prefix}{k}.")
        else:
            out[prefix[:-1]] = list(node) if isinstance(node, ListConfig) else node

    walk(cfg, "")
    return out


def may_change(key: str, extra: Iterable[str] = ()) -> bool:
    return any(fnmatch.fnmatchcase(key, p) for p in (*MAY_CHANGE, *extra))


def identity(cfg: DictConfig | Mapping[str, Any]) -> dict[str, Any]:
    """The keys that make the run: everything but :data:`MAY_CHANGE`. With a global batch, the
    per-process batch follows the process count, so the global batch is the identity."""
    flat = flatten(cfg)
    derived = {"data.batch_size"} if (flat.get("data.global_batch_size") or 0) > 0 else set()
    return {k: v for k, v in flat.items() if not may_change(k) and k not in derived}


def fingerprint(cfg: DictConfig | Mapping[str, Any]) -> str:
    """A short hash of :func:`identity`, recorded in each checkpoint's ``meta.json``."""
    blob = json.dumps(identity(cfg), sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def changes(
    old: DictConfig | Mapping[str, Any], new: DictConfig | Mapping[str, Any]
) -> dict[str, tuple[Any, Any]]:
    """``{key: (old value, new value)}`` over the identity keys that differ (absent: ``None``)."""
    a, b = identity(old), identity(new)
    return {k: (a.get(k), b.get(k)) for k in sorted(a.keys() | b.keys()) if a.get(k) != b.get(k)}


def describe(diff: Mapping[str, tuple[Any, Any]], limit: int = 8) -> str:
    """``loss.name: 'hinge' -> 'wgan_gp', ...`` (at most ``limit`` keys, then a count)."""
    parts = [f"{k}: {old!r} -> {new!r}" for k, (old, new) in list(diff.items())[:limit]]
    if len(diff) > limit:
        parts.append(f"and {len(diff) - limit} more")
    return ", ".join(parts)


__all__ = ["MAY_CHANGE", "changes", "describe", "fingerprint", "flatten", "identity", "may_change"]
