"""Start-up checks that types alone cannot express, for every task; each failure is one line
naming the keys. A task's own rules are its ``check_config`` (``bigtrain.train.task``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from omegaconf import OmegaConf

from bigtrain.config.schema import DOWNSAMPLE
from bigtrain.errors import ConfigError

COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
"""``torch.compile``'s modes (``trainer.compile_mode``)."""

ATTENTION_KERNELS = ("matmul", "sdpa")
"""BigGAN self-attention's kernels (``trainer.attention_kernel``): the release's three ops, or one
fused ``scaled_dot_product_attention``."""


def common_problems(cfg: Any) -> list[str]:
    """Rules on the sections every task shares (data, trainer, schedule, stages, evaluation)."""
    problems: list[str] = []
    if cfg.data.batch_size < 1:
        problems.append(f"data.batch_size must be >= 1 (got {cfg.data.batch_size})")
    if cfg.data.num_workers < 0:
        problems.append("data.num_workers must be >= 0")
    if cfg.trainer.max_steps < 1:
        problems.append("trainer.max_steps must be >= 1")
    if cfg.trainer.accumulation < 1:
        problems.append("trainer.accumulation must be >= 1")
    mode = str(cfg.trainer.get("compile_mode", "default"))
    if mode not in COMPILE_MODES:
        problems.append(f"trainer.compile_mode must be one of {', '.join(COMPILE_MODES)} (got '{mode}')")
    kernel = str(cfg.trainer.get("attention_kernel", "matmul"))
    if kernel not in ATTENTION_KERNELS:
        problems.append(
            f"trainer.attention_kernel must be one of {', '.join(ATTENTION_KERNELS)} (got '{kernel}')"
        )
    elif kernel != "matmul" and str(cfg.get("task", "gan")) != "gan":
        problems.append(f"trainer.attention_kernel={kernel} applies to task=gan only (BigGAN's attention)")
    if cfg.trainer.max_nonfinite_skips < 0:
        problems.append("trainer.max_nonfinite_skips must be >= 0")
    for key in ("log_every", "sample_every", "ckpt_every"):
        if cfg.trainer[key] < 1:
            problems.append(f"trainer.{key} must be >= 1")
    if int(cfg.stages.max_micro_batch) < 0:
        problems.append("stages.max_micro_batch must be >= 0 (0 = no cap)")
    if str(cfg.stages.downsample) not in DOWNSAMPLE:
        problems.append(
            f"stages.downsample must be one of {', '.join(DOWNSAMPLE)} (got '{cfg.stages.downsample}')"
        )
    if str(cfg.data.get("decode", "cpu")) == "gpu" and (
        str(cfg.data.resample) == "lanczos" or str(cfg.stages.downsample) == "box"
    ):
        problems.append(
            "data.decode=gpu resizes with torch's filters: set data.resample=bilinear or bicubic "
            f"(got {cfg.data.resample}) and keep stages.downsample=lanczos (got {cfg.stages.downsample})"
        )
    sched = cfg.optim.schedule
    if sched.warmup_steps < 0 or not 0.0 <= sched.min_lr_ratio <= 1.0:
        problems.append("optim.schedule: warmup_steps >= 0 and 0 <= min_lr_ratio <= 1 are required")
    if cfg.eval.enabled and cfg.eval.num_samples < 2:
        problems.append("eval.num_samples must be >= 2")
    kb = cfg.trainer.keep_best
    if kb.count < 0 or kb.mode not in ("min", "max"):
        problems.append(
            f"trainer.keep_best: count >= 0 and mode min or max are required (got {kb.count}, {kb.mode})"
        )
    return problems


# what to say about a mandatory key left without a value (schema: MISSING)
MISSING_HINTS = {"data.path": "data.path=PATH, a folder written by `bigtrain prepare`"}


def missing_values(cfg: Any) -> list[str]:
    """One problem per mandatory key without a value (``???``), with how to give it."""
    return [
        f"{key}: no value given (set {MISSING_HINTS.get(key, key + '=VALUE')})"
        for key in sorted(OmegaConf.missing_keys(cfg))
    ]


def raise_problems(problems: Sequence[str]) -> None:
    if problems:
        raise ConfigError("; ".join(problems))


__all__ = ["ConfigError", "common_problems", "missing_values", "raise_problems"]
