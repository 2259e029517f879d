"""`bigtrain train experiment=mnist_vqgan` as a user runs it: the tokenizer trains with its GAN term
switched on mid-run, evaluates (rFID, PSNR, SSIM, codebook usage) into MLflow, and resumes exactly."""

from __future__ import annotations

import json
from pathlib import Path

from mlflow.tracking import MlflowClient
from PIL import Image

from tests.conftest import run_cli

SMALL = (
    "data.batch_size=8",
    "data.num_workers=0",
    "data.shuffle_buffer=64",
    "model.arch.ch=8",
    "model.arch.groups=8",
    "model.arch.z_channels=8",
    "model.arch.embed_dim=8",
    "model.arch.num_codes=32",
    "model.arch.restart_after=2",
    "vq.disc_start=3",
    "vq.disc_width=8",
    "trainer.ckpt_every=2",
    "trainer.sample_every=4",
    "trainer.log_every=1",
    "trainer.progress=false",
    "eval.every=4",
    "eval.num_samples=100",
    "eval.batch_size=50",
)


def _inspect(ckpt: Path) -> dict:
    return json.loads(run_cli("inspect", str(ckpt), "--json").stdout)


def test_tokenizer_trains_evaluates_and_resumes_exactly(mnist_shards: Path, tmp_path: Path) -> None:
    db = tmp_path / "mlflow.db"
    common = (
        "train",
        "experiment=mnist_vqgan",
        f"data.path={mnist_shards}",
        f"tracking.uri=sqlite:///{db}",
        *SMALL,
    )
    straight, resumed = tmp_path / "a", tmp_path / "b"
    run_cli(*common, f"run.dir={straight}", "trainer.max_steps=4")
    run_cli(*common, f"run.dir={resumed}", "trainer.max_steps=2")
    run_cli(*common, f"run.dir={resumed}", "trainer.max_steps=4")
    a, b = (_inspect(r / "checkpoints" / "step-00000004") for r in (straight, resumed))
    assert set(a["digests"]) >= {"vq", "opt_vq", "D", "opt_D", "task", "rng.rank0", "data.rank0"}
    assert a["digests"] == b["digests"]

    meta = json.loads((straight / "checkpoints" / "step-00000004" / "meta.json").read_text())
    client = MlflowClient(f"sqlite:///{db}")
    run = client.get_run(meta["mlflow_run_id"])
    m = run.data.metrics
    for key in ("fid/digits", "eval/psnr", "eval/ssim", "vq/codebook_usage", "vq/codebook_perplexity"):
        assert key in m, key
    assert 0 < m["eval/ssim"] <= 1 and m["eval/psnr"] > 0 and 0 < m["vq/codebook_usage"] <= 1
    gan = {h.step: h.value for h in client.get_metric_history(run.info.run_id, "vq/gan_on")}
    assert gan == {1: 0.0, 2: 0.0, 3: 1.0, 4: 1.0}  # the PatchGAN term switches on at vq.disc_start
    assert [h.step for h in client.get_metric_history(run.info.run_id, "loss/D")] == [3, 4]
    assert {a.path for a in client.list_artifacts(run.info.run_id, "model")} >= {"model/vq.pt"}
    grid = Image.open(straight / "samples" / "step-00000004.png")
    assert grid.size == (8 * 34 + 2, 8 * 34 + 2)  # 4 pairs of rows: originals over reconstructions


def test_tokenizer_bad_settings_are_one_line(mnist_shards: Path, tmp_path: Path) -> None:
    proc = run_cli(
        "train", "experiment=mnist_vqgan", f"data.path={mnist_shards}", f"run.dir={tmp_path}", "trainer.precision=fp16",
        "tracking.enabled=false", check=False,
    )  # fmt: skip
    assert proc.returncode == 2 and "trainer.precision=bf16" in proc.stderr
    proc = run_cli(
        "train", "experiment=mnist_vqgan", f"data.path={mnist_shards}", f"run.dir={tmp_path}", "+model.arch.codes=3",
        "tracking.enabled=false", check=False,
    )  # fmt: skip
    assert (
        proc.returncode == 2
        and "bigtrain: error: unknown tokenizer option(s) model.arch.codes" in proc.stderr
    )


def test_evaluate_gives_rfid_and_sample_explains_itself(mnist_shards: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    run_cli("train", "experiment=mnist_vqgan", f"data.path={mnist_shards}", f"run.dir={run}", "tracking.enabled=false",
            *SMALL, "trainer.max_steps=2", "eval.enabled=false")  # fmt: skip
    ckpt = run / "checkpoints" / "step-00000002"
    out = run_cli("evaluate", str(ckpt), "--num-samples", "100")
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["metric"] == "fid/digits/n100" and result["value"] > 0
    assert 0 < result["metrics"]["eval/ssim"] <= 1 and result["metrics"]["eval/psnr"] > 0
    bad = run_cli("sample", str(ckpt), "--out", str(tmp_path / "x.png"), check=False)
    assert bad.returncode == 2 and "use bigtrain evaluate" in bad.stderr
