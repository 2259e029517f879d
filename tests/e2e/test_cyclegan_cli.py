"""`bigtrain train experiment=mnist_cyclegan` as a user runs it: two unpaired domains stepped
together, LSGAN + cycle + identity with a history of generated images, evaluation in both
directions into MLflow, exact resume (the histories included), and `bigtrain sample --condition`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from mlflow.tracking import MlflowClient
from PIL import Image

from bigtrain.data.manifest import DatasetManifest
from bigtrain.data.read import iter_images
from tests.conftest import CYCLEGAN_SMALL as SMALL
from tests.conftest import run_cli


def _inspect(ckpt: Path) -> dict:
    return json.loads(run_cli("inspect", str(ckpt), "--json").stdout)


def test_cyclegan_trains_evaluates_both_ways_and_resumes_exactly(mnist_domains: Path, tmp_path: Path) -> None:
    db = tmp_path / "mlflow.db"
    common = (
        "train", "experiment=mnist_cyclegan", f"data.path={mnist_domains}", f"tracking.uri=sqlite:///{db}",
        *SMALL, "data.record_keys=true",
    )  # fmt: skip
    straight, resumed = tmp_path / "a", tmp_path / "b"
    run_cli(*common, f"run.dir={straight}", "trainer.max_steps=4")
    run_cli(*common, f"run.dir={resumed}", "trainer.max_steps=2")
    run_cli(*common, f"run.dir={resumed}", "trainer.max_steps=4")
    a, b = (_inspect(r / "checkpoints" / "step-00000004") for r in (straight, resumed))
    nets = {"G_AB", "G_BA", "D_A", "D_B", "opt_G", "opt_D"}
    assert set(a["digests"]) >= nets | {"task", "task_rank.rank0", "rng.rank0", "data.rank0"}
    assert a["digests"] == b["digests"]  # the histories of generated images resumed too

    # every step reads a batch of each domain, and the domains' files are disjoint
    keys = (straight / "data-keys" / "rank-0.txt").read_text().split()
    assert len(keys) == 4 * 2 * 2
    manifest = DatasetManifest.load(mnist_domains)
    files = {d: {s.file for s in manifest.shards("train", d)} for d in ("A", "B")}
    shard_of = [k.split(":")[0] for k in keys]
    per_step = [shard_of[i : i + 4] for i in range(0, len(keys), 4)]
    assert all(set(s[:2]) <= files["A"] and set(s[2:]) <= files["B"] for s in per_step)

    meta = json.loads((straight / "checkpoints" / "step-00000004" / "meta.json").read_text())
    m = MlflowClient(f"sqlite:///{db}").get_run(meta["mlflow_run_id"]).data.metrics
    for key in ("fid_AB/digits", "fid_BA/digits", "loss/cycle_A", "loss/idt_B", "loss/D_A"):
        assert key in m, key
    assert m["fid_AB/digits"] != m["fid_BA/digits"]
    grid = Image.open(straight / "samples" / "step-00000004.png")
    assert grid.size == (12 * 34 + 2, 8 * 34 + 2)  # 4 rows A -> B -> A, 4 rows B -> A -> B, 4 triples each


def test_cyclegan_samples_from_given_images(mnist_domains: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    run_cli("train", "experiment=mnist_cyclegan", f"data.path={mnist_domains}", f"run.dir={run}",
            "tracking.enabled=false", "eval.enabled=false", *SMALL, "trainer.max_steps=2")  # fmt: skip
    images = next(iter_images(DatasetManifest.load(mnist_domains).domain_view("A"), "val", 2))
    for i, arr in enumerate(images):
        Image.fromarray(arr[:, :, 0]).save(tmp_path / f"{i}.png")
    out = tmp_path / "grid.png"
    run_cli("sample", str(run / "checkpoints" / "step-00000002"), "--condition", str(tmp_path / "0.png"),
            "--condition", str(tmp_path / "1.png"), "--out", str(out), "--rows", "4")  # fmt: skip
    grid = np.asarray(Image.open(out))
    assert grid.shape[:2] == (34 + 2, 4 * 34 + 2)  # 2 images beside their translations, one row


def test_cyclegan_refuses_paired_shards(mnist_edges: Path, tmp_path: Path) -> None:
    out = run_cli("train", "experiment=mnist_cyclegan", f"data.path={mnist_edges}", f"run.dir={tmp_path}",
                  "tracking.enabled=false", *SMALL, check=False)  # fmt: skip
    assert out.returncode != 0 and "task=cyclegan trains on domains shards" in out.stderr
