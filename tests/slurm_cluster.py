"""A real single-node SLURM for the test session: installed if missing, started, stopped.

What works on this kind of machine was measured first (../shared/notes/slurm-on-one-machine.md):
Debian's slurm-wlm packages, munge started by hand (no systemd), ``proctrack/linuxproc`` (the cgroup
plugin needs a freezer hierarchy CI machines lack), one node at 127.0.0.1 and one partition. The
daemons are machine-wide (ports 6817/6818), so one session at a time uses them.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

PACKAGES = ["slurmctld", "slurmd", "slurm-client", "munge"]


def _run(cmd: list[str], **kw) -> subprocess.CompletedProcess[str]:  # noqa: ANN003
    return subprocess.run(cmd, capture_output=True, text=True, check=False, **kw)


def ensure_installed() -> None:
    """Install the packages when absent; fail loudly (not skip) when that is impossible."""
    if all(shutil.which(b) for b in ("slurmctld", "slurmd", "sbatch", "munged")):
        return
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    out = _run(["apt-get", "install", "-y", "--no-install-recommends", *PACKAGES], env=env)
    if out.returncode != 0:  # the package lists may be missing on a fresh image
        _run(["apt-get", "update"], env=env)
        out = _run(["apt-get", "install", "-y", "--no-install-recommends", *PACKAGES], env=env)
    if out.returncode != 0:
        raise RuntimeError(f"could not install SLURM ({' '.join(PACKAGES)}): {out.stderr[-2000:]}")


def _stop_stale_test_daemons() -> None:
    """SLURM daemons of an earlier test cluster (their SLURM_CONF in a pytest temporary folder) that
    a killed test run left behind; a real cluster's daemons are left alone."""
    for daemon in ("slurmctld", "slurmd"):
        for pid in _run(["pgrep", "-x", daemon]).stdout.split():
            try:
                environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            except OSError:
                continue
            conf = next((e for e in environ if e.startswith(b"SLURM_CONF=")), b"")
            if b"pytest" in conf:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(pid), signal.SIGKILL)
    time.sleep(0.5)


class SlurmCluster:
    """Writes ``slurm.conf`` under ``root``, starts munged, slurmctld and slurmd, and stops them."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.conf = root / "slurm.conf"
        self.env = {**os.environ, "SLURM_CONF": str(self.conf)}
        self._pids: list[int] = []

    def _write_conf(self) -> None:
        host = socket.gethostname().split(".")[0]
        node = _run(["slurmd", "-C"]).stdout.splitlines()[0]  # NodeName=... CPUs=... RealMemory=...
        for sub in ("state", "spool", "log"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        r = self.root
        self.conf.write_text(
            "\n".join(
                [
                    "ClusterName=bigtrain-test",
                    f"SlurmctldHost={host}(127.0.0.1)",
                    "SlurmUser=root",
                    "SlurmdUser=root",
                    f"StateSaveLocation={r}/state",
                    f"SlurmdSpoolDir={r}/spool",
                    f"SlurmctldPidFile={r}/slurmctld.pid",
                    f"SlurmdPidFile={r}/slurmd.pid",
                    f"SlurmctldLogFile={r}/log/slurmctld.log",
                    f"SlurmdLogFile={r}/log/slurmd.log",
                    "ProctrackType=proctrack/linuxproc",
                    "TaskPlugin=task/none",
                    "JobAcctGatherType=jobacct_gather/none",
                    "SelectType=select/cons_tres",
                    "SelectTypeParameters=CR_Core",
                    "ReturnToService=2",
                    "MpiDefault=none",
                    "AuthInfo=cred_expire=10",
                    "KillWait=30",
                    "MinJobAge=3600",
                    f"{node} NodeAddr=127.0.0.1 State=UNKNOWN",
                    "PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP",
                    "",
                ]
            )
        )

    def start(self) -> SlurmCluster:
        ensure_installed()
        self._write_conf()
        if _run(["pgrep", "-x", "munged"]).returncode != 0:
            Path("/run/munge").mkdir(parents=True, exist_ok=True)
            shutil.chown("/run/munge", "munge", "munge")
            out = _run(["runuser", "-u", "munge", "--", "/usr/sbin/munged"])
            if out.returncode != 0:
                raise RuntimeError(f"munged did not start: {out.stderr}")
        _stop_stale_test_daemons()  # a test run killed before its teardown leaves them bound to the ports
        for daemon in ("slurmctld", "slurmd"):
            out = _run([daemon], env=self.env)
            if out.returncode != 0:
                self._stop_started()
                raise RuntimeError(f"{daemon} did not start: {out.stderr}\n{self.logs()}")
        pid_files = [self.root / f"{d}.pid" for d in ("slurmctld", "slurmd")]
        deadline = time.time() + 90
        state = ""
        while time.time() < deadline:
            state = _run(["sinfo", "-h", "-o", "%T"], env=self.env).stdout.strip()
            # ready: both of *these* daemons are up (pid files written) and the node registered
            if state in ("idle", "mixed", "allocated") and all(
                f.is_file() and f.read_text().strip() for f in pid_files
            ):
                self._pids = [int(f.read_text()) for f in pid_files]
                return self
            time.sleep(0.5)
        self._stop_started()
        raise RuntimeError(f"the SLURM node did not become idle (state {state!r})\n{self.logs()}")

    def _stop_started(self) -> None:
        """After a failed start: stop whichever of this cluster's daemons did start."""
        self._pids = [
            int(f.read_text()) for d in ("slurmctld", "slurmd") if (f := self.root / f"{d}.pid").is_file()
        ]
        self.stop()

    def logs(self) -> str:
        out = []
        for name in ("slurmctld.log", "slurmd.log"):
            path = self.root / "log" / name
            if path.exists():
                out.append(f"--- {name}\n" + "\n".join(path.read_text().splitlines()[-30:]))
        return "\n".join(out)

    def stop(self) -> None:
        for pid in self._pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        deadline = time.time() + 30
        for pid in self._pids:
            while time.time() < deadline:
                try:
                    os.kill(pid, 0)
                except ProcessLookupError:
                    break
                time.sleep(0.2)

    # -- helpers for tests ---------------------------------------------------------------------
    def run(self, *cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        out = _run(list(cmd), env=self.env)
        if check and out.returncode != 0:
            raise AssertionError(f"{' '.join(cmd)} exited {out.returncode}: {out.stderr}\n{self.logs()}")
        return out

    def sbatch(self, *args: str, cwd: Path, env: dict[str, str] | None = None) -> str:
        out = _run(["sbatch", "--parsable", *args], env={**self.env, **(env or {})}, cwd=cwd)
        if out.returncode != 0:
            raise AssertionError(f"sbatch failed: {out.stderr}\n{self.logs()}")
        return out.stdout.strip().split(";")[0]

    def job(self, job_id: str) -> dict[str, str]:
        """``scontrol show job`` as a dict (JobState, RestartCnt, ExitCode, ...)."""
        text = self.run("scontrol", "show", "job", "-o", job_id).stdout
        fields = {}
        for item in text.split():
            if "=" in item:
                k, v = item.split("=", 1)
                fields[k] = v
        return fields

    def wait_state(
        self, job_id: str, states: set[str], timeout: float, nudge: bool = False
    ) -> dict[str, str]:
        """Poll until the job is in one of ``states``; ``nudge`` starts a requeued job at once."""
        deadline = time.time() + timeout
        info: dict[str, str] = {}
        while time.time() < deadline:
            info = self.job(job_id)
            if info.get("JobState") in states:
                return info
            if nudge and info.get("JobState") == "PENDING":
                self.run("scontrol", "update", f"jobid={job_id}", "StartTime=now", check=False)
            time.sleep(0.5)
        raise AssertionError(f"job {job_id} not in {states} after {timeout} s: {info}\n{self.logs()}")
