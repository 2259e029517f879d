"""Settings a launcher gives: the number of processes and ``accelerate launch --mixed_precision``.

**The batch.** ``data.batch_size`` is per process; a recipe is stated as a global batch (the
reference's 2,048 for BigGAN at 128x128), which on P processes with A accumulations is
``P x A x data.batch_size``. ``data.global_batch_size`` states it: the per-process batch is then
derived from the launcher's world size (``WORLD_SIZE`` from torchrun / accelerate, or SLURM's task
count for ``srun -n N``), and a global batch that does not divide stops in one line.

**The precision.**
``accelerate launch`` passes its precision to the processes it starts as
``ACCELERATE_MIXED_PRECISION``, but bigtrain builds its own ``Accelerator`` from
``trainer.precision``, which used to win silently. ``trainer.precision=auto`` (the default) now
takes the launcher's value (fp32 without a launcher), and the resolved value is what the run's
config records. A launcher value that contradicts a precision the config names stops the run.
``accelerate launch`` says ``no`` when given nothing, so its ``no`` never contradicts a preset.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from omegaconf import DictConfig, open_dict

from bigtrain.errors import ConfigError

ENV = "ACCELERATE_MIXED_PRECISION"
TAKEN = ("no", "bf16", "fp16")  # fp8 needs Transformer Engine / MS-AMP paths bigtrain does not have


def launcher_precision(env: Mapping[str, str] | None = None) -> str | None:
    """The launcher's precision, or None when no launcher set one."""
    value = (os.environ if env is None else env).get(ENV, "").strip().lower()
    return value or None


def resolve_precision(configured: str, launcher: str | None) -> str:
    """``trainer.precision`` after the launcher: a concrete ``no``, ``bf16`` or ``fp16``."""
    if launcher is not None and launcher not in TAKEN:
        raise ConfigError(
            f"{ENV}={launcher} (accelerate launch --mixed_precision): bigtrain trains in {', '.join(TAKEN)}"
        )
    if configured == "auto":
        return launcher or "no"
    if launcher is not None and launcher != "no" and launcher != configured:
        raise ConfigError(
            f"trainer.precision={configured} but the launcher asks for {launcher} "
            f"(accelerate launch --mixed_precision / accelerate config, {ENV}); make them agree, "
            f"or set trainer.precision=auto to take the launcher's"
        )
    return configured


def launcher_world_size(env: Mapping[str, str] | None = None) -> int:
    """The processes the launcher started: ``WORLD_SIZE`` (torchrun, accelerate launch), else a
    SLURM step's task count (``srun -n N python -m bigtrain``), else 1."""
    env = os.environ if env is None else env
    if env.get("WORLD_SIZE"):
        return int(env["WORLD_SIZE"])
    if "SLURM_PROCID" in env:
        return int(env.get("SLURM_NTASKS", env.get("SLURM_NPROCS", "1")))
    return 1


def resolve_batch(batch: int, global_batch: int, world: int, accumulation: int) -> int:
    """The per-process batch: ``batch``, or ``global_batch / (world x accumulation)`` when a global
    batch is given (``batch`` 0: derived; otherwise it must agree)."""
    if global_batch <= 0:
        if batch <= 0:
            raise ConfigError("data.batch_size (per process) or data.global_batch_size must be > 0")
        return batch
    split = world * accumulation
    if global_batch % split:
        raise ConfigError(
            f"data.global_batch_size={global_batch} does not divide over {world} process(es) x "
            f"{accumulation} accumulation(s) = {split}; choose a multiple of {split}, or another "
            "process count or trainer.accumulation"
        )
    per = global_batch // split
    if batch > 0 and batch != per:
        raise ConfigError(
            f"data.batch_size={batch} per process disagrees with data.global_batch_size={global_batch} "
            f"over {world} process(es) x {accumulation} accumulation(s) ({per} per process); set "
            "data.batch_size=0 to derive it, or data.global_batch_size=0 to keep yours"
        )
    return per


def batch_over(cfg: DictConfig, world: int) -> int:
    """The global batch a resolved config trains with on ``world`` processes."""
    return int(cfg.data.batch_size) * world * int(cfg.trainer.accumulation)


def apply_launcher(
    cfg: DictConfig, env: Mapping[str, str] | None = None, world_size: int | None = None
) -> None:
    """Resolve ``trainer.precision`` and ``data.batch_size`` in place for the launcher's world size
    (or ``world_size``, for ``bigtrain info --world-size``); the config must be writable."""
    precision = resolve_precision(str(cfg.trainer.precision), launcher_precision(env))
    world = world_size or launcher_world_size(env)
    batch = resolve_batch(
        int(cfg.data.batch_size), int(cfg.data.global_batch_size), world, int(cfg.trainer.accumulation)
    )
    with open_dict(cfg):
        cfg.trainer.precision = precision
        cfg.data.batch_size = batch


__all__ = [
    "ENV",
    "apply_launcher",
    "batch_over",
    "launcher_precision",
    "launcher_world_size",
    "resolve_batch",
    "resolve_precision",
]
