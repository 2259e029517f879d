"""`bigtrain train` as a user runs it: exact resume, MLflow contents, evaluate, sample, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from mlflow.tracking import MlflowClient
from PIL import Image

from tests.conftest import TINY, run_cli


def _train(mnist: Path, run_dir: Path, db: Path, *extra: str, check: bool = True):  # noqa: ANN202
    return run_cli(
        "train",
        "experiment=mnist_dcgan",
        f"data.path={mnist}",
        f"run.dir={run_dir}",
        f"tracking.uri=sqlite:///{db}",
        *TINY,
        *extra,
        check=check,
    )


def _inspect(ckpt: Path) -> dict:
    return json.loads(run_cli("inspect", str(ckpt), "--json").stdout)


RESUME_ARGS = ("trainer.ckpt_every=10", "trainer.sample_every=15", "eval.every=15", "data.flip=true")


@pytest.fixture(scope="module")
def resumed_pair(mnist_shards: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """Run A: 40 steps at once. Run B: 20 steps, then the same command with max_steps=40."""
    root = tmp_path_factory.mktemp("resume")
    db = root / "mlflow.db"
    _train(mnist_shards, root / "a", db, "trainer.max_steps=40", *RESUME_ARGS)
    _train(mnist_shards, root / "b", db, "trainer.max_steps=20", *RESUME_ARGS)
    _train(mnist_shards, root / "b", db, "trainer.max_steps=40", *RESUME_ARGS)
    return root / "a", root / "b", db


def test_resume_is_exact(resumed_pair: tuple[Path, Path, Path]) -> None:
    a, b, _ = resumed_pair
    da, db_ = _inspect(a / "checkpoints" / "step-00000040"), _inspect(b / "checkpoints" / "step-00000040")
    assert da["step"] == db_["step"] == 40
    expected = {"D", "G", "G_ema", "opt_D", "opt_G", "task", "trainer", "rng.rank0", "data.rank0"}
    assert set(da["digests"]) == expected
    assert da["digests"] == db_["digests"]


def test_resumed_run_continues_the_same_mlflow_run(resumed_pair: tuple[Path, Path, Path]) -> None:
    a, b, db = resumed_pair
    meta20 = json.loads((b / "checkpoints" / "step-00000020" / "meta.json").read_text())
    meta40 = json.loads((b / "checkpoints" / "step-00000040" / "meta.json").read_text())
    assert meta20["mlflow_run_id"] == meta40["mlflow_run_id"]
    client = MlflowClient(f"sqlite:///{db}")
    run = client.get_run(meta40["mlflow_run_id"])
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "loss/D")]
    assert steps == sorted(set(steps)) and steps[0] == 5 and steps[-1] == 40  # no gap, no duplicate
    fid_steps = [m.step for m in client.get_metric_history(run.info.run_id, "fid/digits")]
    assert fid_steps == [15, 20, 30, 40]


def test_two_identical_runs_give_identical_metrics(resumed_pair: tuple[Path, Path, Path]) -> None:
    """Run A (40 steps at once) and run B (the same command stopped at 20, then resumed) evaluate at
    steps 15, 30 and 40: every metric is the same number, to the last bit, in both."""
    a, b, db = resumed_pair
    client = MlflowClient(f"sqlite:///{db}")
    ids = [
        json.loads((r / "checkpoints" / "step-00000040" / "meta.json").read_text())["mlflow_run_id"]
        for r in (a, b)
    ]
    keys = ["fid/digits", "is/digits", "precision/digits", "recall/digits"]
    values = [{k: {m.step: m.value for m in client.get_metric_history(i, k)} for k in keys} for i in ids]
    for k in keys:
        assert set(values[0][k]) == {15, 30, 40}, k
        assert {s: values[1][k][s] for s in (15, 30, 40)} == values[0][k], k
    assert values[0]["fid/digits"][15] != values[0]["fid/digits"][40]  # the metric measures something


def test_mlflow_run_has_params_metrics_images_artifacts_tags(resumed_pair: tuple[Path, Path, Path]) -> None:
    a, _, db = resumed_pair
    run_id = json.loads((a / "checkpoints" / "step-00000040" / "meta.json").read_text())["mlflow_run_id"]
    client = MlflowClient(f"sqlite:///{db}")
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["model.name"] == "dcgan" and run.data.params["trainer.max_steps"] == "40"
    assert run.data.params["data.path"].endswith("mnist5k") or "mnist5k" in run.data.params["data.path"]
    for key in (
        "loss/D",
        "loss/G",
        "grad_norm/D",
        "grad_norm/G",
        "img_per_s",
        "data/skipped",
        "fid/digits",
        "is/digits",
        "precision/digits",
        "recall/digits",
        "train/nonfinite_skips",
    ):
        assert key in run.data.metrics, key
    assert {"git_commit", "host", "last_checkpoint"} <= set(run.data.tags)
    artifacts = {f.path for f in client.list_artifacts(run_id)}
    assert "config.yaml" in artifacts and "images" in artifacts
    images = {f.path for f in client.list_artifacts(run_id, "images")}
    assert any("samples+step+15+" in p for p in images), images
    assert (a / "samples" / "step-00000015.png").is_file() and (a / "config.yaml").is_file()


def test_mlflow_sees_a_training_experiment_its_dataset_and_a_logged_model(
    resumed_pair: tuple[Path, Path, Path],
) -> None:
    """What MLflow's UI shows: the experiment in its model-training view, the run's dataset input, and
    a logged model whose pyfunc ``predict`` returns the images ``bigtrain.load`` samples."""
    import mlflow
    import torch

    import bigtrain

    a, _, db = resumed_pair
    uri = f"sqlite:///{db}"
    run_id = json.loads((a / "checkpoints" / "step-00000040" / "meta.json").read_text())["mlflow_run_id"]
    client = MlflowClient(uri)
    run = client.get_run(run_id)
    exp = client.get_experiment(run.info.experiment_id)
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"
    (inp,) = run.inputs.dataset_inputs
    assert inp.dataset.name == "mnist5k" and len(inp.dataset.digest) == 16 and "mnist5k" in inp.dataset.source
    assert {t.key: t.value for t in inp.tags}["mlflow.data.context"] == "training"
    mlflow.set_tracking_uri(uri)
    try:
        models = mlflow.search_logged_models(experiment_ids=[exp.experiment_id], output_format="list")
        mine = [m for m in models if m.source_run_id == run_id]
        assert len(mine) == 1 and mine[0].name == "model"
        assert [o.step for o in run.outputs.model_outputs] == [40]
        pyfunc = mlflow.pyfunc.load_model(f"runs:/{run_id}/model")
        x = pyfunc.predict({"seed": [0, 7]})
        assert pyfunc.metadata.signature.inputs.input_names() == ["seed"]
    finally:
        mlflow.set_tracking_uri(None)
    assert x.shape == (2, 1, 32, 32) and x.dtype == "float32"
    g = bigtrain.load(a, device="cpu")  # the run folder: the same step-40 generator
    torch.testing.assert_close(torch.from_numpy(x[1:]), g.sample(1, seed=7), rtol=0, atol=0)
    assert (a / "model" / "model.safetensors").is_file()  # the export the model was logged from


def test_evaluate_and_sample_from_a_checkpoint(resumed_pair: tuple[Path, Path, Path], tmp_path: Path) -> None:
    a, _, db = resumed_pair
    ckpt = a / "checkpoints" / "step-00000040"
    out = json.loads(run_cli("evaluate", str(ckpt), "--num-samples", "300").stdout.strip().splitlines()[-1])
    assert out["step"] == 40 and out["metric"] == "fid/digits/n300" and out["value"] > 0
    client = MlflowClient(f"sqlite:///{db}")
    hist = client.get_metric_history(out["mlflow_run_id"], "fid/digits/n300")
    assert [(m.step, round(m.value, 6)) for m in hist] == [(40, round(out["value"], 6))]
    # how it samples can change (train-mode BatchNorm here); such a number is printed, not logged
    batch = json.loads(
        run_cli("evaluate", str(ckpt), "eval.g_bn=batch", "--num-samples", "300")
        .stdout.strip()
        .splitlines()[-1]
    )
    assert batch["overrides"] == ["eval.g_bn=batch"] and batch["value"] > 0 and batch["value"] != out["value"]
    assert len(client.get_metric_history(out["mlflow_run_id"], "fid/digits/n300")) == 1
    bad = run_cli("evaluate", str(ckpt), "model.z_dim=3", check=False)
    assert (
        bad.returncode == 2
        and "a checkpoint takes only eval.KEY=VALUE/sample.KEY=VALUE" in _one_line_error(bad)
    )
    bad = run_cli("evaluate", str(ckpt), "eval.g_bn=train", check=False)
    assert "eval.g_bn must be one of running, batch, standing" in _one_line_error(bad)
    grid = tmp_path / "grid.png"
    run_cli("sample", str(ckpt), "--out", str(grid), "--rows", "4")
    assert Image.open(grid).size == (4 * 34 + 2, 4 * 34 + 2)
    standing = tmp_path / "standing.png"
    run_cli("sample", str(ckpt), "eval.g_bn=standing", "--out", str(standing), "--rows", "4")
    assert Image.open(standing).size == Image.open(grid).size
    assert Image.open(standing).tobytes() != Image.open(grid).tobytes()
    walk = tmp_path / "walk.png"
    run_cli("sample", str(ckpt), "--out", str(walk), "--rows", "3", "--interpolate", "--steps", "7")
    assert Image.open(walk).size == (7 * 34 + 2, 3 * 34 + 2)
    # the task says which options it takes: a prior's are refused for a GAN, in one line
    bad = run_cli("sample", str(ckpt), "--out", str(grid), "--temperature", "0.5", check=False)
    assert bad.returncode == 2 and _one_line_error(bad) == (
        "bigtrain: error: --temperature: not for a task=gan checkpoint (it takes: --truncation)"
    )


def _one_line_error(proc) -> str:  # noqa: ANN001
    assert proc.returncode != 0
    lines = [ln for ln in proc.stderr.strip().splitlines() if ln.startswith("bigtrain: error:")]
    assert len(lines) == 1, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    return lines[0]


def test_missing_dataset_and_missing_shard(mnist_shards: Path, tmp_path: Path) -> None:
    import shutil

    proc = _train(tmp_path / "nowhere", tmp_path / "r", tmp_path / "m.db", check=False)
    assert "dataset folder not found" in _one_line_error(proc) and proc.returncode == 2
    copy = tmp_path / "copy"
    shutil.copytree(mnist_shards, copy)
    (copy / "train-000002.tar").unlink()
    proc = _train(copy, tmp_path / "r2", tmp_path / "m.db", check=False)
    assert "train-000002.tar" in _one_line_error(proc)


def test_missing_mandatory_value_is_one_line(tmp_path: Path) -> None:
    proc = run_cli("train", f"run.dir={tmp_path / 'r'}", check=False)  # the presets name their data
    assert proc.returncode == 2 and _one_line_error(proc) == (
        "bigtrain: error: data.path: no value given (set data.path=PATH, a folder written by `bigtrain prepare`)"
    )
    doctor = run_cli("doctor", "--quick", "--json", check=False)
    checks = {c["name"]: c for c in json.loads(doctor.stdout)["checks"]}
    assert doctor.returncode == 1 and "Traceback" not in doctor.stderr
    assert checks["config"]["status"] == "fail" and checks["config"]["detail"].startswith(
        "data.path: no value given"
    )


def test_unknown_key_and_wrong_type(mnist_shards: Path, tmp_path: Path) -> None:
    proc = _train(mnist_shards, tmp_path / "r", tmp_path / "m.db", "trainer.max_stepz=5", check=False)
    assert proc.returncode != 0 and "max_stepz" in proc.stderr and "Traceback" not in proc.stderr
    proc = _train(mnist_shards, tmp_path / "r", tmp_path / "m.db", "trainer.max_steps=many", check=False)
    assert proc.returncode != 0 and "many" in proc.stderr and "Traceback" not in proc.stderr


def test_absent_inception_weights_say_what_to_do(mnist_shards: Path, tmp_path: Path) -> None:
    empty = tmp_path / "empty-cache"
    proc = run_cli(
        "train",
        "experiment=mnist_dcgan",
        f"data.path={mnist_shards}",
        f"run.dir={tmp_path / 'r'}",
        "tracking.enabled=false",
        "eval.feature=inception",
        *TINY,
        env={"BIGTRAIN_CACHE": str(empty)},
        check=False,
    )
    line = _one_line_error(proc)
    assert str(empty / "weights" / "inception-2015-12-05.pt") in line and "download=True" in line
    assert not (tmp_path / "r" / "checkpoints").exists()  # failed before training started


@pytest.mark.parametrize("sync_every", [1, 50])
def test_nan_loss_stops_and_names_the_last_good_checkpoint(
    mnist_shards: Path, tmp_path: Path, sync_every: int
) -> None:
    """``sync_every=50`` reads the losses late, yet a checkpoint is due every step: the deferred
    checks are read before each save, so the run stops at the same step with the same checkpoints."""
    run = tmp_path / "r"
    _train(mnist_shards, run, tmp_path / "m.db", "trainer.max_steps=10", "eval.enabled=false")
    # an absurd learning rate drives the discriminator's weights to inf within a few steps
    proc = _train(
        mnist_shards,
        run,
        tmp_path / "m.db",
        "trainer.max_steps=60",
        "eval.enabled=false",
        "optim.d.lr=1e30",
        "optim.g.lr=1e30",
        # the same run, continued with another recipe on purpose
        "allow_changes=[optim.d.lr,optim.g.lr,trainer.sync_every,trainer.ckpt_every,trainer.keep_last]",
        f"trainer.ckpt_every={1000 if sync_every == 1 else 1}",
        "trainer.keep_last=100",
        f"trainer.sync_every={sync_every}",
        check=False,
    )
    line = _one_line_error(proc)
    assert proc.returncode == 3 and "non-finite" in line
    bad_step = int(line.split(" at step ")[1].split(":")[0])
    ckpts = sorted(p.name for p in (run / "checkpoints").iterdir())
    last_good = bad_step - 1 if sync_every > 1 else 10  # a checkpoint every step, or none after 10
    assert f"step-{last_good:08d}" in line
    assert ckpts == [f"step-{s:08d}" for s in range(10, last_good + 1)]
    _inspect(run / "checkpoints" / "step-00000010")  # still verifies


def test_multirun_sweep_gives_each_job_its_own_run_folder(mnist_shards: Path, tmp_path: Path) -> None:
    """Job folders (and MLflow run names) are the job's swept values plus a hash of all its
    overrides: a second sweep with other values never reuses the first's folders (it used to
    resume them as run.dir/0, run.dir/1), and the same sweep again resumes its own jobs."""
    sweep, db = tmp_path / "sweep", tmp_path / "m.db"

    def run_sweep(*extra: str) -> None:
        run_cli("train", "-m", "experiment=mnist_dcgan", f"data.path={mnist_shards}", f"run.dir={sweep}",
                f"tracking.uri=sqlite:///{db}", *TINY, "eval.enabled=false", *extra)  # fmt: skip

    run_sweep("trainer.max_steps=5", "loss=hinge,lsgan")
    first = sorted(p.name for p in sweep.iterdir() if p.is_dir())
    assert [name.split("-")[0] for name in first] == ["loss=hinge", "loss=lsgan"]
    for name, loss in zip(first, ("hinge", "lsgan"), strict=True):
        assert (sweep / name / "checkpoints" / "step-00000005" / "meta.json").is_file()
        assert f"name: {loss}" in (sweep / name / "config.yaml").read_text()
    # the same losses with another learning rate: new folders, nothing resumed
    run_sweep("trainer.max_steps=5", "optim.g.lr=1e-3", "loss=hinge,lsgan")
    second = sorted(p.name for p in sweep.iterdir() if p.is_dir() and p.name not in first)
    assert len(second) == 2 and [n.split("-")[0] for n in second] == ["loss=hinge", "loss=lsgan"]
    for name in second:
        assert sorted(p.name for p in (sweep / name / "checkpoints").iterdir()) == ["step-00000005"]
        assert "resumed" not in (sweep / name / "train.log").read_text()
    client = MlflowClient(f"sqlite:///{db}")
    runs = client.search_runs([client.get_experiment_by_name("bigtrain").experiment_id])
    assert sorted(r.info.run_name for r in runs) == sorted(f"mnist_dcgan/{n}" for n in first + second)
    assert sorted(r.data.params["loss.name"] for r in runs) == ["hinge", "hinge", "lsgan", "lsgan"]
    # the first sweep submitted again, for longer: each job resumes its own folder
    run_sweep("trainer.max_steps=6", "loss=hinge,lsgan")
    assert sorted(p.name for p in sweep.iterdir() if p.is_dir()) == sorted(first + second)
    for name in first:
        log = (sweep / name / "train.log").read_text()
        assert f"resumed from {sweep / name}/checkpoints/step-00000005" in log
        assert (sweep / name / "checkpoints" / "step-00000006").is_dir()
    assert len(client.search_runs([client.get_experiment_by_name("bigtrain").experiment_id])) == 4


def test_conditional_biggan_samples_by_class_with_truncation(mnist_shards: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    run_cli(
        "train",
        "experiment=mnist_biggan",
        f"data.path={mnist_shards}",
        f"run.dir={run}",
        "tracking.enabled=false",
        *TINY,
        "model.arch.shared_dim=8",
        "trainer.max_steps=3",
        "eval.enabled=false",
        "sample.grid_rows=4",
    )
    assert Image.open(run / "samples" / "step-00000003.png").size == (
        4 * 34 + 2,
        10 * 34 + 2,
    )  # a row per class
    ckpt = run / "checkpoints" / "step-00000003"
    out = tmp_path / "per_class.png"
    run_cli("sample", str(ckpt), "--out", str(out), "--per-class", "--rows", "5", "--truncation", "0.5")
    assert Image.open(out).size == (5 * 34 + 2, 10 * 34 + 2)
    one = tmp_path / "threes.png"
    run_cli("sample", str(ckpt), "--out", str(one), "--class", "3", "--rows", "2")
    assert Image.open(one).size == (2 * 34 + 2, 2 * 34 + 2)
    bad = run_cli("sample", str(ckpt), "--out", str(one), "--class", "12", check=False)
    assert bad.returncode == 2 and "out of range" in bad.stderr
    # samples for the ADM evaluator / torch-fidelity: uint8 NHWC with labels, and one PNG each
    npz, pngs = tmp_path / "samples.npz", tmp_path / "pngs"
    cmd = ("sample", str(ckpt), "--num-samples", "25", "--batch-size", "10", "--class", "3", "--class", "7")
    out = json.loads(run_cli(*cmd, "--npz", str(npz), "--png-dir", str(pngs)).stdout.strip().splitlines()[-1])
    assert out["shape"] == [25, 32, 32, 3] and out["labels"] and out["step"] == 3
    with np.load(npz) as data:
        images, labels = data["arr_0"], data["arr_1"]
    assert images.dtype == np.uint8 and set(labels.tolist()) <= {3, 7} and len(labels) == 25
    assert np.array_equal(images[..., 0], images[..., 2])  # grayscale, repeated to RGB
    assert sorted(p.name for p in pngs.iterdir())[:2] == ["000000.png", "000001.png"]
    assert len(list(pngs.glob("*.png"))) == 25
    assert (pngs / "labels.txt").read_text().split() == [str(v) for v in labels]
    assert np.array_equal(np.asarray(Image.open(pngs / "000024.png")), images[24, ..., 0])
    again = tmp_path / "again.npz"
    run_cli(*cmd, "--npz", str(again))  # the same seed, the same samples
    with np.load(again) as data:
        assert np.array_equal(data["arr_0"], images) and np.array_equal(data["arr_1"], labels)
    bad = run_cli("sample", str(ckpt), "--npz", str(npz), check=False)
    assert (
        _one_line_error(bad)
        == "bigtrain: error: --npz / --png-dir need --num-samples N (how many samples to write)"
    )


def test_biggan_deep_preset_trains_and_resumes_exactly(mnist_shards: Path, tmp_path: Path) -> None:
    common = (
        "experiment=mnist_biggan_deep",
        f"data.path={mnist_shards}",
        "tracking.enabled=false",
        *TINY,
        "model.arch.shared_dim=8",
        "eval.enabled=false",
        "trainer.ckpt_every=2",
        "trainer.sample_every=4",
    )
    straight, resumed = tmp_path / "a", tmp_path / "b"
    run_cli("train", *common, f"run.dir={straight}", "trainer.max_steps=4")
    run_cli("train", *common, f"run.dir={resumed}", "trainer.max_steps=2")
    run_cli("train", *common, f"run.dir={resumed}", "trainer.max_steps=4")
    a, b = (_inspect(r / "checkpoints" / "step-00000004") for r in (straight, resumed))
    assert a["step"] == b["step"] == 4
    assert a["digests"] == b["digests"]
    assert "name: biggan_deep" in (straight / "config.yaml").read_text()
    assert Image.open(straight / "samples" / "step-00000004.png").size[1] == 10 * 34 + 2  # a row per class


def test_resuming_with_a_changed_config_stops_unless_allowed(mnist_shards: Path, tmp_path: Path) -> None:
    """The run folder is the run: a re-run with another recipe stops before any step, naming each
    changed key; cadence keys may change; an allowed change is recorded in the checkpoint, the
    MLflow run and a kept copy of the replaced config."""
    run, db = tmp_path / "r", tmp_path / "m.db"
    base = ("eval.enabled=false", "trainer.ckpt_every=2")
    _train(mnist_shards, run, db, "trainer.max_steps=2", *base)
    first_yaml = (run / "config.yaml").read_text()
    proc = _train(mnist_shards, run, db, "loss=hinge", "trainer.max_steps=3", *base, check=False)
    assert proc.returncode == 2 and _one_line_error(proc) == (
        f"bigtrain: error: the config changed since {run}/checkpoints/step-00000002 (step 2): "
        "loss.name: 'non_saturating' -> 'hinge'; to start a new run give another run.dir, to continue "
        "this one with the change add allow_changes=[loss.name]"
    )
    # a change of loss and critic used to end in a load_state_dict traceback
    proc = _train(
        mnist_shards, run, db, "loss=wgan_gp", "model.d_norm=layer", "trainer.max_steps=3", *base, check=False
    )
    assert (
        "model.d_norm: 'batch' -> 'layer'" in _one_line_error(proc) and "loss.d_steps: 1 -> 5" in proc.stderr
    )
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-00000002"]
    assert (run / "config.yaml").read_text() == first_yaml
    bad = _train(mnist_shards, run, db, "allow_changes=[loss.nam]", "trainer.max_steps=3", *base, check=False)
    assert _one_line_error(bad) == "bigtrain: error: allow_changes: loss.nam names no key of this config"
    # cadence, length and logging may change without leave
    _train(mnist_shards, run, db, "trainer.max_steps=4", "trainer.log_every=1", *base)
    _train(mnist_shards, run, db, "loss=hinge", "allow_changes=[loss.name]", "trainer.max_steps=6", *base)
    meta = json.loads((run / "checkpoints" / "step-00000006" / "meta.json").read_text())
    assert meta["config_changes"] == [{"step": 4, "changes": {"loss.name": ["non_saturating", "hinge"]}}]
    assert len(meta["config_fingerprint"]) == 16
    assert (run / "config.until-step-00000004.yaml").read_text().count("non_saturating") == 1
    assert "name: hinge" in (run / "config.yaml").read_text()
    # the same command again resumes without complaint; the history stays in later checkpoints
    _train(mnist_shards, run, db, "loss=hinge", "trainer.max_steps=8", *base)
    later = json.loads((run / "checkpoints" / "step-00000008" / "meta.json").read_text())
    assert later["config_changes"] == meta["config_changes"]
    # an allowed change the weights cannot follow: one line naming the component, nothing written
    wider = _train(
        mnist_shards,
        run,
        db,
        "loss=hinge",
        "model.g_width=16",
        "allow_changes=[model.g_width]",
        *base,
        check=False,
    )
    assert (
        _one_line_error(wider).startswith(
            "bigtrain: error: checkpoint component 'G' does not fit this run: size mismatch for "
        )
        and "likely cause: the run's networks or optimizers differ" in wider.stderr
    )
    layer = _train(
        mnist_shards,
        run,
        db,
        "loss=hinge",
        "model.d_norm=layer",
        "allow_changes=[model.d_norm]",
        *base,
        check=False,
    )
    assert (
        "checkpoint component 'D' does not fit this run: Unexpected key(s) in state_dict"
        in _one_line_error(layer)
    )
    assert sorted(p.name for p in (run / "checkpoints").iterdir())[-1] == "step-00000008"
    client = MlflowClient(f"sqlite:///{db}")
    tags = client.get_run(meta["mlflow_run_id"]).data.tags
    assert tags["config_change.step-00000004"] == "loss.name: 'non_saturating' -> 'hinge'"
    artifacts = {f.path for f in client.list_artifacts(meta["mlflow_run_id"])}
    assert "config.until-step-00000004.yaml" in artifacts


def test_keep_best_keeps_the_best_checkpoints_outside_keep_last(mnist_shards: Path, tmp_path: Path) -> None:
    """``trainer.keep_best``: the best evaluations' checkpoints survive keep_last pruning, listed in
    best.json with a ``best`` link; ``resume=best`` and ``bigtrain inspect`` know them."""
    run, db = tmp_path / "r", tmp_path / "m.db"
    keep = ("eval.every=2", "trainer.ckpt_every=100", "trainer.keep_last=1", "trainer.keep_best.count=2",
            "trainer.keep_best.metric=fid/digits", "trainer.keep_best.mode=max")  # fmt: skip
    _train(mnist_shards, run, db, "trainer.max_steps=8", *keep)
    meta = json.loads((run / "checkpoints" / "step-00000008" / "meta.json").read_text())
    history = MlflowClient(f"sqlite:///{db}").get_metric_history(meta["mlflow_run_id"], "fid/digits")
    fid = {m.step: m.value for m in history}
    assert sorted(fid) == [2, 4, 6, 8]
    expected = sorted(fid, key=lambda s: (-fid[s], s))[:2]  # mode=max: the two highest
    best = json.loads((run / "checkpoints" / "best.json").read_text())
    assert [e["step"] for e in best["best"]] == expected and best["metric"] == "fid/digits"
    folders = sorted(p.name for p in (run / "checkpoints").iterdir() if p.name.startswith("step-"))
    assert folders == sorted(f"step-{s:08d}" for s in {*expected, 8})  # the best ones, and the last
    assert (run / "checkpoints" / "best").resolve().name == f"step-{expected[0]:08d}"
    info = _inspect(run / "checkpoints" / "best")
    assert info["step"] == expected[0] and info["best"]["rank"] == 1 and info["best"]["of"] == 2
    resumed = _train(mnist_shards, run, db, f"trainer.max_steps={expected[0]}", "resume=best", *keep)
    assert f"resumed from {run}/checkpoints/step-{expected[0]:08d}" in resumed.stderr
    none = _train(
        mnist_shards,
        tmp_path / "other",
        db,
        "trainer.max_steps=1",
        "eval.enabled=false",
        "resume=best",
        check=False,
    )
    assert "resume=best: " in _one_line_error(none) and "has no best checkpoint" in none.stderr
