"""bigtrain under a real SLURM (single node, started for this module): sbatch with preemption and
requeue that resumes exactly, `srun -n 2` as two ranks, and a job that runs out of time."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from tests.conftest import TINY, run_cli
from tests.slurm_cluster import SlurmCluster

REPO = Path(__file__).resolve().parents[2]
# The sbatch scripts ask for a GPU partition and 8 GPUs; a CPU test node overrides those lines.
CPU_NODE = ["--partition=debug", "--gpus-per-node=0", "--cpus-per-task=1", "--mem=2G"]


@pytest.fixture(scope="session")  # started once: a restart right after a stop can race the old daemons
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SlurmCluster]:
    c = SlurmCluster(tmp_path_factory.mktemp("slurm")).start()
    try:
        yield c
    finally:
        c.stop()


def _train_args(mnist: Path, db: Path, steps: int) -> list[str]:
    return [
        "experiment=mnist_dcgan",
        f"data.path={mnist}",
        f"tracking.uri=sqlite:///{db}",
        *TINY,
        "trainer.progress=true",  # the default (TINY turns it off): a batch job's log is not a terminal
        "trainer.log_every=100",
        "eval.enabled=false",
        "trainer.ckpt_every=50",
        "trainer.sample_every=100000",
        f"trainer.max_steps={steps}",
    ]


def _digests(ckpt: Path) -> dict:
    return json.loads(run_cli("inspect", str(ckpt), "--json").stdout)["digests"]


def _wait_for(path: Path, timeout: float, cluster: SlurmCluster, job: str) -> None:
    deadline = time.time() + timeout
    while not path.exists():
        if time.time() > deadline:
            raise AssertionError(f"{path} did not appear: {cluster.job(job)}\n{cluster.logs()}")
        time.sleep(0.1)


def test_sbatch_preempted_job_requeues_and_finishes_exactly(
    cluster: SlurmCluster, mnist_shards: Path, tmp_path: Path
) -> None:
    steps = 600
    run, db, log = tmp_path / "run", tmp_path / "mlflow.db", tmp_path / "job.out"
    env = {"BIGTRAIN_RUN_DIR": str(run), "BIGTRAIN_PYTHON": sys.executable, "OMP_NUM_THREADS": "1"}
    job = cluster.sbatch(
        *CPU_NODE, "--time=10", f"--output={log}", "slurm/train.sbatch",
        *_train_args(mnist_shards, db, steps), cwd=REPO, env=env,
    )  # fmt: skip
    _wait_for(run / "checkpoints" / "step-00000050" / "meta.json", 180, cluster, job)
    # What `#SBATCH --signal=B:USR2@300` does before the time limit, now: USR2 to the batch shell.
    cluster.run("scancel", "--signal=USR2", "--batch", job)
    info = cluster.wait_state(job, {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT"}, timeout=300, nudge=True)
    text = log.read_text()
    why = f"{info}\n--- job log ---\n{text}\n--- slurm ---\n{cluster.logs()}"  # all of it, on failure
    assert info["JobState"] == "COMPLETED", why
    assert info["Restarts"] == "1", why  # requeued once, by rank 0's `scontrol requeue`
    assert "restart 1" in text, why  # the log was appended to by the requeued run (--open-mode=append)
    assert "forwarding to the training processes" in text, why  # the batch shell's trap
    assert "requeueing SLURM job" in text, why
    # no progress bar in a file: no carriage returns, a line every log_every steps instead
    assert "\r" not in text and f"step 100/{steps}: " in text and f"step {steps}/{steps}: " in text, why
    saved = [line for line in text.splitlines() if "signal SIGUSR2: saved" in line]
    assert len(saved) == 1 and saved[0].endswith("requeueing the job"), why
    at = int(saved[0].split(" at step ")[1].split(";")[0])
    assert 50 <= at < steps and f"resumed from {run}/checkpoints/step-{at:08d} (step {at})" in text, why
    assert json.loads((run / "status.json").read_text()) == {"status": "FINISHED", "step": steps}

    straight = tmp_path / "straight"
    # Same thread count as the job: CPU kernels sum in a thread-dependent order.
    run_cli(
        "train", *_train_args(mnist_shards, tmp_path / "other.db", steps), f"run.dir={straight}",
        env={"OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    name = f"step-{steps:08d}"
    assert _digests(run / "checkpoints" / name) == _digests(straight / "checkpoints" / name)
    client = MlflowClient(f"sqlite:///{db}")
    runs = client.search_runs([client.get_experiment_by_name("bigtrain").experiment_id])
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"  # one MLflow run across the requeue
    steps_logged = [m.step for m in client.get_metric_history(runs[0].info.run_id, "images_seen")]
    assert steps_logged == sorted(steps_logged) and steps_logged[-1] == steps


def test_srun_two_tasks_train_as_two_ranks(cluster: SlurmCluster, mnist_shards: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    out = cluster.run(
        "srun", "-n", "2", "--cpus-per-task=1", "--export=ALL,OMP_NUM_THREADS=1", sys.executable, "-m", "bigtrain",
        "train", *_train_args(mnist_shards, tmp_path / "m.db", 20), "tracking.enabled=false", f"run.dir={run}",
        "trainer.ckpt_every=10",
    )  # fmt: skip
    assert "world size 2" in out.stderr
    meta = json.loads((run / "checkpoints" / "step-00000020" / "meta.json").read_text())
    assert meta["world_size"] == 2
    digests = _digests(run / "checkpoints" / "step-00000020")
    assert {"rng.rank0", "rng.rank1", "data.rank0", "data.rank1"} <= set(digests)
    ranks = meta["rank_weight_digests"]
    assert len(ranks) == 2 and ranks[0] == ranks[1]  # the ranks hold identical weights


def test_timed_out_job_leaves_a_valid_latest_checkpoint(
    cluster: SlurmCluster, mnist_shards: Path, tmp_path: Path
) -> None:
    run, log = tmp_path / "run", tmp_path / "job.out"
    python = f"{sys.executable} -m bigtrain train"
    args = " ".join(_train_args(mnist_shards, tmp_path / "m.db", 10_000_000))
    job = cluster.sbatch(
        *CPU_NODE, "--time=1", f"--output={log}", f"--wrap={python} {args} run.dir={run}", cwd=tmp_path,
        env={"OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    info = cluster.wait_state(job, {"TIMEOUT", "COMPLETED", "FAILED", "CANCELLED"}, timeout=240)
    assert info["JobState"] == "TIMEOUT", log.read_text()[-3000:]
    # SLURM reports TIMEOUT when it signals; the job then has KillWait (30 s) to save and exit
    _wait_for(run / "status.json", 40, cluster, job)
    status = json.loads((run / "status.json").read_text())
    assert status["status"] == "KILLED"  # SIGTERM at the limit: saved at the next step, then exited
    latest = run / "checkpoints" / f"step-{status['step']:08d}"
    assert _digests(latest)  # verifies every component against meta.json
    assert "stopped by a signal" in log.read_text()
    # ... and the same command resumes from it.
    resumed = run_cli(
        "train", *_train_args(mnist_shards, tmp_path / "m.db", status["step"] + 5), f"run.dir={run}"
    )
    assert f"resumed from {latest}" in resumed.stderr


def test_hydra_sweep_runs_as_slurm_jobs_through_submitit(
    cluster: SlurmCluster, mnist_shards: Path, tmp_path: Path
) -> None:
    sweep = tmp_path / "sweep"
    out = run_cli(
        "train", "-m", "launcher=slurm", *_train_args(mnist_shards, tmp_path / "m.db", 20), "loss=hinge,lsgan",
        "tracking.enabled=false", f"run.dir={sweep}", "hydra.launcher.partition=debug",
        "hydra.launcher.cpus_per_task=1", "hydra.launcher.timeout_min=10", "hydra.launcher.mem_gb=2",
        env={**cluster.env, "OMP_NUM_THREADS": "1"}, timeout=600,
    )  # fmt: skip
    jobs = sorted(p for p in sweep.iterdir() if p.is_dir() and not p.name.startswith("."))
    assert [p.name.split("-")[0] for p in jobs] == ["loss=hinge", "loss=lsgan"]  # named on the nodes too
    for job_dir, loss in zip(jobs, ("hinge", "lsgan"), strict=True):
        assert json.loads((job_dir / "status.json").read_text()) == {"status": "FINISHED", "step": 20}
        assert f"name: {loss}" in (job_dir / "config.yaml").read_text()
        assert _digests(job_dir / "checkpoints" / "step-00000020")
    logs = list((sweep / ".submitit").rglob("*_log.out"))
    assert len(logs) == 2, out.stdout  # two SLURM jobs (an array), each with its own log
    job_ids = {p.parent.name for p in logs}
    for jid in job_ids:
        assert cluster.job(jid.split("_")[0])  # SLURM knows them
