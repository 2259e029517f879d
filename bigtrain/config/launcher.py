"""Settings a launcher may give: ``accelerate launch --mixed_precision`` (or ``accelerate config``).

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


def apply_launcher(cfg: DictConfig, env: Mapping[str, str] | None = None) -> None:
    """Resolve ``trainer.precision`` in place (the config must be writable)."""
    value = resolve_precision(str(cfg.trainer.precision), launcher_precision(env))
    with open_dict(cfg):
        cfg.trainer.precision = value


__all__ = ["ENV", "apply_launcher", "launcher_precision", "resolve_precision"]
