"""Fine-tuning: ``init_from.path`` starts a new run from another run's network weights only (a
checkpoint, a run folder or an export); step, optimizers and data start fresh; a requeued
fine-tuning job resumes its own checkpoint instead."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import bigtrain
from tests.conftest import TINY, built_once, run_cli

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def source(mnist_shards: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A class-conditional DCGAN trained 6 steps: the weights to start from."""

    def build(out: Path) -> None:
        run_cli("train", "experiment=mnist_cdcgan", f"data.path={mnist_shards}", f"run.dir={out}",
                "tracking.enabled=false", *TINY, "trainer.max_steps=6", "eval.enabled=false")  # fmt: skip

    return built_once(tmp_path_factory, "init-source", build) / "checkpoints" / "step-00000006"


def _train(mnist: Path, run: Path, *extra: str, check: bool = True):  # noqa: ANN202
    return run_cli("train", "experiment=mnist_cdcgan", f"data.path={mnist}", f"run.dir={run}",
                   "tracking.enabled=false", *TINY, "eval.enabled=false", *extra, check=check)  # fmt: skip


def _meta(run: Path, step: int) -> dict:
    return json.loads((run / "checkpoints" / f"step-{step:08d}" / "meta.json").read_text())


def test_init_from_a_checkpoint_loads_weights_only_and_resume_wins(
    source: Path, mnist_shards: Path, tmp_path: Path
) -> None:
    src = json.loads((source / "meta.json").read_text())["digests"]
    run = tmp_path / "ft"
    _train(mnist_shards, run, f"init_from.path={source}", "trainer.max_steps=2", "trainer.ckpt_every=1")
    info = _meta(run, 1)["init_from"]
    assert (
        info["kind"] == "checkpoint" and info["step"] == 6 and sorted(info["modules"]) == ["D", "G", "G_ema"]
    )
    # the networks as loaded are the source's, digest for digest
    assert all(info["digests"][n] == src[n] for n in ("G", "D", "G_ema"))
    # a new run: its own step count and fresh optimizers (Adam has taken 2 steps, not 8)
    opt = torch.load(run / "checkpoints" / "step-00000002" / "opt_G.pt", weights_only=False)
    steps = {int(s["step"]) for s in opt["optimizer"]["state"].values()} if "optimizer" in opt else {
        int(s["step"]) for s in opt["state"].values()}  # fmt: skip
    assert steps == {2}
    # the same command again (a requeued job) resumes the fine-tuning run, not the source
    proc = _train(mnist_shards, run, f"init_from.path={source}", "trainer.max_steps=3")
    assert "init_from.path not used" in proc.stderr and "resumed from" in proc.stderr
    assert _meta(run, 3)["init_from"]["digests"] == info["digests"]


def test_init_from_some_modules_or_an_export(source: Path, mnist_shards: Path, tmp_path: Path) -> None:
    src = json.loads((source / "meta.json").read_text())["digests"]
    run = tmp_path / "g-only"
    _train(
        mnist_shards,
        run,
        f"init_from.path={source.parent.parent}",
        "init_from.modules=[G]",
        "trainer.max_steps=1",
    )  # fmt: skip  (a run folder: its newest checkpoint)
    info = _meta(run, 1)["init_from"]
    assert info["modules"] == ["G"] and info["digests"]["G"] == src["G"]

    exp = bigtrain.export(source, tmp_path / "export")
    run = tmp_path / "from-export"
    _train(mnist_shards, run, f"init_from.path={exp}", "trainer.max_steps=1")
    info = _meta(run, 1)["init_from"]
    assert info["kind"] == "export" and sorted(info["modules"]) == ["G", "G_ema"]
    assert info["digests"]["G"] == src["G_ema"]  # the export holds the EMA generator


def test_init_from_mistakes_are_one_line(source: Path, mnist_shards: Path, tmp_path: Path) -> None:
    proc = _train(
        mnist_shards, tmp_path / "a", f"init_from.path={source}", "init_from.modules=[X]", check=False
    )
    assert proc.returncode == 2 and "init_from.modules: X not among task=gan's networks" in proc.stderr
    proc = _train(mnist_shards, tmp_path / "b", f"init_from.path={tmp_path}", check=False)
    assert proc.returncode == 2 and "not a checkpoint folder" in proc.stderr
    exp = bigtrain.export(source, tmp_path / "export")
    proc = _train(mnist_shards, tmp_path / "c", f"init_from.path={exp}", "init_from.modules=[D]", check=False)
    assert proc.returncode == 2 and "has no D weights" in proc.stderr
    # an unconditional DCGAN cannot take a conditional one's generator
    proc = run_cli("train", "experiment=mnist_dcgan", f"data.path={mnist_shards}", f"run.dir={tmp_path / 'd'}",
                   "tracking.enabled=false", *TINY, "eval.enabled=false", f"init_from.path={source}",
                   "init_from.modules=[G]", check=False)  # fmt: skip
    assert proc.returncode == 2 and "does not fit this run" in proc.stderr
    assert len(proc.stderr.strip().splitlines()[-1]) < 400
