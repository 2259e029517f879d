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
