"""A rank that ran collectives leaves through ``distributed.exit_now`` (no interpreter teardown, where
gloo's threads can abort the process): its exit code, output and log lines must survive that."""

from __future__ import annotations

import subprocess
import sys

import pytest

SCRIPT = """
import logging, sys
from bigtrain.distributed import exit_now
logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="%(message)s")
print("stdout kept", end="")          # no newline: only a flush writes it out
logging.getLogger("x").info("log kept")
exit_now({code!r})
print("never")
"""


@pytest.mark.parametrize(("code", "rc"), [(0, 0), (None, 0), (2, 2), (3, 3), ("bad thing", 1)])
def test_exit_now_keeps_code_and_flushes_output(code: int | str | None, rc: int) -> None:
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT.format(code=code)], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == rc
    assert proc.stdout == "stdout kept"  # through a pipe stdout is block-buffered
    assert "log kept" in proc.stderr
    if isinstance(code, str):
        assert proc.stderr.rstrip().endswith("bad thing")


def test_single_process_commands_exit_normally() -> None:
    """Without a process group ``entry`` is ``sys.exit(main())``: exit codes as before."""
    ok = subprocess.run(
        [sys.executable, "-m", "bigtrain", "--help"], capture_output=True, text=True, timeout=120
    )
    assert ok.returncode == 0 and "commands:" in ok.stdout
    bad = subprocess.run(
        [sys.executable, "-m", "bigtrain", "nope"], capture_output=True, text=True, timeout=120
    )
    assert bad.returncode == 2 and "unknown command 'nope'" in bad.stderr
