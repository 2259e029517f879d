"""Faults injected into real runs, each the way it happens on a cluster: kill -9 in the middle of a
checkpoint write, a disk that fills up or turns read-only, shards truncated or deleted under a
running job, a rank that dies, a damaged checkpoint. (A NaN loss: tests/e2e/test_train_cli.py.)"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from tests.conftest import BIGTRAIN, TINY, free_port, run_cli


def _args(mnist: Path, run: Path, steps: int, *extra: str) -> list[str]:
    return [
        "train",
        "experiment=mnist_dcgan",
        f"data.path={mnist}",
        f"run.dir={run}",
        "tracking.enabled=false",
        *TINY,
        "eval.enabled=false",
        "trainer.sample_every=1000000",
        f"trainer.max_steps={steps}",
        *extra,
    ]


def _start(args: list[str], **kw) -> subprocess.Popen[str]:  # noqa: ANN003
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(args, env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kw)


def _wait(cond, proc: subprocess.Popen[str], what: str, timeout: float = 180, poll: float = 0.002) -> None:  # noqa: ANN001
    deadline = time.time() + timeout
    while not cond():
        if proc.poll() is not None:
            raise AssertionError(f"exited {proc.returncode} before {what}:\n{proc.stderr.read()[-4000:]}")
        if time.time() > deadline:
            proc.kill()
            raise AssertionError(f"no {what} after {timeout} s")
        time.sleep(poll)


def _digests(ckpt: Path) -> dict:
    return json.loads(run_cli("inspect", str(ckpt), "--json").stdout)["digests"]


def test_kill_9_during_a_checkpoint_write_keeps_the_previous_one(mnist_shards: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    # Wide networks: about 100 MB per checkpoint, so a write takes long enough to be interrupted.
    wide = ("model.g_width=128", "model.d_width=128", "trainer.ckpt_every=5", "trainer.keep_last=10")
    proc = _start([*BIGTRAIN, *_args(mnist_shards, run, 10_000, *wide)])
    ckpts = run / "checkpoints"

    def writing_after_a_good_one() -> bool:
        return (ckpts / "step-00000005" / "meta.json").exists() and any(ckpts.glob(".tmp-step-*"))

    _wait(writing_after_a_good_one, proc, "a checkpoint write after step 5")
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    partial = sorted(ckpts.glob(".tmp-step-*"))
    assert partial, "the kill landed after the write finished"
    killed_at = int(partial[-1].name.split("-")[-1])
    complete = sorted(p.name for p in ckpts.glob("step-*") if (p / "meta.json").exists())
    previous = complete[-1]
    assert int(previous.split("-")[-1]) == killed_at - 5
    assert _digests(ckpts / previous)  # intact: every component matches its recorded digest

    out = run_cli(*_args(mnist_shards, run, killed_at + 5, *wide))
    assert f"resumed from {ckpts / previous}" in out.stderr
    assert not list(ckpts.glob(".tmp-step-*"))  # the half-written folder is gone
    assert _digests(ckpts / f"step-{killed_at + 5:08d}")


def _dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def test_disk_full_during_a_save_is_one_line_and_keeps_the_previous_checkpoint(
    mnist_shards: Path, tmp_path: Path
) -> None:
    probe = tmp_path / "probe"
    run_cli(*_args(mnist_shards, probe, 10, "trainer.ckpt_every=10"))
    ckpt_bytes = _dir_bytes(probe / "checkpoints" / "step-00000010")
    other = _dir_bytes(probe) - ckpt_bytes
    # Room for the run's small files, one checkpoint and half of the next (tmpfs counts 4 KiB pages).
    size_kib = (other + ckpt_bytes + ckpt_bytes // 2) // 1024 + 64
    disk = tmp_path / "disk"
    disk.mkdir()
    mount = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size_kib}k", "tmpfs", str(disk)],
        capture_output=True,
        text=True,
    )
    assert mount.returncode == 0, f"cannot mount a tmpfs for the disk-full test: {mount.stderr}"
    try:
        run = disk / "run"
        proc = run_cli(*_args(mnist_shards, run, 30, "trainer.ckpt_every=10"), check=False)
        assert proc.returncode == 2, proc.stderr[-3000:]
        error = [line for line in proc.stderr.splitlines() if line.startswith("bigtrain: error:")]
        assert len(error) == 1 and "No space left on device" in error[0], proc.stderr[-3000:]
        assert f"could not write checkpoint {run}/checkpoints/step-00000020" in error[0]
        assert f"previous checkpoint intact: {run}/checkpoints/step-00000010" in error[0]
        assert not list((run / "checkpoints").glob(".tmp-*"))
        assert _digests(run / "checkpoints" / "step-00000010")
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def test_read_only_checkpoint_folder_during_a_save(mnist_shards: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    ckpts = run / "checkpoints"
    proc = _start([*BIGTRAIN, *_args(mnist_shards, run, 1_000_000, "trainer.ckpt_every=50")])
    _wait(lambda: (ckpts / "step-00000050" / "meta.json").exists(), proc, "the first checkpoint")
    # The folder turns read-only under the job (as root, permissions would not stop a write:
    # a read-only bind mount of the folder onto itself does).
    subprocess.run(["mount", "--bind", str(ckpts), str(ckpts)], check=True)
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", str(ckpts)], check=True)
        _, err = proc.communicate(timeout=120)
    finally:
        subprocess.run(["umount", "-l", str(ckpts)], check=False)
    assert proc.returncode == 2, err[-3000:]
    error = [line for line in err.splitlines() if line.startswith("bigtrain: error:")]
    assert len(error) == 1 and "Read-only file system" in error[0], err[-3000:]
    assert f"previous checkpoint intact: {ckpts / 'step-00000050'}" in error[0]
    assert _digests(ckpts / "step-00000050")


def test_shards_truncated_under_a_running_job_are_skipped_and_counted(
    mnist_shards: Path, tmp_path: Path
) -> None:
    data, run, db = tmp_path / "data", tmp_path / "run", tmp_path / "m.db"
    shutil.copytree(mnist_shards, data)
    args = _args(
        data, run, 400, "trainer.ckpt_every=10", "tracking.enabled=true", f"tracking.uri=sqlite:///{db}"
    )
    proc = _start([*BIGTRAIN, *args])
    _wait(
        lambda: (run / "checkpoints" / "step-00000010" / "meta.json").exists(), proc, "the first checkpoint"
    )
    for shard in data.glob("train-*.tar"):  # a bad copy / a flaky file system: every shard cut short
        os.truncate(shard, int(shard.stat().st_size * 0.6))
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    assert "unreadable shard skipped" in (run / "train.log").read_text()
    client = MlflowClient(f"sqlite:///{db}")
    run_id = json.loads((run / "checkpoints" / "step-00000400" / "meta.json").read_text())["mlflow_run_id"]
    errors = client.get_metric_history(run_id, "data/shard_errors")
    assert errors[-1].value >= 9  # each of the 9 shards failed at least once after the cut


def _torchrun(mnist: Path, run: Path, steps: int, *extra: str) -> subprocess.Popen[str]:
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
        "--master_addr", "127.0.0.1", "--master_port", str(free_port()),
        "-m", "bigtrain", *_args(mnist, run, steps, "trainer.ckpt_every=10", *extra),
    ]  # fmt: skip
    return _start(cmd)


def test_shards_deleted_under_two_ranks_stop_both_with_a_message(mnist_shards: Path, tmp_path: Path) -> None:
    data, run = tmp_path / "data", tmp_path / "run"
    shutil.copytree(mnist_shards, data)
    proc = _torchrun(data, run, 1_000_000)
    _wait(
        lambda: (run / "checkpoints" / "step-00000010" / "meta.json").exists(), proc, "the first checkpoint"
    )
    for shard in data.glob("*.tar"):
        shard.unlink()
    t0 = time.time()
    _, err = proc.communicate(timeout=300)
    assert proc.returncode != 0
    assert "read no samples" in err and "missing or unreadable" in err
    assert time.time() - t0 < 240  # both ranks ended: no rank waits forever on the other


def _worker_pids(run: Path) -> dict[int, int]:
    """rank -> pid of the training processes whose command line names ``run``."""
    out = {}
    for pid in map(
        int, subprocess.run(["pgrep", "-f", f"run.dir={run}"], capture_output=True, text=True).stdout.split()
    ):
        try:
            env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        ranks = [e.split(b"=", 1)[1] for e in env if e.startswith(b"RANK=")]
        if ranks and b"torch.distributed.run" not in Path(f"/proc/{pid}/cmdline").read_bytes():
            out[int(ranks[0])] = pid
    return out


def test_one_rank_killed_stops_the_other_in_bounded_time(mnist_shards: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    proc = _torchrun(mnist_shards, run, 1_000_000)
    _wait(
        lambda: (run / "checkpoints" / "step-00000010" / "meta.json").exists(), proc, "the first checkpoint"
    )
    pids = _worker_pids(run)
    assert set(pids) == {0, 1}, pids
    os.kill(pids[1], signal.SIGKILL)
    t0 = time.time()
    _, err = proc.communicate(timeout=180)
    elapsed = time.time() - t0
    assert proc.returncode != 0
    assert elapsed < 60, f"the surviving rank took {elapsed:.0f} s to stop"
    assert "Signal 9 (SIGKILL)" in err or "exitcode  : -9" in err, err[-3000:]  # torchrun names the dead rank
    with pytest.raises(ProcessLookupError):
        os.kill(pids[0], 0)


def test_damaged_checkpoint_is_refused_by_name_and_auto_resume_falls_back(
    mnist_shards: Path, tmp_path: Path
) -> None:
    run = tmp_path / "run"
    run_cli(*_args(mnist_shards, run, 20, "trainer.ckpt_every=10"))
    newest = run / "checkpoints" / "step-00000020"
    g = newest / "G.pt"
    raw = bytearray(g.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    g.write_bytes(bytes(raw))
    explicit = run_cli(*_args(mnist_shards, run, 30, f"resume={newest}"), check=False)
    assert explicit.returncode == 2
    lines = [line for line in explicit.stderr.splitlines() if line.startswith("bigtrain: error:")]
    assert len(lines) == 1 and "G.pt" in lines[0], explicit.stderr[-2000:]
    auto = run_cli(*_args(mnist_shards, run, 30))
    assert "skipping damaged checkpoint" in auto.stderr and "G.pt" in auto.stderr
    assert f"resumed from {run / 'checkpoints' / 'step-00000010'}" in auto.stderr
    assert _digests(run / "checkpoints" / "step-00000030")
