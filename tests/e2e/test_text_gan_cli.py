"""`bigtrain train experiment=mnist_text_gan` as a user runs it: captioned shards, GAN-CLS's
matching-aware step with the jointly trained text encoder, evaluation (FID, class agreement,
attribute agreement) into MLflow, exact resume, and `bigtrain sample --prompt`."""

from __future__ import annotations

import json
from pathlib import Path

from mlflow.tracking import MlflowClient
from PIL import Image

from tests.conftest import TEXT_GAN_SMALL as SMALL
from tests.conftest import run_cli


def _inspect(ckpt: Path) -> dict:
    return json.loads(run_cli("inspect", str(ckpt), "--json").stdout)


def test_text_gan_trains_evaluates_resumes_and_samples_prompts(mnist_captions: Path, tmp_path: Path) -> None:
    db = tmp_path / "mlflow.db"
    common = (
        "train", "experiment=mnist_text_gan", f"data.path={mnist_captions}", f"tracking.uri=sqlite:///{db}", *SMALL,
    )  # fmt: skip
    straight, resumed = tmp_path / "a", tmp_path / "b"
    run_cli(*common, f"run.dir={straight}", "trainer.max_steps=4")
    run_cli(*common, f"run.dir={resumed}", "trainer.max_steps=2")
    run_cli(*common, f"run.dir={resumed}", "trainer.max_steps=4")
    ckpt = straight / "checkpoints" / "step-00000004"
    a, b = (_inspect(r / "checkpoints" / "step-00000004") for r in (straight, resumed))
    assert set(a["digests"]) >= {
        "G",
        "D",
        "text",
        "G_ema",
        "opt_G",
        "opt_D",
        "task",
        "rng.rank0",
        "data.rank0",
    }
    assert a["digests"] == b["digests"]

    meta = json.loads((ckpt / "meta.json").read_text())
    m = MlflowClient(f"sqlite:///{db}").get_run(meta["mlflow_run_id"]).data.metrics
    for key in (
        "fid/digits",
        "class_agreement/digits",
        "attribute_agreement/thickness",
        "attribute_agreement/width",
        "attribute_agreement/slant",
        "attribute_gap/thickness",
        "loss/D",
        "D/wrong_logit",
    ):
        assert key in m, key
    assert 0 <= m["class_agreement/digits"] <= 1 and 0 <= m["attribute_agreement/thickness"] <= 1
    grid = Image.open(straight / "samples" / "step-00000004.png")
    assert grid.size == (8 * 34 + 2, 8 * 34 + 2)  # 8 prompts, a row of 8 samples each

    out, again = tmp_path / "g.png", tmp_path / "again.png"
    prompts = ("--prompt", "a thick seven", "--prompt", "a thin one")
    said = run_cli("sample", str(ckpt), *prompts, "--out", str(out), "--rows", "5")
    assert "2 prompts x 5 samples" in said.stdout
    assert Image.open(out).size == (5 * 34 + 2, 2 * 34 + 2)  # one row per prompt
    run_cli("sample", str(ckpt), *prompts, "--out", str(again), "--rows", "5")
    assert out.read_bytes() == again.read_bytes()  # the same seed, the same file
    bad = run_cli("sample", str(ckpt), "--out", str(out), check=False)
    assert bad.returncode != 0 and "give --prompt TEXT" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1


def test_prompt_is_refused_for_other_tasks(mnist_shards: Path, tmp_path: Path) -> None:
    run_cli("train", "experiment=mnist_dcgan", "debug=tiny_gan", f"data.path={mnist_shards}", f"run.dir={tmp_path}",
            "tracking.enabled=false", "eval.enabled=false", "trainer.max_steps=1", "trainer.ckpt_every=1")  # fmt: skip
    ckpt = tmp_path / "checkpoints" / "step-00000001"
    bad = run_cli("sample", str(ckpt), "--prompt", "a seven", "--out", str(tmp_path / "g.png"), check=False)
    assert bad.returncode != 0 and "--prompt: a task=gan checkpoint does not sample from text" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1


def test_text_gan_refuses_shards_without_captions(mnist_shards: Path, tmp_path: Path) -> None:
    out = run_cli("train", "experiment=mnist_text_gan", f"data.path={mnist_shards}", f"run.dir={tmp_path}",
                  "tracking.enabled=false", *SMALL, check=False)  # fmt: skip
    assert out.returncode != 0 and "has no .txt captions" in out.stderr
