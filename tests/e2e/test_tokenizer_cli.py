"""`bigtrain train experiment=mnist_vqgan` as a user runs it: the tokenizer trains with its GAN term
switched on mid-run, evaluates (rFID, PSNR, SSIM, codebook usage) into MLflow, and resumes exactly."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from mlflow.tracking import MlflowClient
from PIL import Image

from bigtrain.data.manifest import DatasetManifest
from bigtrain.data.read import iter_images
from bigtrain.data.tokenize import read_tokens
from bigtrain.train.snapshot import load_snapshot
from tests.conftest import TOKENIZER_SMALL as SMALL
from tests.conftest import run_cli
from tests.servers import http_server


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
    for key in ("rfid/digits", "eval/psnr", "eval/ssim", "vq/codebook_usage", "vq/codebook_perplexity"):
        assert key in m, key
    assert 0 < m["eval/ssim"] <= 1 and m["eval/psnr"] > 0 and 0 < m["vq/codebook_usage"] <= 1
    gan = {h.step: h.value for h in client.get_metric_history(run.info.run_id, "vq/gan_on")}
    assert gan == {1: 0.0, 2: 0.0, 3: 1.0, 4: 1.0}  # the PatchGAN term switches on at vq.disc_start
    assert [h.step for h in client.get_metric_history(run.info.run_id, "loss/D")] == [3, 4]
    assert {a.path for a in client.list_artifacts(run.info.run_id, "model")} >= {
        "model/model.safetensors", "model/config.json", "model/README.md"}  # fmt: skip
    grid = Image.open(straight / "samples" / "step-00000004.png")
    assert grid.size == (8 * 34 + 2, 8 * 34 + 2)  # 4 pairs of rows: originals over reconstructions


def test_tokenizer_trains_in_resolution_stages_without_growing(mnist_shards: Path, tmp_path: Path) -> None:
    """16 px then 32 px (LlamaGen-style stages: the same fully convolutional networks, no fade),
    the first stage's batch of 8 split into 2 micro-batches; evaluation and grids at the stage's
    resolution; a resume inside the first stage continues exactly."""
    db = tmp_path / "mlflow.db"
    common = (
        "train", "experiment=mnist_vqgan", f"data.path={mnist_shards}", f"tracking.uri=sqlite:///{db}", *SMALL,
        "stages.schedule=[{resolution: 16, steps: 2, micro_batch: 4, lr_g: 1.0e-3}, {resolution: 32, steps: 2}]",
        "eval.every=2", "trainer.sample_every=2", "sample.grid_rows=4",
    )  # fmt: skip
    straight, resumed = tmp_path / "a", tmp_path / "b"
    log = run_cli(*common, f"run.dir={straight}", "trainer.max_steps=4").stderr
    assert "step 1: data at 16px, batch 4 per process" in log and "step 3: data at 32px, batch 8" in log
    run_cli(*common, f"run.dir={resumed}", "trainer.max_steps=1")
    run_cli(*common, f"run.dir={resumed}", "trainer.max_steps=4")
    a, b = (_inspect(r / "checkpoints" / "step-00000004") for r in (straight, resumed))
    assert a["digests"] == b["digests"]
    run_id = json.loads((straight / "checkpoints" / "step-00000004" / "meta.json").read_text())[
        "mlflow_run_id"
    ]
    client = MlflowClient(f"sqlite:///{db}")

    def history(key: str) -> dict[int, float]:
        return {h.step: h.value for h in client.get_metric_history(run_id, key)}

    assert history("eval/resolution") == {2: 16.0, 4: 32.0}
    assert history("resolution") == {1: 16.0, 2: 16.0, 3: 32.0, 4: 32.0}
    assert history("lr/vq")[2] == 1.0e-3 and history("lr/vq")[3] == 2.0e-4  # the stage's own rate
    assert Image.open(straight / "samples" / "step-00000002.png").size == (4 * 18 + 2, 4 * 18 + 2)
    assert Image.open(straight / "samples" / "step-00000004.png").size == (4 * 34 + 2, 4 * 34 + 2)


def test_tokenizer_bad_settings_are_one_line(mnist_shards: Path, tmp_path: Path) -> None:
    proc = run_cli(
        "train", "experiment=mnist_vqgan", f"data.path={mnist_shards}", f"run.dir={tmp_path}", "trainer.precision=fp16",
        "tracking.enabled=false", check=False,
    )  # fmt: skip
    assert proc.returncode == 2 and "trainer.precision=bf16" in proc.stderr
    for bad in ("model.arch.codes=3", "+model.arch.codes=3"):  # typed by model=vqgan's options dataclass
        proc = run_cli(
            "train", "experiment=mnist_vqgan", f"data.path={mnist_shards}", f"run.dir={tmp_path}", bad,
            "tracking.enabled=false", check=False,
        )  # fmt: skip
        assert proc.returncode == 2 and proc.stderr.startswith(
            "bigtrain: error: model.arch.codes: not an option of model=vqgan; valid: ch, ch_mult, "
        )
        assert proc.stderr.count("\n") == 1  # one line


def test_evaluate_gives_rfid_and_sample_explains_itself(small_tokenizer: Path, tmp_path: Path) -> None:
    out = run_cli("evaluate", str(small_tokenizer), "--num-samples", "100")
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["metric"] == "rfid/digits/n100" and result["value"] > 0
    assert 0 < result["metrics"]["eval/ssim"] <= 1 and result["metrics"]["eval/psnr"] > 0
    bad = run_cli("sample", str(small_tokenizer), "--out", str(tmp_path / "x.png"), check=False)
    assert bad.returncode == 2 and "use bigtrain evaluate" in bad.stderr


def test_tokenize_writes_token_shards_that_decode_like_the_model(
    small_tokenizer: Path, mnist_shards: Path, tmp_path: Path
) -> None:
    out = tmp_path / "tokens"
    report = json.loads(
        run_cli("tokenize", str(small_tokenizer), str(mnist_shards), str(out), "--workers", "2").stdout
    )
    src = DatasetManifest.load(mnist_shards)
    toks = DatasetManifest.load(out)
    assert report["counts"] == {"train": src.count("train"), "val": src.count("val")}
    assert toks.extra["kind"] == "tokens" and toks.extra["tokens"] == {
        "grid": [8, 8],
        "vocab": 32,
        "dtype": "uint16",
    }
    tok = toks.extra["tokenizer"]
    meta = json.loads((small_tokenizer / "meta.json").read_text())
    assert tok["checkpoint"] == str(small_tokenizer.resolve()) and tok["digest"] == meta["digests"]["vq"]
    assert [s.file for s in toks.splits["train"]] == [s.file for s in src.splits["train"]]
    tokens, labels, keys = read_tokens(toks, "val")
    assert tokens.shape == (500, 8, 8) and tokens.dtype == np.uint16 and tokens.max() < 32
    # The same codes as the tokenizer gives for those images, in the same order, with their labels.
    snap = load_snapshot(small_tokenizer, "cpu")
    vq = snap.task.vq.eval()
    first = next(iter_images(src, "val", 16))
    x = torch.from_numpy(first).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)
    with torch.no_grad():
        expected = vq.encode(x)[1].indices.numpy()
    assert np.array_equal(tokens[:16], expected)
    assert labels.min() >= 0 and labels.max() <= 9 and len(set(keys)) == 500
    # Deterministic: a second run gives byte-identical shards.
    again = tmp_path / "again"
    run_cli("tokenize", str(small_tokenizer), str(mnist_shards), str(again))
    assert [s.sha256 for s in DatasetManifest.load(again).splits["val"]] == [
        s.sha256 for s in toks.splits["val"]
    ]
    bad = run_cli(
        "tokenize", str(small_tokenizer), str(tmp_path / "missing"), str(tmp_path / "o"), check=False
    )
    assert bad.returncode == 2 and "dataset folder not found" in bad.stderr


def test_tokenize_reads_indexed_shards_over_http_like_local_ones(
    small_tokenizer: Path, mnist_shards: Path, tmp_path: Path
) -> None:
    """The digits indexed where an HTTP server has them tokenize to the same bytes as the prepared
    local copy: remote reading, labels and naming do not change a token."""
    local = tmp_path / "local"
    run_cli("tokenize", str(small_tokenizer), str(mnist_shards), str(local))
    with http_server(mnist_shards) as (url, _):
        run_cli(
            "index",
            f"{url}/train-{{000000..000008}}.tar",
            str(tmp_path / "ds"),
            "--val",
            f"{url}/val-000000.tar",
            "--no-progress",
        )
        remote = tmp_path / "remote"
        run_cli("tokenize", str(small_tokenizer), str(tmp_path / "ds"), str(remote))
    a, b = DatasetManifest.load(local), DatasetManifest.load(remote)
    assert [s.sha256 for s in a.splits["val"]] == [s.sha256 for s in b.splits["val"]]
    assert [s.sha256 for s in a.splits["train"]] == [s.sha256 for s in b.splits["train"]]
    assert b.label_key == "cls" and b.classes == a.classes
