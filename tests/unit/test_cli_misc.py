"""Small CLI and tracking pieces: usage, unknown commands, config flattening for MLflow params."""

from __future__ import annotations

from bigtrain.cli.main import main
from bigtrain.tracking import flatten


def test_usage_lists_every_command(capsys) -> None:  # noqa: ANN001
    assert main([]) == 0
    out = capsys.readouterr().out
    for cmd in ("prepare", "train", "inspect", "evaluate", "sample"):
        assert f"  {cmd}" in out


def test_unknown_command_is_an_error(capsys) -> None:  # noqa: ANN001
    assert main(["trian"]) == 2
    assert "unknown command 'trian'" in capsys.readouterr().err


def test_flatten_nested_config_for_mlflow_params() -> None:
    flat = flatten(
        {"model": {"name": "dcgan", "z_dim": 100}, "optim": {"g": {"betas": [0.5, 0.999]}}, "seed": 0}
    )
    assert flat == {"model.name": "dcgan", "model.z_dim": "100", "optim.g.betas": "[0.5, 0.999]", "seed": "0"}


def test_relative_sqlite_uri_is_recorded_absolute(tmp_path, monkeypatch) -> None:  # noqa: ANN001
    from bigtrain.tracking.mlflow_tracker import absolute_uri

    monkeypatch.chdir(tmp_path)
    assert absolute_uri("sqlite:///mlflow.db") == f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert absolute_uri("sqlite:////abs/m.db") == "sqlite:////abs/m.db"
    assert absolute_uri("http://127.0.0.1:5000") == "http://127.0.0.1:5000"
