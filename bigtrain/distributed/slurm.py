"""What bigtrain reads from SLURM: the job's identity, the rendezvous, and how to requeue.

Two launch shapes are supported (``slurm/*.sbatch``):

* one task per node running ``torchrun``: torchrun sets ``RANK``/``WORLD_SIZE``/``MASTER_ADDR``;
  the sbatch script builds its rendezvous from ``scontrol show hostnames`` and ``SLURM_NODEID``.
* one task per process (``srun -n N python -m bigtrain train ...``): nothing sets the torch
  variables, so :func:`init_env_from_slurm` derives them from ``SLURM_PROCID``, ``SLURM_NTASKS``,
  ``SLURM_LOCALID`` and the job's first host before the process group starts.

The job id (``<array job>_<task>`` for array jobs) is what every rank and every requeue of a job
agree on; it names the run folder in the sbatch scripts and is what ``scontrol requeue`` takes.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
from collections.abc import Mapping

log = logging.getLogger("bigtrain")


def in_slurm_job(env: Mapping[str, str] | None = None) -> bool:
    env = os.environ if env is None else env
    return "SLURM_JOB_ID" in env


def job_id(env: Mapping[str, str] | None = None) -> str | None:
    """The id to requeue: ``ARRAYJOB_TASK`` for an array task, else ``SLURM_JOB_ID``."""
    env = os.environ if env is None else env
    if "SLURM_ARRAY_JOB_ID" in env and "SLURM_ARRAY_TASK_ID" in env:
        return f"{env['SLURM_ARRAY_JOB_ID']}_{env['SLURM_ARRAY_TASK_ID']}"
    return env.get("SLURM_JOB_ID")


def restart_count(env: Mapping[str, str] | None = None) -> int:
    env = os.environ if env is None else env
    return int(env.get("SLURM_RESTART_COUNT", "0") or 0)


def first_host(nodelist: str) -> str:
    """The first host of a SLURM node list (``node[03-05,7]`` -> ``node03``), via ``scontrol``."""
    if shutil.which("scontrol"):
        out = subprocess.run(
            ["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True, check=False
        )
        if out.returncode == 0 and out.stdout.strip():
            return out.stdout.split()[0]
    # No scontrol on this host (e.g. inside a container): parse the common forms ourselves.
    head = nodelist.split(",")[0]
    if "[" in head:
        prefix, rest = head.split("[", 1)
        return prefix + rest.rstrip("]").split("-")[0].split(",")[0]
    return head


def rendezvous_port(env: Mapping[str, str]) -> int:
    """A port every rank of a job computes alike, different between concurrent jobs on a node."""
    jid = "".join(ch for ch in (job_id(env) or "0") if ch.isdigit()) or "0"
    return 20000 + int(jid) % 20000


def init_env_from_slurm(env: dict[str, str] | None = None) -> bool:
    """Fill in torch's rendezvous variables from SLURM's for one-process-per-task launches.

    Does nothing when a launcher (torchrun, accelerate) already set ``RANK`` / ``WORLD_SIZE``, or
    outside a multi-task SLURM step. Returns whether it set anything.
    """
    env = os.environ if env is None else env  # type: ignore[assignment]
    assert env is not None
    if "RANK" in env or "WORLD_SIZE" in env or "SLURM_PROCID" not in env:
        return False
    ntasks = int(env.get("SLURM_NTASKS", env.get("SLURM_NPROCS", "1")))
    if ntasks <= 1:
        return False
    env["RANK"] = env["SLURM_PROCID"]
    env["WORLD_SIZE"] = str(ntasks)
    env["LOCAL_RANK"] = env.get("SLURM_LOCALID", "0")
    env.setdefault("LOCAL_WORLD_SIZE", env.get("SLURM_NTASKS_PER_NODE", str(ntasks)).split("(")[0])
    env.setdefault(
        "MASTER_ADDR", first_host(env.get("SLURM_JOB_NODELIST", env.get("SLURM_NODELIST", "localhost")))
    )
    env.setdefault("MASTER_PORT", str(rendezvous_port(env)))
    return True


def requeue(env: Mapping[str, str] | None = None) -> bool:
    """Ask SLURM to requeue this job (``scontrol requeue``); True when SLURM accepted it.

    The job must have been submitted with ``--requeue`` (the sbatch scripts do). SLURM then ends
    this allocation and starts the same job id again, which resumes from the run folder.
    """
    jid = job_id(env)
    if jid is None:
        log.warning("not inside a SLURM job: nothing to requeue")
        return False
    # Said before the call: SLURM ends the allocation as soon as it accepts, and a line logged after
    # it can be lost with srun's output forwarding.
    log.info("requeueing SLURM job %s (scontrol requeue)", jid)
    for handler in logging.getLogger().handlers:
        handler.flush()
    out = subprocess.run(["scontrol", "requeue", jid], capture_output=True, text=True, check=False)
    if out.returncode != 0:
        log.error("scontrol requeue %s failed: %s", jid, (out.stderr or out.stdout).strip())
        return False
    return True


__all__ = [
    "first_host",
    "in_slurm_job",
    "init_env_from_slurm",
    "job_id",
    "rendezvous_port",
    "requeue",
    "restart_count",
]
