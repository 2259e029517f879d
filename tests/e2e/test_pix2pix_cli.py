"""`bigtrain train experiment=mnist_pix2pix` as a user runs it: paired shards (outline -> digit),
the conditional GAN + L1 step, evaluation (FID of outputs against targets, L1, PSNR, SSIM, class
agreement) into MLflow, exact resume, and `bigtrain sample --condition`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from mlflow.tracking import MlflowClient
from PIL import Image

from bigtrain.data.manifest import DatasetManifest
from bigtrain.data.read import iter_pairs
from tests.conftest import PIX2PIX_SMALL as SMALL
from tests.conftest import run_cli


def _inspect(ckpt: Path) -> dict:
    return json.loads(run_cli("inspect", str(ckpt), "--json").stdout)


def test_pix2pix_trains_evaluates_and_resumes_exactly(mnist_edges: Path, tmp_path: Path) -> None:
    db = tmp_path / "mlflow.db"
    common = (
        "train", "experiment=mnist_pix2pix", f"data.path={mnist_edges}", f"tracking.uri=sqlite:///{db}", *SMALL,
    )  # fmt: skip
    straight, resumed = tmp_path / "a", tmp_path / "b"
    run_cli(*common, f"run.dir={straight}", "trainer.max_steps=4")
    run_cli(*common, f"run.dir={resumed}", "trainer.max_steps=2")
    run_cli(*common, f"run.dir={resumed}", "trainer.max_steps=4")
    a, b = (_inspect(r / "checkpoints" / "step-00000004") for r in (straight, resumed))
    assert set(a["digests"]) >= {"G", "D", "opt_G", "opt_D", "task", "rng.rank0", "data.rank0"}
    assert a["digests"] == b["digests"]

    meta = json.loads((straight / "checkpoints" / "step-00000004" / "meta.json").read_text())
    client = MlflowClient(f"sqlite:///{db}")
    m = client.get_run(meta["mlflow_run_id"]).data.metrics
    for key in (
        "fid/digits",
        "eval/l1",
        "eval/psnr",
        "eval/ssim",
        "class_agreement/digits",
        "loss/l1",
        "loss/D",
    ):
        assert key in m, key
    assert 0 <= m["eval/l1"] <= 1 and m["eval/psnr"] > 0 and 0 <= m["class_agreement/digits"] <= 1
    grid = Image.open(straight / "samples" / "step-00000004.png")
    assert grid.size == (12 * 34 + 2, 8 * 34 + 2)  # 8 rows of 4 source | output | target triples


def test_pix2pix_samples_from_given_conditions(mnist_edges: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    run_cli("train", "experiment=mnist_pix2pix", f"data.path={mnist_edges}", f"run.dir={run}",
            "tracking.enabled=false", "eval.enabled=false", *SMALL, "trainer.max_steps=2")  # fmt: skip
    ckpt = run / "checkpoints" / "step-00000002"
    # three outlines from the validation split, as PNG files: two in a folder, one alone
    src, _, _ = next(iter_pairs(DatasetManifest.load(mnist_edges), "val", 3))
    folder = tmp_path / "outlines"
    folder.mkdir()
    for i, arr in enumerate(src):
        Image.fromarray(arr[:, :, 0]).save((folder if i < 2 else tmp_path) / f"{i}.png")
    out = tmp_path / "grid.png"
    args = ("sample", str(ckpt), "--condition", str(folder), "--condition", str(tmp_path / "2.png"))
    run_cli(*args, "--out", str(out), "--rows", "4")
    grid = np.asarray(Image.open(out))
    assert grid.shape[:2] == (2 * 34 + 2, 4 * 34 + 2)  # 3 conditions beside 3 outputs, 2 pairs a row
    # the first cell is the first condition, as given
    assert np.array_equal(grid[2:34, 2:34, 0] if grid.ndim == 3 else grid[2:34, 2:34], src[0][:, :, 0])
    again = tmp_path / "again.png"
    run_cli(*args, "--out", str(again), "--rows", "4")
    assert np.array_equal(np.asarray(Image.open(again)), grid)  # the same seed, the same dropout noise
    # samples for other evaluators: the validation sources in order, batch after batch
    npz = tmp_path / "s.npz"
    run_cli("sample", str(ckpt), "--num-samples", "6", "--batch-size", "3", "--npz", str(npz))
    arr = np.load(npz)["arr_0"]
    assert arr.shape == (6, 32, 32, 3) and not np.array_equal(arr[:3], arr[3:])
    bad = run_cli("sample", str(ckpt), "--out", str(out), check=False)
    assert bad.returncode != 0 and "give --condition IMAGE" in bad.stderr


def test_pix2pix_refuses_unpaired_shards(mnist_shards: Path, tmp_path: Path) -> None:
    out = run_cli("train", "experiment=mnist_pix2pix", f"data.path={mnist_shards}", f"run.dir={tmp_path}",
                  "tracking.enabled=false", *SMALL, check=False)  # fmt: skip
    assert out.returncode != 0
    assert "task=pix2pix trains on pairs shards" in out.stderr and "--pairs" in out.stderr
