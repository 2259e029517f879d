"""DeepSpeed ZeRO: importing it quietly, joining bigtrain's process group, and its config.

DeepSpeed's own engine is used, not Accelerate's DeepSpeed plugin (whose path imports the
``transformers`` package); Accelerate keeps the process group and DeepSpeed joins it, and a single
process without a launcher gets a 1-rank group of its own.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import sys
from typing import Any

import torch

from bigtrain.distributed import is_dist
from bigtrain.errors import ConfigError


def import_deepspeed() -> Any:
    """DeepSpeed, with its logger on stderr (it prints to stdout) and at WARNING; not installed (it
    is the optional ``[deepspeed]`` extra): one :class:`ConfigError` line naming the way out."""
    try:
        with contextlib.redirect_stdout(sys.stderr):
            import deepspeed
    except ImportError as exc:
        raise ConfigError(
            f"prior.engine=deepspeed needs DeepSpeed ({exc}): install the [deepspeed] extra "
            "(`DS_BUILD_OPS=0 pip install --no-build-isolation deepspeed`, as `make venv` does), "
            "or use prior.engine=torch"
        ) from None
    logging.getLogger("DeepSpeed").setLevel(logging.WARNING)
    return deepspeed


def init_deepspeed() -> Any:
    """DeepSpeed, joined to the process group; a single process (no launcher) gets a 1-rank one."""
    deepspeed = import_deepspeed()
    if not is_dist():
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        if "MASTER_PORT" not in os.environ:
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                os.environ["MASTER_PORT"] = str(s.getsockname()[1])
        for k, v in (("RANK", "0"), ("LOCAL_RANK", "0"), ("WORLD_SIZE", "1")):
            os.environ.setdefault(k, v)
    deepspeed.init_distributed(dist_backend="nccl" if torch.cuda.is_available() else "gloo")
    return deepspeed


def prebuilt_ops() -> list[str]:
    """The DeepSpeed ops compiled at install time (the rest are JIT-built on first use)."""
    logging.disable(logging.WARNING)  # its import logs which accelerator it picked, as a warning
    try:
        from deepspeed.git_version_info import installed_ops  # type: ignore[import-not-found]
    finally:
        logging.disable(logging.NOTSET)
    return sorted(name for name, ok in installed_ops.items() if ok)


def zero_config(
    *, micro_batch: int, accumulation: int, precision: str, zero_stage: int, grad_clip: float
) -> dict[str, Any]:
    """DeepSpeed's config, derived from bigtrain's (one source of truth)."""
    # A non-finite gradient must be detected so that DeepSpeed drops the update (on_nonfinite=skip);
    # in fp32 ZeRO it is detected while the gradient norm is computed, i.e. with clipping on.
    clip = float(grad_clip) if grad_clip > 0 else 1e12
    return {
        "train_micro_batch_size_per_gpu": int(micro_batch),
        "gradient_accumulation_steps": int(accumulation),
        "gradient_clipping": clip,
        "bf16": {"enabled": precision == "bf16", "check_grad_overflow": True},
        "fp16": {"enabled": precision == "fp16", "initial_scale_power": 16},
        "zero_optimization": {
            "stage": int(zero_stage),
            "overlap_comm": torch.cuda.is_available(),
            "contiguous_gradients": True,
        },
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 2**31 - 1,
        "wall_clock_breakdown": False,
    }


__all__ = ["import_deepspeed", "init_deepspeed", "prebuilt_ops", "zero_config"]
