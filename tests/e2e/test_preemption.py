"""A signal mid-run: every rank saves at the next step boundary, exits cleanly, and the same
command resumes to exactly the state an uninterrupted run reaches."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

from mlflow.tracking import MlflowClient

from tests.conftest import BIGTRAIN, TINY, run_cli


def _args(mnist: Path, run_dir: Path, db: Path, steps: int) -> list[str]:
    return [
        "train",
        "experiment=mnist_dcgan",
        f"data.path={mnist}",
        f"run.dir={run_dir}",
        f"tracking.uri=sqlite:///{db}",
        *TINY,
        "eval.enabled=false",
        "trainer.ckpt_every=10",
        "trainer.sample_every=1000",
        f"trainer.max_steps={steps}",
    ]


def wait_for(path: Path, proc: subprocess.Popen[str], timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while not path.exists():
        if proc.poll() is not None:
            raise AssertionError(
                f"training exited {proc.returncode} before {path} appeared:\n{proc.stderr.read()}"
            )
        if time.time() > deadline:
            proc.kill()
            raise AssertionError(f"{path} did not appear in {timeout} s")
        time.sleep(0.05)


def _digests(ckpt: Path) -> dict:
    return json.loads(run_cli("inspect", str(ckpt), "--json").stdout)["digests"]


def test_sigterm_saves_at_the_next_step_and_resume_is_exact(mnist_shards: Path, tmp_path: Path) -> None:
    db, run = tmp_path / "mlflow.db", tmp_path / "interrupted"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [*BIGTRAIN, *_args(mnist_shards, run, db, 1_000_000)], env=env, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    wait_for(run / "checkpoints" / "step-00000010" / "meta.json", proc)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-3000:]
    status = json.loads((run / "status.json").read_text())
    stopped = status["step"]
    assert status["status"] == "KILLED" and stopped >= 10
    assert f"stopped by a signal: saved step {stopped}" in out
    assert "signal SIGTERM" in err
    ckpt = run / "checkpoints" / f"step-{stopped:08d}"
    assert (ckpt / "meta.json").exists()  # a complete checkpoint at the step it stopped
    run_id = json.loads((ckpt / "meta.json").read_text())["mlflow_run_id"]
    assert MlflowClient(f"sqlite:///{db}").get_run(run_id).info.status == "KILLED"

    final = stopped + 15
    run_cli(*_args(mnist_shards, run, db, final))  # the same command (longer): resumes
    straight = tmp_path / "straight"
    run_cli(*_args(mnist_shards, straight, tmp_path / "other.db", final))
    name = f"step-{final:08d}"
    assert _digests(run / "checkpoints" / name) == _digests(straight / "checkpoints" / name)
    assert MlflowClient(f"sqlite:///{db}").get_run(run_id).info.status == "FINISHED"  # the same run


def test_usr2_outside_slurm_saves_and_says_how_to_resume(mnist_shards: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    proc = subprocess.Popen(
        [*BIGTRAIN, *_args(mnist_shards, run, tmp_path / "m.db", 1_000_000), "tracking.enabled=false"],
        env={k: v for k, v in os.environ.items() if not k.startswith("SLURM_")},
        text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    wait_for(run / "checkpoints" / "step-00000010" / "meta.json", proc)
    proc.send_signal(signal.SIGUSR2)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-3000:]
    assert "preempted: saved step" in out and "run the same command to resume" in out
    assert "not inside a SLURM job" not in err  # requeue is only attempted inside a job
