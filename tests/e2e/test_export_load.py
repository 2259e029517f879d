"""Weights out: ``bigtrain export`` writes config.json + model.safetensors + a model card, and
``bigtrain.load`` of a checkpoint, a run folder or an export samples the images ``bigtrain sample``
draws for the same seed, for a GAN generator, a tokenizer and a prior."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open

import bigtrain
from bigtrain.errors import CheckpointError, ConfigError
from bigtrain.inference import GeneratorModel, PriorModel, TokenizerModel
from bigtrain.train.snapshot import load_snapshot, load_tokenizer
from bigtrain.utils.images import save_grid
from tests.conftest import PRIOR_SMALL, TINY, built_once, run_cli

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cgan_run(mnist_shards: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A class-conditional DCGAN, 6 steps with EMA (what evaluation and sampling use)."""

    def build(out: Path) -> None:
        run_cli("train", "experiment=mnist_cdcgan", f"data.path={mnist_shards}", f"run.dir={out}",
                "tracking.enabled=false", *TINY, "trainer.max_steps=6", "eval.enabled=false")  # fmt: skip

    return built_once(tmp_path_factory, "export-cgan", build)


def _png(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path))


def test_generator_export_and_load_sample_what_bigtrain_sample_draws(cgan_run: Path, tmp_path: Path) -> None:
    ck = cgan_run / "checkpoints" / "step-00000006"
    m = bigtrain.load(ck, device="cpu")
    assert isinstance(m, GeneratorModel) and m.num_classes == 10 and m.step == 6
    assert not hasattr(m, "D") and not any(n == "D" for n, _ in m.G.named_children())

    # the CLI's grid for seed 3 is the API's 16 samples for seed 3, pixel for pixel
    run_cli("sample", str(ck), "--out", str(tmp_path / "cli.png"), "--rows", "4", "--seed", "3")
    save_grid(m.sample(16, seed=3), tmp_path / "api.png", 4)
    np.testing.assert_array_equal(_png(tmp_path / "cli.png"), _png(tmp_path / "api.png"))
    # ... and the training task's own sampler gives the same tensors
    task = load_snapshot(ck, "cpu").task
    torch.testing.assert_close(
        m.sample(8, seed=5), task.sample(8, torch.Generator().manual_seed(5)), rtol=0, atol=0
    )

    out = json.loads(
        run_cli("export", str(cgan_run), str(tmp_path / "export")).stdout
    )  # a run folder: its newest
    assert out["kind"] == "generator" and out["step"] == 6
    exp = tmp_path / "export"
    assert {p.name for p in exp.iterdir()} == {"config.json", "model.safetensors", "README.md"}
    desc = json.loads((exp / "config.json").read_text())
    assert desc["model"]["weights"] == "G_ema" and desc["sampling"]["g_bn"] == "running"
    assert desc["train_config"]["model"]["name"] == "dcgan"
    with safe_open(str(exp / "model.safetensors"), "pt") as f:
        assert set(f.keys()) == set(m.G.state_dict())
    assert "step 6" in (exp / "README.md").read_text()
    loaded = bigtrain.load(exp, device="cpu")
    torch.testing.assert_close(loaded.sample(16, seed=3), m.sample(16, seed=3), rtol=0, atol=0)

    # given latents and labels; a class pool; truncation
    z = torch.randn(4, m.z_dim, generator=torch.Generator().manual_seed(0))
    x = loaded.sample(z=z, classes=[1, 2, 3, 4])
    assert x.shape == (4, 1, 32, 32) and float(x.abs().max()) <= 1
    torch.testing.assert_close(x, task.sampling.generate(z, torch.tensor([1, 2, 3, 4])), rtol=0, atol=0)
    assert not torch.equal(loaded.sample(4, classes=[7], seed=1), loaded.sample(4, classes=[2], seed=1))
    torch.testing.assert_close(
        loaded.sample(6, truncation=0.5, seed=2),
        task.sample(6, torch.Generator().manual_seed(2), truncation=0.5),
    )
    # MLflow's pyfunc over the export: row i is sample(1, classes=[class_i], seed=seed_i)
    from bigtrain.inference.pyfunc import BigtrainPyfunc

    pyfunc = BigtrainPyfunc(loaded)
    rows = pyfunc.predict({"seed": [3, 4], "class": [2, 9]})
    torch.testing.assert_close(
        torch.from_numpy(rows[1:]), loaded.sample(1, classes=[9], seed=4), rtol=0, atol=0
    )
    assert pyfunc.predict({"seed": []}).shape == (0, 1, 32, 32)
    with pytest.raises(ConfigError, match="out of range"):
        loaded.sample(2, classes=[10])
    with pytest.raises(ConfigError, match=r"z must be \[n, "):
        loaded.sample(z=torch.zeros(2, 3))


def test_bad_exports_are_one_line_errors(cgan_run: Path, tmp_path: Path) -> None:
    ck = cgan_run / "checkpoints" / "step-00000006"
    proc = run_cli("export", str(ck), str(tmp_path / "x"), "--what", "prior", check=False)
    assert proc.returncode == 2 and proc.stderr.strip().splitlines()[-1].endswith(
        "--what generator, not prior"
    )
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    proc = run_cli("export", str(ck), str(tmp_path / "busy"), check=False)
    assert proc.returncode == 2 and "not a bigtrain export" in proc.stderr
    assert (tmp_path / "busy" / "notes.txt").read_text() == "mine"  # untouched
    exp = bigtrain.export(ck, tmp_path / "e")
    (exp / "model.safetensors").write_bytes(b"\x00" * 64)  # damaged
    with pytest.raises(CheckpointError, match="cannot read"):
        bigtrain.load(exp)
    with pytest.raises(CheckpointError, match="neither an export folder"):
        bigtrain.load(tmp_path / "busy")


def test_tokenizer_encodes_as_tokenize_and_round_trips_through_export(
    small_tokenizer: Path, mnist_shards: Path, tmp_path: Path
) -> None:
    from bigtrain.data.tokenize import _encode  # what `bigtrain tokenize` runs on each batch

    m = bigtrain.load(small_tokenizer, device="cpu")
    assert isinstance(m, TokenizerModel) and m.token_grid == 8
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (32, 32, 1), dtype=np.uint8) for _ in range(4)]
    vq, _ = load_tokenizer(small_tokenizer)
    want = torch.from_numpy(_encode(vq, images, torch.device("cpu")).astype(np.int64))
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 127.5 - 1
    codes = m.encode(x)
    torch.testing.assert_close(codes, want, rtol=0, atol=0)
    rec = m.decode(codes)
    assert rec.shape == (4, 1, 32, 32)
    exp = bigtrain.export(small_tokenizer, tmp_path / "tok")
    again = bigtrain.load(exp, device="cpu")
    torch.testing.assert_close(again.decode(again.encode(x)), rec, rtol=0, atol=0)


def test_prior_export_carries_its_tokenizer_and_samples_as_bigtrain_sample(
    token_shards: Path, tmp_path_factory: pytest.TempPathFactory, tmp_path: Path
) -> None:
    def build(out: Path) -> None:
        run_cli("train", "experiment=mnist_transformer", f"data.path={token_shards}", f"run.dir={out}",
                "tracking.enabled=false", "eval.enabled=false", "trainer.max_steps=2", *PRIOR_SMALL)  # fmt: skip

    run = built_once(tmp_path_factory, "export-prior", build)
    ck = run / "checkpoints" / "step-00000002"
    m = bigtrain.load(ck, device="cpu")
    assert isinstance(m, PriorModel) and isinstance(m.tokenizer, TokenizerModel)
    run_cli(
        "sample", str(ck), "--out", str(tmp_path / "cli.png"), "--rows", "2", "--seed", "4", "--top-k", "5"
    )
    save_grid(m.generate(4, seed=4, top_k=5), tmp_path / "api.png", 2)
    np.testing.assert_array_equal(_png(tmp_path / "cli.png"), _png(tmp_path / "api.png"))
    exp = bigtrain.export(ck, tmp_path / "prior")
    assert (exp / "tokenizer" / "model.safetensors").is_file() and (
        exp / "tokenizer" / "config.json"
    ).is_file()
    again = bigtrain.load(exp, device="cpu")
    images, codes = again.generate(4, seed=4, top_k=5, return_codes=True)
    torch.testing.assert_close(images, m.generate(4, seed=4, top_k=5), rtol=0, atol=0)
    assert codes.shape == (4, 64) and int(codes.max()) < again.tokenizer.vocab
