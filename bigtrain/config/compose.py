"""Compose the training config outside the Hydra app (``bigtrain info``, ``bigtrain doctor``).

The same root config and overrides as ``bigtrain train``, so what these commands report is what a
run with those overrides will use; a bad override is a one-line :class:`ConfigError`.
"""

from __future__ import annotations

from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.errors import HydraException
from omegaconf import DictConfig
from omegaconf.errors import OmegaConfBaseException

from bigtrain.config.schema import register
from bigtrain.config.validate import ConfigError

CONFIG_DIR = str(Path(__file__).resolve().parents[2] / "configs")


def compose_config(overrides: list[str]) -> DictConfig:
    register()
    try:
        with initialize_config_dir(CONFIG_DIR, version_base="1.3"):
            return compose("train", overrides=overrides)
    except (HydraException, OmegaConfBaseException) as exc:
        raise ConfigError(" ".join(str(exc).split())) from None


__all__ = ["CONFIG_DIR", "compose_config"]
