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


def test_train_help_lists_the_chosen_familys_typed_options(capsys) -> None:  # noqa: ANN001
    from bigtrain.cli.train import main as train_main

    assert train_main(["experiment=mnist_biggan", "--help"]) == 0
    out = capsys.readouterr().out
    assert "model.arch.* of model=biggan" in out
    assert (
        "  attention         list[int] = [16] (default [64])" in out
    )  # the preset's value, then the default
    assert "  sn_eps" in out and "spectral norm epsilon" in out
    assert (
        "tasks (task=NAME):" in out
        and "  tokenizer: models vqgan; sections vq; optimizers optim.vq, optim.d" in out
    )
    assert "  psnr: PSNR (dB)" in out


def test_info_help_and_arch_values(capsys) -> None:  # noqa: ANN001
    from bigtrain.cli.info import main as info_main

    assert info_main(["task=tokenizer", "--help"]) == 0
    assert "model.arch.* of model=vqgan" in capsys.readouterr().out
    assert info_main(["experiment=mnist_progan"]) == 0
    assert "model.arch: fmap_base=512, fmap_max=64, mbstd_group=4" in capsys.readouterr().out
