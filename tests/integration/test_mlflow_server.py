"""A real `mlflow server` on loopback: training logs to it over HTTP (params, metrics, the grid
image, config.yaml through the server's artifact proxy), and a resumed run continues the same run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from tests.conftest import TINY, free_port, run_cli


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    root = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    log = open(root / "server.log", "w")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
            "--backend-store-uri",
            f"sqlite:///{root / 'mlflow.db'}",
            "--artifacts-destination",
            str(root / "artifacts"),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                if r.status == 200:
                    break
        except OSError:
            time.sleep(0.5)
        if proc.poll() is not None:
            break
    else:
        proc.kill()
        pytest.fail("mlflow server did not come up: " + (root / "server.log").read_text()[-3000:])
    if proc.poll() is not None:
        pytest.fail("mlflow server exited: " + (root / "server.log").read_text()[-3000:])
    yield url
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
    log.close()


def test_training_logs_to_an_http_server_and_resumes_into_the_same_run(
    mlflow_server: str, mnist_shards: Path, tmp_path: Path
) -> None:
    common = [
        "train",
        "experiment=mnist_dcgan",
        f"data.path={mnist_shards}",
        f"run.dir={tmp_path / 'run'}",
        f"tracking.uri={mlflow_server}",
        "tracking.experiment=server-test",
        *TINY,
        "trainer.sample_every=10",
        "eval.every=10",
        "trainer.ckpt_every=10",
    ]
    run_cli(*common, "trainer.max_steps=10")
    run_cli(*common, "trainer.max_steps=20")
    meta = json.loads((tmp_path / "run" / "checkpoints" / "step-00000020" / "meta.json").read_text())
    client = MlflowClient(mlflow_server)
    exp = client.get_experiment_by_name("server-test")
    runs = client.search_runs([exp.experiment_id])
    assert [r.info.run_id for r in runs] == [meta["mlflow_run_id"]]
    run = runs[0]
    assert run.info.status == "FINISHED" and run.data.params["loss.name"] == "non_saturating"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "fid/digits")] == [10, 20]
    assert [m.step for m in client.get_metric_history(run.info.run_id, "loss/G")] == [5, 10, 15, 20]
    arts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.yaml", "images"} <= arts
    local = client.download_artifacts(run.info.run_id, "config.yaml", str(tmp_path))
    assert "mnist_dcgan" in Path(local).read_text()


def test_a_concurrent_sweep_loses_nothing_and_compares(
    mlflow_server: str, mnist_shards: Path, tmp_path: Path
) -> None:
    """Two trainings log to one server at the same time (a sweep): no lock errors, every metric
    arrives, the EMA generator is a model artifact, and `bigtrain compare` plots both curves."""
    steps, every = 40, 10
    procs = {}
    for loss in ("hinge", "lsgan"):
        args = [
            "train",
            "experiment=mnist_dcgan",
            f"loss={loss}",
            f"data.path={mnist_shards}",
            f"run.dir={tmp_path / loss}",
            f"run.name=sweep-{loss}",
            f"tracking.uri={mlflow_server}",
            "tracking.experiment=sweep",
            *TINY,
            "trainer.log_every=2",
            f"trainer.sample_every={every}",
            f"eval.every={every}",
            f"trainer.ckpt_every={every}",
            f"trainer.max_steps={steps}",
        ]
        procs[loss] = subprocess.Popen(
            [sys.executable, "-m", "bigtrain", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "OMP_NUM_THREADS": "1"},
        )
    for loss, proc in procs.items():
        _, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, f"{loss}: {err[-3000:]}"
        assert "database is locked" not in err and "Traceback" not in err
    client = MlflowClient(mlflow_server)
    runs = client.search_runs([client.get_experiment_by_name("sweep").experiment_id])
    assert sorted(r.data.params["loss.name"] for r in runs) == ["hinge", "lsgan"]
    for run in runs:
        rid = run.info.run_id
        assert run.info.status == "FINISHED"
        assert [m.step for m in client.get_metric_history(rid, "loss/G")] == list(range(2, steps + 1, 2))
        assert [m.step for m in client.get_metric_history(rid, "fid/digits")] == list(
            range(every, steps + 1, every)
        )
        (model,) = [m for m in client.search_logged_models(experiment_ids=[run.info.experiment_id])
                    if m.source_run_id == rid]  # fmt: skip
        files = {a.path for a in client.list_logged_model_artifacts(model.model_id)}
        assert {"MLmodel", "data", "requirements.txt"} <= files  # a logged pyfunc model
        loss = run.data.params["loss.name"]
        assert run.data.tags["last_checkpoint"] == str(
            (tmp_path / loss / "checkpoints" / f"step-{steps:08d}").resolve()
        )
        assert run.data.tags["checkpoint_dir"] == str((tmp_path / loss / "checkpoints").resolve())
        last_fid = client.get_metric_history(rid, "fid/digits")[-1].value
        assert run.data.tags["eval_metric"] == "fid/digits"
        assert run.data.tags["eval_last"] == run.data.tags["fid_last"] == f"{last_fid:.4f}"

    png = tmp_path / "compare.png"
    out = run_cli("compare", "--experiment", "sweep", "--uri", mlflow_server, "--out", str(png))
    rows = [line for line in out.stdout.splitlines() if line.startswith("| ") and "sweep-" in line]
    assert len(rows) == 2 and any("hinge" in r for r in rows) and any("lsgan" in r for r in rows)
    header = out.stdout.splitlines()[0]
    assert "loss.name" in header and "fid/digits last" in header
    from PIL import Image

    assert Image.open(png).size[0] > 400
    data = json.loads(
        run_cli(
            "compare", "--experiment", "sweep", "--uri", mlflow_server, "--out", str(png), "--json"
        ).stdout
    )
    assert data["metric"] == "fid/digits" and all(len(r["curve"]) == steps // every for r in data["runs"])


def _open_tracker(args: tuple[str, str, object]) -> str:
    uri, experiment, barrier = args
    from bigtrain.tracking.mlflow_tracker import MLflowTracker

    barrier.wait()  # type: ignore[attr-defined] - every job asks for the new experiment at once
    tracker = MLflowTracker(uri, experiment, "job", {"x": 1})
    tracker.close()
    return tracker.run_id


def test_jobs_starting_together_share_one_new_experiment(mlflow_server: str) -> None:
    """A sweep's jobs start at the same moment and all find the experiment missing; the ones that
    lose the race to create it must use the winner's, not fail (found by the sweep test on CI)."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    n = 4
    with ctx.Manager() as manager:
        barrier = manager.Barrier(n)
        with ctx.Pool(n) as pool:
            run_ids = pool.map(_open_tracker, [(mlflow_server, "race", barrier)] * n)
    client = MlflowClient(mlflow_server)
    exp = client.get_experiment_by_name("race")
    runs = client.search_runs([exp.experiment_id])
    assert sorted(r.info.run_id for r in runs) == sorted(run_ids) and len(set(run_ids)) == n
