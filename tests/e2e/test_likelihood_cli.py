"""`bigtrain train experiment=mnist_pixelcnn` / `mnist_vae` as a user runs them: the exact NLL (or
a VAE's ELBO and importance-weighted bound) in bits/dim beside FID in MLflow, exact resume, and
`bigtrain sample` / `evaluate` of the checkpoints."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
from mlflow.tracking import MlflowClient
from PIL import Image

from tests.conftest import run_cli as _run_cli

ONE_THREAD = {"OMP_NUM_THREADS": "1"}  # two OpenMP threads beside another test worker are many times slower
SMALL = ("debug=tiny_likelihood",)
PRESETS = {
    "pixelcnn": ("experiment=mnist_pixelcnn", "model.arch.layers=2", *SMALL),
    "vae": ("experiment=mnist_vae", "density.iw_samples=8", "density.kl_warmup_steps=3", *SMALL),
}


def run_cli(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return _run_cli(*args, check=check, env=ONE_THREAD)


def _inspect(ckpt: Path) -> dict:
    return json.loads(run_cli("inspect", str(ckpt), "--json").stdout)


@pytest.fixture(scope="module")
def runs(
    mnist_shards: Path, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, tuple[Path, Path, Path, str]]:
    """Per preset: a straight 4-step run, its twin interrupted at step 2 and resumed, the MLflow
    database and the straight run's summary."""
    out = {}
    for name, preset in PRESETS.items():
        root = tmp_path_factory.mktemp(name)
        db = root / "mlflow.db"
        common = ("train", *preset, f"data.path={mnist_shards}", f"tracking.uri=sqlite:///{db}")
        done = run_cli(*common, f"run.dir={root / 'a'}", "trainer.max_steps=4")
        run_cli(*common, f"run.dir={root / 'b'}", "trainer.max_steps=2")
        run_cli(*common, f"run.dir={root / 'b'}", "trainer.max_steps=4")
        out[name] = (root / "a", root / "b", db, done.stdout)
    return out


@pytest.mark.parametrize(
    ("name", "keys"),
    [
        ("pixelcnn", ("nll/bits_per_dim", "nll/nats", "fid/digits", "loss/bits_per_dim")),
        (
            "vae",
            (
                "nll/elbo_bpd",
                "nll/iw_bpd_k8",
                "nll/iw_nats_k8",
                "fid/digits",
                "loss/kl_bpd",
                "density/kl_weight",
            ),
        ),
    ],
)
def test_likelihood_models_train_evaluate_and_resume_exactly(
    runs: dict[str, tuple[Path, Path, Path, str]], name: str, keys: tuple[str, ...]
) -> None:
    straight, resumed, db, summary = runs[name]
    a, b = (_inspect(r / "checkpoints" / "step-00000004") for r in (straight, resumed))
    assert set(a["digests"]) >= {"net", "opt_net", "task", "rng.rank0", "data.rank0"}
    assert a["digests"] == b["digests"]
    assert f"{keys[0]} by step: 4:" in summary  # the summary names what it shows

    meta = json.loads((straight / "checkpoints" / "step-00000004" / "meta.json").read_text())
    data = MlflowClient(f"sqlite:///{db}").get_run(meta["mlflow_run_id"]).data
    m = data.metrics
    for key in keys:
        assert key in m, key
    assert "loss/net" not in m  # loss/bits_per_dim is the loss, charted once
    # the run's overview names its headline metric; fid_last is kept for FID headlines only
    assert data.tags["eval_metric"] == keys[0] and data.tags["eval_last"] == f"{m[keys[0]]:.4f}"
    assert "fid_last" not in data.tags
    if name == "vae":
        # binarised: at most 1 bit a pixel; IW <= ELBO up to the exact-KL ELBO's noise this early
        assert 0 < m["nll/iw_bpd_k8"] <= m["nll/elbo_bpd"] + 1e-4 < 1.0
    else:
        assert 0 < m["nll/bits_per_dim"] < 9.0  # about 8 (the uniform model's) at the start
        assert m["nll/nats"] == pytest.approx(m["nll/bits_per_dim"] * 1024 * np.log(2), rel=1e-6)
    grid = Image.open(straight / "samples" / "step-00000004.png")
    assert grid.size == (4 * 34 + 2, 4 * 34 + 2)
    recon = straight / "reconstructions" / "step-00000004.png"
    assert recon.is_file() == (name == "vae")  # a row of digits, then their reconstructions
    if name == "vae":
        assert Image.open(recon).size == (4 * 34 + 2, 4 * 34 + 2)  # 2 pairs of rows of 4


def test_pixelcnn_samples_by_class_and_evaluates_from_the_cli(
    runs: dict[str, tuple[Path, Path, Path, str]], tmp_path: Path
) -> None:
    ckpt = runs["pixelcnn"][0] / "checkpoints" / "step-00000004"
    out = tmp_path / "threes.png"
    run_cli(
        "sample", str(ckpt), "--class", "3", "--class", "5", "--per-class", "--rows", "3", "--out", str(out)
    )
    first = np.asarray(Image.open(out))
    assert first.shape[:2] == (2 * 34 + 2, 3 * 34 + 2)  # a row per class, 3 samples each
    run_cli(
        "sample", str(ckpt), "--class", "3", "--class", "5", "--per-class", "--rows", "3", "--out", str(out)
    )
    assert np.array_equal(np.asarray(Image.open(out)), first)  # the seed decides every pixel
    evaluated = json.loads(run_cli("evaluate", str(ckpt), "--no-log").stdout.strip().splitlines()[-1])
    assert evaluated["metric"] == "nll/bits_per_dim" and 0 < evaluated["value"] < 9
    refused = run_cli("sample", str(ckpt), "--interpolate", "--out", str(out), check=False)
    assert (
        refused.returncode != 0 and "model=pixelcnn has no latent space to interpolate in" in refused.stderr
    )


def test_vae_interpolates_and_refuses_arithmetic_it_cannot_do(
    runs: dict[str, tuple[Path, Path, Path, str]], tmp_path: Path
) -> None:
    out = tmp_path / "walk.png"
    ckpt = runs["vae"][0] / "checkpoints" / "step-00000004"
    run_cli("sample", str(ckpt), "--interpolate", "--rows", "2", "--steps", "5", "--out", str(out))
    assert Image.open(out).size == (5 * 34 + 2, 2 * 34 + 2)
    # arithmetic on its latents: four steps of training draw blobs the digits classifier cannot read
    refused = run_cli("sample", str(ckpt), "--arithmetic", "1:thick - 1:thin + 7:thin", "--pool", "20",
                      "--out", str(out), check=False)  # fmt: skip
    assert refused.returncode != 0 and "samples read confidently as 1; raise --pool" in refused.stderr
    pixelcnn = runs["pixelcnn"][0] / "checkpoints" / "step-00000004"
    refused = run_cli("sample", str(pixelcnn), "--arithmetic", "1:thick", "--out", str(out), check=False)
    assert refused.returncode != 0 and "model=pixelcnn has no latent space for arithmetic" in refused.stderr


def test_likelihood_refuses_a_bad_pixel_format(mnist_shards: Path, tmp_path: Path) -> None:
    out = run_cli("train", *PRESETS["pixelcnn"], f"data.path={mnist_shards}", f"run.dir={tmp_path}",
                  "tracking.enabled=false", "density.pixels=4bit", check=False)  # fmt: skip
    assert out.returncode != 0 and "density.pixels must be one of 8bit, binary" in out.stderr


@pytest.mark.parametrize("name", ["pixelcnn", "vae"])
def test_export_and_load_sample_and_score_as_the_run_does(
    runs: dict[str, tuple[Path, Path, Path, str]], mnist_shards: Path, name: str, tmp_path: Path
) -> None:
    """``bigtrain export`` of a likelihood checkpoint and ``bigtrain.load`` of the export (or the
    checkpoint): the CLI's grid for a seed, pixel for pixel, and the evaluation's likelihood."""
    import torch

    import bigtrain
    from bigtrain.data.manifest import DatasetManifest
    from bigtrain.data.read import iter_labelled
    from bigtrain.inference import DensityInference
    from bigtrain.utils.images import save_grid

    straight, _, db, _ = runs[name]
    ckpt = straight / "checkpoints" / "step-00000004"
    out = json.loads(run_cli("export", str(ckpt), str(tmp_path / "export")).stdout)
    assert out["kind"] == "density" and out["step"] == 4
    model, direct = bigtrain.load(tmp_path / "export", device="cpu"), bigtrain.load(ckpt, device="cpu")
    assert isinstance(model, DensityInference) and model.levels == 2 ** (8 if name == "pixelcnn" else 1)

    run_cli("sample", str(ckpt), "--out", str(tmp_path / "cli.png"), "--rows", "3", "--seed", "3")
    save_grid(model.sample(9, seed=3), tmp_path / "api.png", 3)
    assert np.array_equal(
        np.asarray(Image.open(tmp_path / "cli.png")), np.asarray(Image.open(tmp_path / "api.png"))
    )
    assert torch.equal(model.sample(4, seed=1), direct.sample(4, seed=1))
    from bigtrain.errors import ConfigError

    refusal = "class 12 is out of range" if model.num_classes else "classes: this model is unconditional"
    with pytest.raises(ConfigError, match=refusal):
        model.sample(2, classes=[12])
    # the run logged the same export as its MLflow model: a pyfunc that samples the same images
    import mlflow

    run_id = json.loads((ckpt / "meta.json").read_text())["mlflow_run_id"]
    mlflow.set_tracking_uri(f"sqlite:///{db}")
    try:
        x = mlflow.pyfunc.load_model(f"runs:/{run_id}/model").predict({"seed": [0, 7]})
    finally:
        mlflow.set_tracking_uri(None)
    assert x.shape == (2, 1, 32, 32) and torch.equal(torch.from_numpy(x[1:]), direct.sample(1, seed=7))

    # the 20 validation digits the run's last evaluation scored (density.eval_images=20)
    images, labels = next(iter_labelled(DatasetManifest.load(mnist_shards), "val", 20, 20))
    x = torch.from_numpy(images).permute(0, 3, 1, 2)
    scores = model.log_likelihood(x, labels=torch.from_numpy(labels) if model.num_classes else None)
    meta = json.loads((ckpt / "meta.json").read_text())
    logged = MlflowClient(f"sqlite:///{db}").get_run(meta["mlflow_run_id"]).data.metrics
    if name == "pixelcnn":  # exact: the same number as evaluation
        assert float(scores["nll_bpd"].mean()) == pytest.approx(logged["nll/bits_per_dim"], rel=1e-6)
    else:  # a bound with its own latent noise (one batch here, batches of 10 there)
        assert float(scores["elbo_bpd"].mean()) == pytest.approx(logged["nll/elbo_bpd"], rel=0.05)
        z = model.encode(x)
        assert z.shape == (20, 32) and model.reconstruct(x).shape == (20, 1, 32, 32)
        assert model.decode(torch.zeros(2, 32)).abs().max() <= 1
