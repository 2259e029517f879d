"""Inception Score and improved precision/recall: known cases, and their place beside FID."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from bigtrain.config.schema import EvalConfig
from bigtrain.eval.features import FeatureExtractor, register_feature_extractor
from bigtrain.eval.metrics import inception_score, kernel_distance, precision_recall


def test_inception_score_extremes() -> None:
    confident_uniform = np.eye(10)[np.arange(1000) % 10]  # sure of each class, all classes equally
    assert inception_score(confident_uniform)[0] == pytest.approx(10.0, rel=1e-6)
    one_class = np.tile(np.eye(10)[3], (1000, 1))
    assert inception_score(one_class)[0] == pytest.approx(1.0, abs=1e-6)
    unsure = np.full((1000, 10), 0.1)
    assert inception_score(unsure)[0] == pytest.approx(1.0, abs=1e-6)


def test_precision_recall_fidelity_versus_coverage() -> None:
    rng = np.random.default_rng(0)
    centers = rng.normal(scale=10, size=(8, 4))
    real = centers[rng.integers(0, 8, 2000)] + rng.normal(size=(2000, 4))
    same = centers[rng.integers(0, 8, 2000)] + rng.normal(size=(2000, 4))
    p, r = precision_recall(real, same)
    assert p > 0.9 and r > 0.9
    collapsed = centers[rng.integers(0, 2, 2000)] + rng.normal(size=(2000, 4))  # 2 of 8 modes
    p, r = precision_recall(real, collapsed)
    assert p > 0.9 and r < 0.45  # faithful but poor coverage
    far = same + 100.0
    assert precision_recall(real, far) == (0.0, 0.0)


def test_evaluator_reports_fid_is_precision_recall(mnist_shards: Path) -> None:
    from bigtrain.data.manifest import DatasetManifest
    from bigtrain.eval.registry import Evaluator
    from bigtrain.eval.source import EvalSource, Judged

    torch.manual_seed(0)
    proj = torch.randn(3 * 8 * 8, 16)
    head = torch.randn(16, 5)

    def factory(device: torch.device) -> FeatureExtractor:
        def feats(x: torch.Tensor) -> torch.Tensor:
            return (x / 255.0).flatten(1) @ proj

        return FeatureExtractor(
            "tiny-metrics", 8, 16, feats, probs=lambda x: torch.softmax(feats(x) @ head, 1)
        )

    register_feature_extractor("tiny-metrics", factory)
    cfg = OmegaConf.structured(
        EvalConfig(feature="tiny-metrics", num_samples=300, batch_size=100, ref_max_images=600)
    )
    manifest = DatasetManifest.load(mnist_shards)
    ev = Evaluator(cfg, ["fid", "is", "pr", "kid"], torch.device("cpu"))

    def noise_images(n: int, g: torch.Generator) -> torch.Tensor:
        return torch.rand(n, 1, 32, 32, generator=g) * 2 - 1

    noise = ev(EvalSource(Judged.samples, noise_images, manifest, 32))
    assert list(noise) == [
        "fid/tiny-metrics",
        "is/tiny-metrics",
        "precision/tiny-metrics",
        "recall/tiny-metrics",
        "kid/tiny-metrics",
        "eval/resolution",
    ]
    assert 1.0 <= noise["is/tiny-metrics"] <= 5.0 and noise["fid/tiny-metrics"] > 0
    assert noise["kid/tiny-metrics"] > 0.1  # noise against digits: far apart in any kernel
    assert noise["precision/tiny-metrics"] < 0.2  # uniform noise is nowhere near the digits
    assert ev.headline(noise) == "fid/tiny-metrics"
    # the same images called reconstructions: every feature metric says so in its name (rFID)
    recon = Evaluator(cfg, ["fid", "pr"], torch.device("cpu"))(
        EvalSource(Judged.reconstructions, noise_images, manifest, 32)
    )
    assert set(recon) == {
        "rfid/tiny-metrics",
        "rprecision/tiny-metrics",
        "rrecall/tiny-metrics",
        "eval/resolution",
    }
    assert recon["rfid/tiny-metrics"] == pytest.approx(noise["fid/tiny-metrics"])  # same samples, same seed


def test_precision_recall_in_another_feature_space(mnist_shards: Path, monkeypatch, tmp_path) -> None:
    """``eval.pr_feature`` (vgg16: Kynkaenniemi et al.'s space) gives P/R in that network's space on
    the same seeded images, while FID keeps ``eval.feature``; the VGG16 network reads torchvision's
    file from the cache and says how to fill it when it is absent."""
    import torchvision

    from bigtrain.data.manifest import DatasetManifest
    from bigtrain.eval.features import MissingWeightsError, build_feature_extractor
    from bigtrain.eval.registry import Evaluator
    from bigtrain.eval.source import EvalSource, Judged

    monkeypatch.setenv("BIGTRAIN_CACHE", str(tmp_path))
    with pytest.raises(MissingWeightsError, match="vgg16-397923af.pth.*IMAGENET1K_V1"):
        build_feature_extractor("vgg16", "cpu")
    torch.manual_seed(0)
    (tmp_path / "weights").mkdir()
    torch.save(
        torchvision.models.vgg16(weights=None).state_dict(), tmp_path / "weights" / "vgg16-397923af.pth"
    )
    vgg = build_feature_extractor("vgg16", "cpu")
    assert (vgg.name, vgg.input_size, vgg.dim) == ("vgg16", 224, 4096)
    out = vgg(torch.rand(2, 3, 224, 224) * 255)
    assert out.shape == (2, 4096) and (out >= 0).all()  # fc2 after its ReLU

    torch.manual_seed(0)
    proj = torch.randn(3 * 8 * 8, 16)
    register_feature_extractor(
        "tiny-a", lambda d: FeatureExtractor("tiny-a", 8, 16, lambda x: (x / 255).flatten(1) @ proj)
    )
    register_feature_extractor(
        "tiny-b", lambda d: FeatureExtractor("tiny-b", 8, 16, lambda x: (x / 255).flatten(1) @ -proj)
    )
    manifest = DatasetManifest.load(mnist_shards)

    def images(n: int, g: torch.Generator) -> torch.Tensor:
        return torch.rand(n, 1, 32, 32, generator=g) * 2 - 1

    def evaluate(**kw: str) -> dict[str, float]:
        cfg = OmegaConf.structured(EvalConfig(num_samples=200, batch_size=100, ref_max_images=400, **kw))
        ev = Evaluator(cfg, ["fid", "pr"], torch.device("cpu"))
        source = EvalSource(Judged.samples, images, manifest, 32)
        ev.prepare(source)
        return ev(source)

    split = evaluate(feature="tiny-a", pr_feature="tiny-b")
    assert set(split) == {"fid/tiny-a", "precision/tiny-b", "recall/tiny-b", "eval/resolution"}
    only_b = evaluate(feature="tiny-b")
    assert (
        split["precision/tiny-b"] == only_b["precision/tiny-b"]
        and split["recall/tiny-b"] == only_b["recall/tiny-b"]
    )
    assert split["fid/tiny-a"] == evaluate(feature="tiny-a")["fid/tiny-a"]


def _mmd2_unbiased(x: np.ndarray, y: np.ndarray) -> float:
    """Bińkowski et al. 2018, eq. (3) with k(a, b) = (a.b / d + 1)^3, written out directly."""
    d, m = x.shape[1], len(x)
    kxx, kyy, kxy = ((x @ x.T) / d + 1) ** 3, ((y @ y.T) / d + 1) ** 3, ((x @ y.T) / d + 1) ** 3
    off = lambda k: k.sum() - np.trace(k)  # noqa: E731
    return float((off(kxx) + off(kyy)) / (m * (m - 1)) - 2 * kxy.sum() / m**2)


def test_kid_is_the_unbiased_mmd_with_the_cubic_kernel() -> None:
    rng = np.random.default_rng(0)
    real = rng.normal(size=(200, 16))
    fake = rng.normal(0.3, 1.2, size=(200, 16))
    # one subset of every point: the subsets' order does not matter, so this is the whole-set MMD^2
    assert kernel_distance(real, fake, subsets=1, subset_size=200) == pytest.approx(
        _mmd2_unbiased(fake, real), rel=1e-10
    )
    # subsets of 50: the mean of their unbiased estimates, near the whole-set value
    state = np.random.get_state()
    kid = kernel_distance(real, fake, subsets=100, subset_size=50, seed=3)
    assert np.array_equal(np.random.get_state()[1], state[1])  # the global generator did not move
    assert kid == kernel_distance(real, fake, subsets=100, subset_size=50, seed=3)  # seeded
    assert kid == pytest.approx(_mmd2_unbiased(fake, real), rel=0.3)
    # the same distribution: unbiased, so near zero (and it can be negative)
    same = kernel_distance(real, rng.normal(size=(200, 16)), subsets=100, subset_size=100)
    assert abs(same) < 0.1 * kid


def test_a_users_reference_statistics_replace_the_shards(mnist_shards: Path, tmp_path: Path) -> None:
    """``eval.ref_stats``: FID against a user's (mu, sigma) .npz (the statistics the shards give,
    saved by hand here, give the same FID); a file of another network's dimension, or none, is one line."""
    from bigtrain.data.manifest import DatasetManifest
    from bigtrain.errors import ConfigError
    from bigtrain.eval.registry import Evaluator
    from bigtrain.eval.source import EvalSource, Judged

    torch.manual_seed(1)
    proj = torch.randn(3 * 8 * 8, 12)
    register_feature_extractor(
        "tiny-refstats",
        lambda device: FeatureExtractor("tiny-refstats", 8, 12, lambda x: (x / 255.0).flatten(1) @ proj),
    )
    manifest = DatasetManifest.load(mnist_shards)

    def noise(n: int, g: torch.Generator) -> torch.Tensor:
        return torch.rand(n, 1, 32, 32, generator=g) * 2 - 1

    def evaluate(**keys: str) -> dict[str, float]:
        cfg = OmegaConf.structured(
            EvalConfig(feature="tiny-refstats", num_samples=200, batch_size=100, ref_max_images=400, **keys)
        )
        return Evaluator(cfg, ["fid", "kid"], torch.device("cpu"))(
            EvalSource(Judged.samples, noise, manifest, 32)
        )

    shards = evaluate()
    cfg = OmegaConf.structured(EvalConfig(feature="tiny-refstats", batch_size=100, ref_max_images=400))
    mu, sigma = Evaluator(cfg, ["fid"], torch.device("cpu")).reference(manifest, 32).stats
    np.savez(tmp_path / "ref.npz", mu=mu, sigma=sigma)
    users = evaluate(ref_stats=str(tmp_path / "ref.npz"))
    assert users["fid/tiny-refstats"] == pytest.approx(shards["fid/tiny-refstats"], rel=1e-9)
    assert "kid/tiny-refstats" in shards and "kid/tiny-refstats" not in users  # KID needs real features
    np.savez(tmp_path / "inception.npz", mu=np.zeros(2048), sigma=np.eye(2048))
    with pytest.raises(ConfigError) as err:
        evaluate(ref_stats=str(tmp_path / "inception.npz"))
    assert str(err.value) == (
        f"eval.ref_stats: {tmp_path / 'inception.npz'} holds mu (2048,) and sigma (2048, 2048), but feature "
        "network tiny-refstats gives 12-d features (mu (12,), sigma (12, 12)): statistics of another network"
    )
    with pytest.raises(ConfigError, match="eval.ref_stats: .*absent.npz not found"):
        evaluate(ref_stats=str(tmp_path / "absent.npz"))
