"""`bigtrain train experiment=mnist_progan` with a short stage schedule 4 -> 8 -> 16 -> 32: the
stream follows the stages, alpha ramps during each fade, a checkpoint taken mid-fade resumes with
identical digests, and each stage's FID uses reference statistics at its own resolution."""

from __future__ import annotations

import json
from pathlib import Path

from mlflow.tracking import MlflowClient
from PIL import Image

from tests.conftest import run_cli

SCHEDULE = (
    "stages.schedule=[{resolution: 4, steps: 2}, {resolution: 8, steps: 4, fade_steps: 4}, "
    "{resolution: 16, steps: 4, fade_steps: 2}, {resolution: 32, steps: 4, fade_steps: 2}]"
)
SMALL = (
    "data.num_workers=0",
    "data.shuffle_buffer=64",
    "model.arch.fmap_base=128",
    "model.arch.fmap_max=32",
    "model.z_dim=32",
    "trainer.progress=false",
    "trainer.log_every=1",
    "trainer.ckpt_every=5",
    "trainer.sample_every=5",
    "eval.every=7",
    "eval.num_samples=100",
    "eval.batch_size=50",
    "sample.grid_rows=4",
    SCHEDULE,
)


def _digests(ck: Path) -> dict[str, str]:
    return json.loads(run_cli("inspect", str(ck), "--json").stdout)["digests"]


def test_progan_grows_and_resumes_mid_fade_exactly(
    mnist_shards: Path, tmp_path: Path, session_cache: Path
) -> None:
    db = tmp_path / "mlflow.db"
    common = (
        "train",
        "experiment=mnist_progan",
        f"data.path={mnist_shards}",
        f"tracking.uri=sqlite:///{db}",
        *SMALL,
    )
    straight, resumed = tmp_path / "a", tmp_path / "b"
    run_cli(*common, f"run.dir={straight}", "trainer.max_steps=14")
    run_cli(*common, f"run.dir={resumed}", "trainer.max_steps=5")  # step 5: stage 8px, alpha 0.75
    log = run_cli(*common, f"run.dir={resumed}", "trainer.max_steps=14").stderr
    assert "step 6: data at 8px" in log and "step 7: data at 16px" in log and "step 11: data at 32px" in log
    a, b = (_digests(r / "checkpoints" / "step-00000014") for r in (straight, resumed))
    assert a == b and {"G", "D", "G_ema", "opt_G", "opt_D", "task"} <= set(a)

    meta = json.loads((straight / "checkpoints" / "step-00000005" / "meta.json").read_text())
    client = MlflowClient(f"sqlite:///{db}")
    run_id = meta["mlflow_run_id"]

    def history(key: str) -> dict[int, float]:
        return {h.step: h.value for h in client.get_metric_history(run_id, key)}

    alpha, res = history("alpha"), history("resolution")
    assert [alpha[s] for s in range(1, 15)] == [1, 1, 0.25, 0.5, 0.75, 1, 0.5, 1, 1, 1, 0.5, 1, 1, 1]
    assert [res[s] for s in (1, 3, 7, 11)] == [4, 8, 16, 32]
    assert history("eval/resolution") == {7: 16.0, 14: 32.0}  # FID at the stage's resolution
    stats = {p.name for p in (session_cache / "fid_stats").glob("*.npz")}
    assert any("-val-16px-" in n for n in stats) and any("-val-32px-" in n for n in stats)
    # grids at the stage's resolution: 4 x 4 samples of 8 px at step 5, of 32 px at step 14
    assert Image.open(straight / "samples" / "step-00000005.png").size == (4 * 10 + 2, 4 * 10 + 2)
    assert Image.open(straight / "samples" / "step-00000014.png").size == (4 * 34 + 2, 4 * 34 + 2)
    # sampling a mid-fade checkpoint uses its stage
    out = tmp_path / "s.png"
    run_cli("sample", str(straight / "checkpoints" / "step-00000005"), "--out", str(out), "--rows", "2")
    assert Image.open(out).size == (2 * 10 + 2, 2 * 10 + 2)
    info = json.loads(run_cli("info", "experiment=mnist_progan", SCHEDULE, "--json").stdout)
    assert [(s["resolution"], s["steps"], s["fade_steps"]) for s in info["stages"]] == [
        (4, 2, 0), (8, 4, 4), (16, 4, 2), (32, 4, 2)
    ]  # fmt: skip


def test_stage_schedules_that_cannot_work_are_one_line(mnist_shards: Path, tmp_path: Path) -> None:
    base = ("train", f"data.path={mnist_shards}", f"run.dir={tmp_path}", "tracking.enabled=false")
    proc = run_cli(*base, "experiment=mnist_dcgan", SCHEDULE, check=False)
    assert (
        proc.returncode == 2 and "needs a growing model (model=progan, or model.arch.grow=true" in proc.stderr
    )
    proc = run_cli(*base, "experiment=mnist_vqgan", SCHEDULE, check=False)  # no growing: nothing fades
    assert proc.returncode == 2 and "stage 1 has fade_steps, but this model does not grow" in proc.stderr
    proc = run_cli(*base, "experiment=mnist_transformer", SCHEDULE, check=False)
    assert proc.returncode == 2 and "stages.schedule is for images" in proc.stderr
    proc = run_cli(*base, "experiment=mnist_progan", "stages.schedule=[{resolution: 4, steps: 2}, {resolution: 16, steps: 2}]", check=False)  # fmt: skip
    assert proc.returncode == 2 and "must reach the dataset's resolution 32" in proc.stderr
    proc = run_cli(*base, "experiment=mnist_progan", "stages.schedule=[{resolution: 4, steps: 2}, {resolution: 12, steps: 2}]", check=False)  # fmt: skip
    assert proc.returncode == 2 and "stage resolution 12 is not one of the model's" in proc.stderr


def test_growing_biggan_splits_a_stage_batch_and_resumes_mid_fade_exactly(
    mnist_shards: Path, tmp_path: Path
) -> None:
    """BigGAN with `model.arch.grow=true`: residual blocks faded in 8 -> 16 -> 32 px; the 16 px
    stage's batch of 8 arrives as 2 micro-batches of 4 whose gradients are accumulated."""
    from bigtrain.checkpoint.io import open_checkpoint

    schedule = (
        "stages.schedule=[{resolution: 8, steps: 2}, "
        "{resolution: 16, steps: 4, fade_steps: 4, batch_size: 8, micro_batch: 4}, "
        "{resolution: 32, steps: 2, fade_steps: 1}]"
    )
    common = (
        "train", "experiment=mnist_biggan", f"data.path={mnist_shards}", "tracking.enabled=false",
        "model.arch.grow=true", "loss.d_steps=1", "model.g_width=4", "model.d_width=4", "model.z_dim=20", "data.batch_size=6",
        "data.num_workers=0", "data.shuffle_buffer=64", "ema.start_step=0", "trainer.progress=false",
        "trainer.ckpt_every=4", "trainer.sample_every=4", "eval.enabled=false", schedule,
    )  # fmt: skip
    straight, resumed = tmp_path / "a", tmp_path / "b"
    log = run_cli(*common, f"run.dir={straight}", "trainer.max_steps=8").stderr
    assert "step 3: data at 16px, batch 4 per process" in log and "step 7: data at 32px, batch 6" in log
    run_cli(*common, f"run.dir={resumed}", "trainer.max_steps=4")  # step 4: 16 px, alpha 0.5
    run_cli(*common, f"run.dir={resumed}", "trainer.max_steps=8")
    a, b = (_digests(r / "checkpoints" / "step-00000008") for r in (straight, resumed))
    assert a == b and {"G", "D", "G_ema", "opt_G", "opt_D"} <= set(a)
    ck = open_checkpoint(straight / "checkpoints" / "step-00000004")
    assert ck.load("task")["stages"] == {"step": 4, "stage": 1, "resolution": 16, "alpha": 0.5}
    assert ck.load("trainer")["images_seen"] == 2 * 6 + 2 * 8  # the split stage still takes 8 a step
    assert (
        open_checkpoint(straight / "checkpoints" / "step-00000008").load("trainer")["images_seen"]
        == 2 * 6 + 4 * 8 + 2 * 6
    )
    assert Image.open(straight / "samples" / "step-00000004.png").size == (10 * 18 + 2, 10 * 18 + 2)
    info = json.loads(run_cli("info", *common[1:], "--json").stdout)
    assert [(s["resolution"], s["batch_size"], s["micro_batch"]) for s in info["stages"]] == [
        (8, 6, 6), (16, 8, 4), (32, 6, 6)
    ]  # fmt: skip
