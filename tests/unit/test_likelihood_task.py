"""task=likelihood in-process, on the built-in digits: a uniform model scores exactly log2(levels)
bits per dimension through the whole evaluation path (shards -> levels -> bounds -> metric), the
VAE's importance-weighted bound is at least as tight as its ELBO on the same images, the KL weight
warms up as configured, and bad options are one line each."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from bigtrain.data.manifest import DatasetManifest
from bigtrain.errors import ConfigError
from bigtrain.models.density import levels_from_uint8, quantize, to_unit
from bigtrain.train.task import build_task, check_config
from bigtrain.train.tasks.likelihood import kl_weight
from tests.conftest import compose, cpu, declared_manifest

SMALL = ("debug=tiny_likelihood", "density.eval_images=40", "eval.batch_size=20")


def _task(mnist_shards: Path, *overrides: str, experiment: str = "mnist_pixelcnn"):  # noqa: ANN202
    cfg = compose(f"experiment={experiment}", f"data.path={mnist_shards}", *SMALL, *overrides)
    manifest = DatasetManifest.load(mnist_shards)
    check_config(cfg, manifest)
    return build_task(cfg, manifest, torch.device("cpu"), cpu())


@pytest.mark.parametrize(("pixels", "bits"), [("8bit", 8.0), ("binary", 1.0)])
def test_a_uniform_model_scores_log2_levels_bits_per_dim_on_the_digits(
    mnist_shards: Path, pixels: str, bits: float
) -> None:
    task = _task(mnist_shards, f"density.pixels={pixels}")
    torch.nn.init.zeros_(task.net.head.proj.weight)
    torch.nn.init.zeros_(task.net.head.proj.bias)
    out = task.likelihood()
    assert out["nll/images"] == 40
    assert out["nll/bits_per_dim"] == pytest.approx(bits, abs=1e-6)
    assert out["nll/nats"] == pytest.approx(bits * 32 * 32 * 0.6931471805599453, rel=1e-6)


def test_the_importance_weighted_bound_is_at_least_as_tight_as_the_elbo(mnist_shards: Path) -> None:
    task = _task(mnist_shards, "density.iw_samples=16", experiment="mnist_vae")
    torch.manual_seed(0)
    opt = torch.optim.Adam(task.net.parameters(), lr=3e-3)
    x, y = next(task._real())
    for _ in range(30):  # a little training: the bounds separate once q(z|x) is informative
        loss = task.net.objective(x, y)[0].mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    out = task.likelihood()
    assert set(out) >= {"nll/elbo_bpd", "nll/iw_bpd_k16", "nll/elbo_nats", "nll/iw_nats_k16"}
    assert out["nll/iw_bpd_k16"] <= out["nll/elbo_bpd"]
    assert out == task.likelihood()  # the latent draws come from eval.seed


def test_kl_weight_warms_up_to_beta() -> None:
    from omegaconf import OmegaConf

    d = OmegaConf.create({"beta": 2.0, "kl_warmup_steps": 100})
    assert [kl_weight(s, d) for s in (1, 50, 100, 500)] == [0.02, 1.0, 2.0, 2.0]
    assert kl_weight(1, OmegaConf.create({"beta": 0.5, "kl_warmup_steps": 0})) == 0.5


def test_bad_options_are_one_line_each(mnist_shards: Path) -> None:
    with pytest.raises(ConfigError) as err:
        _task(mnist_shards, "density.pixels=4bit", "density.vae_samples=best", "trainer.precision=fp16")
    text = str(err.value)
    assert "density.pixels must be one of 8bit, binary" in text
    assert "density.vae_samples must be mean or draw" in text and "trainer.precision=bf16" in text
    # a builder's refusal (colour groups need a width divisible by the channels) is one line too
    cfg = compose("experiment=mnist_pixelcnn", "model.arch.width=10")
    with pytest.raises(ConfigError, match=r"model.arch.width \(10\) and head_width must be multiples"):
        build_task(cfg, declared_manifest(channels=3), torch.device("meta"), cpu())


@pytest.mark.parametrize("levels", [256, 2])
def test_levels_from_uint8_is_quantize_of_the_float_image(levels: int) -> None:
    u = torch.arange(256, dtype=torch.uint8).view(1, 1, 16, 16)
    assert torch.equal(levels_from_uint8(u, levels), quantize(u.float() / 127.5 - 1.0, levels))


def test_a_vae_shows_reconstructions_and_an_autoregressive_model_none(mnist_shards: Path) -> None:
    vae = _task(mnist_shards, experiment="mnist_vae")
    images, rows = vae.extra_grids(seed=0, rows=4)["reconstructions"]
    assert rows == 4 and images.shape == (16, 1, 32, 32)
    real = next(iter(vae._real()))[0][:4]
    assert torch.equal(images[:4], to_unit(real, 2).cpu())  # first row: the digits themselves
    assert images[4:8].min() >= -1 and images[4:8].max() <= 1 and not torch.equal(images[4:8], images[:4])
    assert _task(mnist_shards).extra_grids(seed=0, rows=4) == {}
