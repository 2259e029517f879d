"""SLURM variables -> job id, rendezvous; signals -> a request every rank agrees on."""

from __future__ import annotations

import os
import signal

import pytest

from bigtrain.distributed import slurm
from bigtrain.distributed.preemption import Preemption, Request, parse_signal


def test_job_id_prefers_the_array_task() -> None:
    assert slurm.job_id({"SLURM_JOB_ID": "812"}) == "812"
    env = {"SLURM_JOB_ID": "815", "SLURM_ARRAY_JOB_ID": "812", "SLURM_ARRAY_TASK_ID": "3"}
    assert slurm.job_id(env) == "812_3"
    assert slurm.job_id({}) is None
    assert slurm.restart_count({"SLURM_RESTART_COUNT": "2"}) == 2
    assert slurm.restart_count({}) == 0


def test_rendezvous_from_slurm_for_one_process_per_task() -> None:
    env = {
        "SLURM_JOB_ID": "4242",
        "SLURM_PROCID": "3",
        "SLURM_LOCALID": "1",
        "SLURM_NTASKS": "4",
        "SLURM_NTASKS_PER_NODE": "2(x2)",
        "SLURM_JOB_NODELIST": "gpu[07-08]",
    }
    assert slurm.init_env_from_slurm(env)
    assert env["RANK"] == "3" and env["WORLD_SIZE"] == "4" and env["LOCAL_RANK"] == "1"
    assert env["LOCAL_WORLD_SIZE"] == "2"
    assert env["MASTER_ADDR"] == "gpu07"
    assert env["MASTER_PORT"] == str(20000 + 4242 % 20000)
    # Every rank computes the same port; another job gets another.
    assert slurm.rendezvous_port({"SLURM_JOB_ID": "4243"}) != slurm.rendezvous_port(env)


def test_rendezvous_is_left_to_a_launcher_or_single_tasks() -> None:
    launched = {"SLURM_PROCID": "0", "SLURM_NTASKS": "2", "RANK": "1", "WORLD_SIZE": "8"}
    assert not slurm.init_env_from_slurm(launched) and launched["RANK"] == "1"
    single = {"SLURM_PROCID": "0", "SLURM_NTASKS": "1"}
    assert not slurm.init_env_from_slurm(single) and "RANK" not in single
    assert not slurm.init_env_from_slurm({})


@pytest.mark.parametrize(
    ("nodelist", "host"), [("node03", "node03"), ("a1,b2", "a1"), ("gpu[03-05,7]", "gpu03"), ("n[12]", "n12")]
)
def test_first_host(nodelist: str, host: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")  # no scontrol: the fallback parser
    assert slurm.first_host(nodelist) == host


def test_parse_signal() -> None:
    assert parse_signal("USR2") is signal.SIGUSR2
    assert parse_signal("sigterm") is signal.SIGTERM
    assert parse_signal("10") is signal.SIGUSR1
    with pytest.raises(ValueError, match="unknown signal"):
        parse_signal("NOPE")


def test_signals_become_requests_and_handlers_are_restored() -> None:
    before = signal.getsignal(signal.SIGUSR2)
    p = Preemption(["USR2"], ["TERM"]).install()
    try:
        assert p.poll() is Request.NONE
        os.kill(os.getpid(), signal.SIGUSR2)
        assert p.poll() is Request.REQUEUE and p.received == ["SIGUSR2"]
        os.kill(os.getpid(), signal.SIGTERM)  # a stop outranks a requeue
        assert p.poll() is Request.STOP
        os.kill(os.getpid(), signal.SIGUSR2)
        assert p.poll() is Request.STOP
    finally:
        p.uninstall()
    assert signal.getsignal(signal.SIGUSR2) == before


def test_requeue_outside_slurm_says_so() -> None:
    assert slurm.requeue({}) is False
