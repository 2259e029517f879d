"""``trainer.precision=auto`` takes ``accelerate launch --mixed_precision``; contradictions stop."""

from __future__ import annotations

import pytest

from bigtrain.config.launcher import ENV, resolve_precision
from bigtrain.errors import ConfigError
from tests.conftest import compose


@pytest.mark.parametrize(
    ("configured", "launcher", "resolved"),
    [
        ("auto", None, "no"),  # no launcher: fp32
        ("auto", "bf16", "bf16"),
        ("auto", "no", "no"),
        ("bf16", None, "bf16"),
        ("bf16", "no", "bf16"),  # accelerate launch says "no" when given nothing: not a contradiction
        ("bf16", "bf16", "bf16"),
        ("fp16", "fp16", "fp16"),
    ],
)
def test_precision_follows_the_launcher_when_the_config_leaves_it(
    configured: str, launcher: str | None, resolved: str
) -> None:
    assert resolve_precision(configured, launcher) == resolved


def test_a_contradiction_stops_in_one_line() -> None:
    with pytest.raises(ConfigError) as err:
        resolve_precision("bf16", "fp16")
    assert str(err.value) == (
        "trainer.precision=bf16 but the launcher asks for fp16 (accelerate launch --mixed_precision / "
        f"accelerate config, {ENV}); make them agree, or set trainer.precision=auto to take the launcher's"
    )
    with pytest.raises(ConfigError, match="fp8"):
        resolve_precision("auto", "fp8")
    with pytest.raises(ConfigError, match="launcher asks for bf16"):
        resolve_precision("no", "bf16")


def test_the_resolved_precision_is_what_the_config_records(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV, raising=False)
    assert compose("experiment=mnist_dcgan").trainer.precision == "no"
    assert compose("experiment=imagenet256_gpt_b").trainer.precision == "bf16"  # a preset that names it
    monkeypatch.setenv(ENV, "bf16")
    assert compose("experiment=mnist_dcgan").trainer.precision == "bf16"
    monkeypatch.setenv(ENV, "fp16")
    with pytest.raises(ConfigError, match="trainer.precision=bf16 but the launcher asks for fp16"):
        compose("experiment=imagenet256_gpt_b")
