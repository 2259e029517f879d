"""FID plumbing: Frechet distance, the clean-fid feature path, generator RNG isolation, stats caching."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from cleanfid.resize import make_resizer
from scipy import linalg

from bigtrain.eval import (
    FeatureExtractor,
    MissingWeightsError,
    build_feature_extractor,
    compute_fid,
    feature_stats,
    frechet_distance,
    generator_features,
    images_to_features,
    inception_weights_path,
    reference_stats,
    reference_stats_path,
    register_feature_extractor,
)

TOY = "toy-linear-test"
TOY_SIZE = 8
TOY_DIM = 6
IMG = 16


def _reference_fid(mu1, s1, mu2, s2) -> float:
    """Independent float64 reference: the symmetric form Tr(sqrt(sqrt(S1) S2 sqrt(S1)))."""
    r1 = linalg.sqrtm(s1).real
    cross = linalg.sqrtm(r1 @ s2 @ r1).real
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2 * np.trace(cross))


def _random_spd(rng: np.random.Generator, d: int) -> np.ndarray:
    a = rng.normal(size=(d, d))
    return a @ a.T / d + 0.1 * np.eye(d)


def _toy_factory(device: torch.device) -> FeatureExtractor:
    """A fixed random projection of the (resized) pixels: cheap, deterministic, sensitive to shifts."""
    g = torch.Generator().manual_seed(1234)
    w = torch.randn(3 * TOY_SIZE * TOY_SIZE, TOY_DIM, generator=g).to(device) / TOY_SIZE

    def model(x: torch.Tensor) -> torch.Tensor:
        return (x / 255.0).flatten(1) @ w

    return FeatureExtractor(name=TOY, input_size=TOY_SIZE, dim=TOY_DIM, model=model)


@pytest.fixture
def toy(monkeypatch, tmp_path) -> FeatureExtractor:
    monkeypatch.setenv("BIGTRAIN_CACHE", str(tmp_path))
    register_feature_extractor(TOY, _toy_factory)
    return build_feature_extractor(TOY, "cpu")


def _smooth_images(rng: np.random.Generator, n: int, mean: float) -> np.ndarray:
    """uint8 [n, IMG, IMG, 3]: a random brightness per image plus pixel noise."""
    level = mean + 30 * rng.normal(size=(n, 1, 1, 1))
    x = level + 20 * rng.normal(size=(n, IMG, IMG, 3))
    return np.clip(np.round(x), 0, 255).astype(np.uint8)


def _sampler(mean: float):
    """sample_fn in [-1, 1], [n, 3, H, W], same distribution as _smooth_images(mean), using only ``g``."""

    def sample_fn(n: int, g: torch.Generator) -> torch.Tensor:
        level = mean + 30 * torch.randn(n, 1, 1, 1, generator=g)
        x = level + 20 * torch.randn(n, 3, IMG, IMG, generator=g)
        return x / 127.5 - 1.0

    return sample_fn


def test_frechet_matches_scipy_reference(monkeypatch, tmp_path):
    monkeypatch.setenv("BIGTRAIN_CACHE", str(tmp_path))
    rng = np.random.default_rng(0)
    d = 8
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    s1, s2 = _random_spd(rng, d), _random_spd(rng, d)
    expected = _reference_fid(mu1, s1, mu2, s2)
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-8, abs=1e-10)
    assert abs(frechet_distance(mu1, s1, mu1, s1)) < 1e-8

    # Closed form for diagonal covariances: |mu1 - mu2|^2 + sum (sqrt(a) - sqrt(b))^2.
    a, b = rng.uniform(0.5, 2, size=d), rng.uniform(0.5, 2, size=d)
    closed = float(np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2))
    assert frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(closed, rel=1e-10)

    # Sample statistics of Gaussians with those covariances converge to the same value.
    x1 = rng.multivariate_normal(mu1, s1, size=20000)
    x2 = rng.multivariate_normal(mu2, s2, size=20000)
    m1, c1 = feature_stats(x1)
    m2, c2 = feature_stats(x2)
    assert c1.dtype == np.float64 and c1.shape == (d, d)
    assert frechet_distance(m1, c1, m2, c2) == pytest.approx(expected, rel=0.05)


def test_feature_path_gives_small_fid_for_same_distribution(toy):
    rng = np.random.default_rng(0)
    images = _smooth_images(rng, 2000, mean=110.0)
    # Reference batches in both layouts (numpy HWC and torch CHW) must give identical features.
    hwc = images_to_features([images[:1000], images[1000:]], toy, "cpu", progress=False)
    chw = images_to_features([torch.from_numpy(images).permute(0, 3, 1, 2)], toy, "cpu", progress=False)
    np.testing.assert_allclose(hwc, chw, rtol=1e-6)
    assert hwc.shape == (2000, TOY_DIM)
    ref = feature_stats(hwc)

    same = compute_fid(_sampler(110.0), 2000, 256, toy, "cpu", seed=1, ref=ref, progress=False)
    shifted = compute_fid(_sampler(150.0), 2000, 256, toy, "cpu", seed=1, ref=ref, progress=False)
    assert same < 0.01
    assert shifted > 100 * same
    assert shifted > 0.1


def test_grayscale_is_repeated_to_three_channels(toy):
    rng = np.random.default_rng(1)
    gray = rng.integers(0, 256, size=(4, IMG, IMG), dtype=np.uint8)
    rgb = np.repeat(gray[..., None], 3, axis=-1)
    expected = images_to_features([rgb], toy, "cpu", progress=False)
    for batch in (gray, gray[..., None], torch.from_numpy(gray)[:, None]):
        np.testing.assert_allclose(
            images_to_features([batch], toy, "cpu", progress=False), expected, rtol=1e-6
        )
    with pytest.raises(TypeError, match="uint8"):
        images_to_features([rgb.astype(np.float32)], toy, "cpu", progress=False)


def test_generator_features_deterministic_and_rng_neutral(toy):
    torch.manual_seed(123)
    state = torch.get_rng_state()
    a = generator_features(_sampler(100.0), 50, 16, toy, "cpu", seed=7, progress=False)
    assert torch.equal(torch.get_rng_state(), state)
    b = generator_features(_sampler(100.0), 50, 16, toy, "cpu", seed=7, progress=False)
    c = generator_features(_sampler(100.0), 50, 16, toy, "cpu", seed=8, progress=False)
    assert torch.equal(torch.get_rng_state(), state)
    assert a.shape == (50, TOY_DIM)
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)


def test_generator_quantises_like_png(toy):
    """A sample exactly on a uint8 level gives the same features as that uint8 image on disk would."""
    rng = np.random.default_rng(2)
    images = rng.integers(0, 256, size=(3, IMG, IMG, 3), dtype=np.uint8)
    as_float = torch.from_numpy(images).permute(0, 3, 1, 2).double() / 127.5 - 1.0
    # Nudge by less than half a level: quantisation must undo it.
    nudged = (as_float + 0.3 / 127.5).float()
    feats = generator_features(lambda n, g: nudged[:n], 3, 3, toy, "cpu", seed=0, progress=False)
    np.testing.assert_allclose(feats, images_to_features([images], toy, "cpu", progress=False), rtol=1e-6)


def test_reference_stats_computed_once_then_loaded(toy, tmp_path):
    calls = 0
    images = _smooth_images(np.random.default_rng(3), 300, mean=90.0)

    def make_batches():
        nonlocal calls
        calls += 1
        return [images[:128], images[128:256], images[256:]]

    key = "mnist/sha256:abc|train|32"
    mu1, s1 = reference_stats(key, make_batches, toy, "cpu", progress=False)
    assert calls == 1
    path = reference_stats_path(key, toy.name)
    assert path.is_file()
    assert path.parent == tmp_path / "fid_stats"
    assert "/" not in path.name[: -len(".npz")] and "|" not in path.name
    with np.load(path) as data:
        assert int(data["num_images"]) == 300
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temp file left behind

    def must_not_run():
        raise AssertionError("make_batches called on a warm cache")

    mu2, s2 = reference_stats(key, must_not_run, toy, "cpu", progress=False)
    np.testing.assert_array_equal(mu1, mu2)
    np.testing.assert_array_equal(s1, s2)
    assert s1.dtype == np.float64 and s1.shape == (TOY_DIM, TOY_DIM)

    # Keys that sanitise alike still get distinct files; cache_root overrides cache_dir().
    assert reference_stats_path("a/b", TOY) != reference_stats_path("a_b", TOY)
    other = tmp_path / "elsewhere"
    assert reference_stats_path(key, TOY, cache_root=other).parent == other / "fid_stats"


def test_missing_inception_weights(monkeypatch, tmp_path):
    monkeypatch.setenv("BIGTRAIN_CACHE", str(tmp_path))
    expected = tmp_path / "weights" / "inception-2015-12-05.pt"
    assert inception_weights_path() == expected
    with pytest.raises(MissingWeightsError) as info:
        build_feature_extractor("inception", "cpu")
    msg = str(info.value)
    assert isinstance(info.value, FileNotFoundError)
    assert "\n" not in msg
    assert str(expected) in msg
    assert "download=True" in msg and "BIGTRAIN_CACHE" in msg
    assert not expected.exists()  # nothing was downloaded


def test_unknown_extractor_lists_known(monkeypatch, tmp_path):
    monkeypatch.setenv("BIGTRAIN_CACHE", str(tmp_path))
    with pytest.raises(ValueError, match="inception") as info:
        build_feature_extractor("nope", "cpu")
    assert "digits" in str(info.value) and "\n" not in str(info.value)


def test_frechet_fallback_when_cleanfid_breaks_on_new_scipy(monkeypatch):
    """SciPy 1.18 dropped sqrtm's `disp` argument that clean-fid passes; the fallback gives the same value."""
    import bigtrain.eval.fid as fid_mod

    rng = np.random.default_rng(3)
    a, b = rng.normal(size=(400, 6)), rng.normal(loc=0.3, size=(400, 6)) @ rng.normal(size=(6, 6))
    mu1, s1 = fid_mod.feature_stats(a)
    mu2, s2 = fid_mod.feature_stats(b)
    with_cleanfid = frechet_distance(mu1, s1, mu2, s2)

    def old_api(*args, **kwargs):
        raise TypeError("sqrtm() got an unexpected keyword argument 'disp'")

    monkeypatch.setattr(fid_mod, "_cleanfid_frechet_distance", old_api)
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(with_cleanfid, rel=1e-9)


def test_threaded_resize_is_the_one_thread_resize_bit_for_bit(monkeypatch: pytest.MonkeyPatch) -> None:
    """The resize spread over threads (the FID speed lever on a GPU machine) changes nothing."""
    from bigtrain.eval import fid as fid_module

    rng = np.random.default_rng(3)
    images = rng.integers(0, 256, (9, 20, 20, 3), dtype=np.uint8)
    resize = make_resizer("PIL", False, "bicubic", (37, 37))
    monkeypatch.setenv("BIGTRAIN_RESIZE_THREADS", "1")
    one = fid_module._network_input(images, resize)
    monkeypatch.setenv("BIGTRAIN_RESIZE_THREADS", "4")
    monkeypatch.setattr(fid_module, "_POOL", None)
    many = fid_module._network_input(images, resize)
    assert fid_module.resize_threads() == 4 and torch.equal(one, many) and one.shape == (9, 3, 37, 37)
