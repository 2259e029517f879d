"""Shared by the benchmarks: ``key=value`` arguments and the one JSON result line."""

from __future__ import annotations

import json
import platform
import resource
import sys
from typing import Any

import torch


def parse_args(defaults: dict[str, Any], argv: list[str] | None = None) -> dict[str, Any]:
    """``python benchmarks/X.py key=value ...``: values take the type of their default. Dotted keys
    (``model.g_width=16``) are Hydra overrides for the benchmarked config, under ``"overrides"``."""
    out = dict(defaults)
    out["overrides"] = []
    for arg in sys.argv[1:] if argv is None else argv:
        key, sep, value = arg.partition("=")
        if sep and "." in key:
            out["overrides"].append(arg)
            continue
        if not sep or key not in defaults:
            raise SystemExit(
                f"unknown argument '{arg}'; known: {', '.join(f'{k}={v}' for k, v in defaults.items())}"
            )
        kind = type(defaults[key])
        out[key] = (
            value.lower() in ("1", "true", "yes")
            if kind is bool
            else kind(value)
            if defaults[key] is not None
            else value
        )
    return out


def peak_mem_gib(device: str) -> float:
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux: KiB


def emit(result: dict[str, Any]) -> None:
    result = {
        **result,
        "torch": torch.__version__,
        "host_cpu": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
    }
    print(json.dumps(result), flush=True)
