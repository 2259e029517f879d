"""Every config file composes against the typed schema; bad keys, types and combinations fail."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf

from bigtrain.config.schema import register
from bigtrain.config.validate import ConfigError, validate

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
register()


def _compose(*overrides: str):  # noqa: ANN202
    with initialize_config_dir(str(CONFIGS), version_base="1.3"):
        return compose("train", overrides=list(overrides))


GROUP_OPTIONS = [
    f"{d.name}={f.stem}" for d in sorted(CONFIGS.iterdir()) if d.is_dir() for f in sorted(d.glob("*.yaml"))
]


@pytest.mark.parametrize("override", GROUP_OPTIONS)
def test_every_config_file_composes(override: str) -> None:
    cfg = _compose(override, "data.path=/x")
    assert OmegaConf.to_container(cfg, resolve=True)
    if override.startswith("experiment="):
        nc = 10 if cfg.model.conditional else 0
        validate(cfg, num_classes=max(nc, 10), data_kind="tokens" if cfg.task == "prior" else "images")


def test_experiment_presets_found() -> None:
    assert {"experiment=mnist_dcgan", "experiment=mnist_gan", "experiment=mnist_wgan_gp"} <= set(
        GROUP_OPTIONS
    )


def test_unknown_key_and_wrong_type_are_rejected() -> None:
    with pytest.raises(ConfigCompositionException, match="max_stepz"):
        _compose("trainer.max_stepz=3")
    with pytest.raises(ConfigCompositionException, match="max_steps"):
        _compose("trainer.max_steps=abc")
    with pytest.raises(ConfigCompositionException, match="loss"):
        _compose("loss.name=wasserstein")


def test_cross_field_rules() -> None:
    with pytest.raises(ConfigError, match="model.d_norm=layer"):
        validate(_compose("loss=wgan_gp", "data.path=/x"), num_classes=10)
    with pytest.raises(ConfigError, match="conditional"):
        validate(_compose("model.conditional=true", "data.path=/x"), num_classes=0)
    with pytest.raises(ConfigError, match="data.batch_size"):
        validate(_compose("data.batch_size=0", "data.path=/x"), num_classes=0)
