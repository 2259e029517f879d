"""Training results recorded before a refactor stay bit for bit the same after it.

``tests/data/recorded_results.json`` holds what commit 076bcdf (before issue 12 reshaped the task
contract, the optimizer step, the checkpoint manager and the configs) produced: the weight and
optimizer digests after 40 steps of the demo preset, and every preset's parameter counts (checked
in ``tests/unit/test_info.py``). A change that moves a single bit of training fails here. The digests are
taken with kernels that give the same bits on any x86-64 CPU (see the file's ``_about``); the
machine's native digests are recorded beside them for reference.
"""

from __future__ import annotations

import json
from pathlib import Path

from tests.conftest import run_cli

RECORDED = json.loads((Path(__file__).resolve().parents[1] / "data" / "recorded_results.json").read_text())
PORTABLE = {"ATEN_CPU_CAPABILITY": "default", "MKL_CBWR": "COMPATIBLE", "ONEDNN_MAX_CPU_ISA": "SSE41",
            "OMP_NUM_THREADS": "1"}  # fmt: skip


def test_forty_demo_steps_give_the_recorded_digests(mnist_shards: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    run_cli("train", "experiment=mnist_dcgan", f"data.path={mnist_shards}", f"run.dir={run}",
            "trainer.max_steps=40", "eval.enabled=false", "tracking.enabled=false", "trainer.progress=false",
            env=PORTABLE)  # fmt: skip
    out = run_cli("inspect", "--json", str(run / "checkpoints" / "step-00000040"))
    digests = json.loads(out.stdout)["digests"]
    expected = RECORDED["digests"]["portable"]
    assert {k: digests[k] for k in expected} == expected
