"""`bigtrain doctor`: every check on real inputs, and exit code 1 exactly when a required one fails."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from bigtrain.cli.doctor import main as doctor_main
from tests.conftest import free_port


def _doctor(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, dict]:
    rc = doctor_main([*args, "--json"])
    report = json.loads(capsys.readouterr().out)
    return rc, {c["name"]: c for c in report["checks"]} | {"_ok": report["ok"]}


def test_a_ready_run(mnist_shards: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, checks = _doctor(
        capsys, "experiment=mnist_dcgan", f"data.path={mnist_shards}", f"run.dir={tmp_path / 'run'}",
        f"tracking.uri=sqlite:///{tmp_path / 'm.db'}",
    )  # fmt: skip
    assert rc == 0 and checks["_ok"]
    for name in (
        "torch",
        "accelerate",
        "webdataset",
        "mlflow",
        "clean-fid",
        "dataset",
        "checksums",
        "run_dir",
    ):
        assert checks[name]["status"] == "ok", checks[name]
    assert "4500 'train' images" in checks["dataset"]["detail"]
    assert checks["fid_weights"]["status"] == "info"  # digits features: Inception not needed
    assert checks["mlflow"]["status"] == "ok" and "will be created" in checks["mlflow"]["detail"]
    assert checks["cuda"]["status"] in ("ok", "info")
    assert checks["deepspeed"]["status"] in ("ok", "warn")


def test_changed_shard_missing_shard_and_absent_weights_fail(
    mnist_shards: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "data"
    shutil.copytree(mnist_shards, data)
    shard = sorted(data.glob("train-*.tar"))[0]
    raw = bytearray(shard.read_bytes())
    raw[5000] ^= 0xFF
    shard.write_bytes(bytes(raw))
    rc, checks = _doctor(capsys, "experiment=mnist_dcgan", f"data.path={data}", "eval.feature=inception")
    assert rc == 1 and not checks["_ok"]
    assert checks["checksums"]["status"] == "fail" and shard.name in checks["checksums"]["detail"]
    assert checks["fid_weights"]["status"] == "fail" and "download=True" in checks["fid_weights"]["detail"]
    shard.unlink()
    rc, checks = _doctor(capsys, "experiment=mnist_dcgan", f"data.path={data}", "--quick")
    assert rc == 1 and checks["dataset"]["status"] == "fail" and shard.name in checks["dataset"]["detail"]
    assert "checksums" not in checks


def test_unreachable_mlflow_server_fails(mnist_shards: Path, capsys: pytest.CaptureFixture[str]) -> None:
    uri = f"http://127.0.0.1:{free_port()}"
    rc, checks = _doctor(
        capsys, "experiment=mnist_dcgan", f"data.path={mnist_shards}", f"tracking.uri={uri}", "--quick"
    )
    assert rc == 1 and checks["mlflow"]["status"] == "fail" and "not reachable" in checks["mlflow"]["detail"]


def test_slurm_job_is_described(
    mnist_shards: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for k, v in {
        "SLURM_JOB_ID": "77",
        "SLURM_JOB_NUM_NODES": "2",
        "SLURM_NTASKS": "2",
        "SLURM_RESTART_COUNT": "1",
    }.items():
        monkeypatch.setenv(k, v)
    _, checks = _doctor(capsys, "experiment=mnist_dcgan", f"data.path={mnist_shards}", "--quick")
    assert "job 77" in checks["slurm"]["detail"] and "restarts 1" in checks["slurm"]["detail"]


def test_text_report(mnist_shards: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert doctor_main(["experiment=mnist_dcgan", "data.path=/nonexistent", "--quick"]) == 1
    out = capsys.readouterr().out
    assert "FAIL  dataset" in out and out.rstrip().endswith("1 problem(s): dataset")


def test_the_batch_split_for_this_launch(
    mnist_shards: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Inside a launch of 8 processes the doctor says what each one holds of a global batch."""
    monkeypatch.setenv("WORLD_SIZE", "8")
    _, checks = _doctor(capsys, "experiment=imagenet128_biggan", f"data.path={mnist_shards}",
                        f"run.dir={tmp_path / 'run'}", "tracking.enabled=false", "--quick")  # fmt: skip
    assert checks["batch"]["detail"] == (
        "2048 global = 32 per process x 8 process(es) x 8 accumulation(s) (from data.global_batch_size)"
    )
