"""GAN-CLS (task=text_gan): the text encoder's vocabulary and its save/load, the matching-aware D loss's
three terms, the networks' shapes, one step training the encoder through D only, and the
attribute_agreement metric."""

from __future__ import annotations

import io
import itertools
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from bigtrain.data import digits
from bigtrain.eval.registry import METRICS, EvalRun
from bigtrain.eval.source import EvalSource, Judged, Need
from bigtrain.models.registry import build_text_gan
from bigtrain.models.text_encoder import PAD, UNK, TextEncoder, build_vocabulary, words
from bigtrain.train.captions import word_ranges
from bigtrain.train.task import build_task
from bigtrain.train.tasks.text_gan import mismatched
from tests.conftest import compose, cpu, declared_manifest

CAPTIONS = ["a thick, right-slanted seven", "a drawing of an eight", "a thin one, handwritten", "a wide zero"]


def test_vocabulary_is_sorted_and_deterministic() -> None:
    vocab = build_vocabulary(CAPTIONS)
    assert vocab == build_vocabulary(reversed(CAPTIONS * 3))
    assert vocab[:2] == [PAD, UNK] and vocab[2:] == sorted(vocab[2:])
    assert "right-slanted" in vocab and "," not in vocab
    assert words("A Thick, RIGHT-slanted seven!") == ["a", "thick", "right-slanted", "seven"]
    enc = TextEncoder(vocab_size=32, word_dim=4, hidden=4)
    enc.set_vocabulary(vocab)
    ids = enc.tokenize(["a purple seven", ""])
    assert ids[0].tolist() == [vocab.index("a"), 1, vocab.index("seven")]  # unknown words -> <unk>
    assert ids[1].tolist() == [1, 0, 0]  # the empty caption: one <unk>, then padding
    with pytest.raises(ValueError, match="text.vocab_size >= "):
        TextEncoder(vocab_size=8).set_vocabulary(vocab)


def test_encoder_saves_its_vocabulary_with_its_weights() -> None:
    torch.manual_seed(0)
    enc = TextEncoder(vocab_size=32, word_dim=4, hidden=6)
    enc.set_vocabulary(build_vocabulary(CAPTIONS))
    buf = io.BytesIO()
    torch.save(enc.state_dict(), buf)  # as a checkpoint component
    buf.seek(0)
    state = torch.load(buf, weights_only=True)
    other = TextEncoder(vocab_size=32, word_dim=4, hidden=6)
    assert other.vocabulary == [PAD, UNK]
    other.load_state_dict(state)
    assert other.vocabulary == enc.vocabulary
    with torch.no_grad():
        a, b = enc(["a thick seven", "a wide zero"]), other(["a thick seven", "a wide zero"])
    assert a.shape == (2, 12) and torch.equal(a, b)


def test_networks_shapes() -> None:
    for res in (32, 64):
        G, D = build_text_gan(
            "text_dcgan", resolution=res, channels=1, z_dim=8, text_dim=12, g_width=4, d_width=4, proj_dim=8
        )
        x = G(torch.randn(3, 8), torch.randn(3, 12))
        assert x.shape == (3, 1, res, res) and x.abs().max() <= 1
        assert D(x, torch.randn(3, 12)).shape == (3,)
    # Reed et al.'s projection: FC to 128 + LeakyReLU, in G and in D
    G, D = build_text_gan("text_dcgan", resolution=32, channels=3, z_dim=100, text_dim=256)
    assert G.project[0].out_features == 128 and D.project[0].out_features == 128
    assert D.joint[0].kernel_size == (1, 1) and D.head.kernel_size == (4, 4)
    # the optional minibatch-std feature: one more channel into the 1x1 conv; D still scores [B]
    G, D = build_text_gan(
        "text_dcgan", resolution=32, channels=1, z_dim=8, text_dim=12, g_width=4, d_width=4, proj_dim=8,
        minibatch_std=True,
    )  # fmt: skip
    assert D.joint[0].in_channels == 16 + 8 + 1 and D(
        torch.randn(3, 1, 32, 32), torch.randn(3, 12)
    ).shape == (3,)


def test_mismatched_pairs_skip_identical_captions() -> None:
    assert mismatched(["a", "b", "c"]) == ([0, 1, 2], [1, 2, 0])
    assert mismatched(["a", "a", "b"]) == ([1, 2], [2, 0])
    assert mismatched(["a"]) == ([], [])


def _task(*overrides: str):
    cfg = compose("experiment=mnist_text_gan", "debug=tiny_text_gan", "data.path=/x", *overrides)
    return build_task(cfg, declared_manifest(classes=10, captions=False), torch.device("cpu"), cpu())


def test_matching_aware_loss_has_three_terms() -> None:
    task = _task()
    r, w, f = torch.randn(5), torch.randn(4), torch.randn(5)
    expected = F.softplus(-r).mean() + 0.5 * (F.softplus(w).mean() + F.softplus(f).mean())
    assert torch.allclose(task.d_loss(r, w, f), expected)
    plain = F.softplus(-r).mean() + F.softplus(f).mean()
    assert torch.allclose(task.d_loss(r, None, f), plain)  # no wrong pairs in the batch
    assert torch.allclose(_task("loss.cls=false").d_loss(r, w, f), plain)


def test_step_trains_the_encoder_through_d_only() -> None:
    torch.manual_seed(0)
    task = _task("loss.interpolate=1.0", "loss.mode_seeking=1.0", "model.arch.minibatch_std=true")
    task.text.set_vocabulary(build_vocabulary(CAPTIONS))
    before = {k: v.clone() for k, v in task.text.state_dict().items() if isinstance(v, torch.Tensor)}
    batch = {"image": torch.rand(8, 1, 32, 32) * 2 - 1, "text": CAPTIONS * 2}
    # G's step alone leaves the encoder alone (its embeddings are detached)
    e = task.text(CAPTIONS).detach()
    task.G(torch.randn(4, task.z_dim), e).mean().backward()
    assert all(p.grad is None for p in task.text.parameters())
    metrics = task.train_step(1, itertools.repeat(batch))
    assert {"loss/D", "loss/G", "D/real_logit", "D/wrong_logit", "D/fake_logit"} <= set(metrics)
    after = task.text.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)  # D's optimizer moved it
    assert set(task.state_dict()) >= {"G", "D", "text", "opt_G", "opt_D", "G_ema", "task"}


def test_prompts_sample_deterministically() -> None:
    task = _task()
    out = task.sample_conditioned(["a thick seven", "a thin one"], torch.Generator().manual_seed(3))
    again = task.sample_conditioned(["a thick seven", "a thin one"], torch.Generator().manual_seed(3))
    assert out.shape == (2, 1, 32, 32) and torch.equal(out, again)
    with pytest.raises(ValueError, match="text prompts"):
        task.sample_conditioned(torch.zeros(1, 1, 32, 32), torch.Generator())


def test_word_ranges_follow_the_caption_rule() -> None:
    described = digits.describe(digits.Thresholds((0.1, 0.2), (0.05, 0.15), (0.4, 0.6)), 32)
    ranges = word_ranges(described)
    assert ranges["thickness"] == {"thin": (-math.inf, 0.1), "thick": (0.2, math.inf)}
    assert ranges["width"] == {"narrow": (-math.inf, 0.4), "wide": (0.6, math.inf)}
    assert ranges["slant"]["upright"] == (-0.05, 0.05)
    assert ranges["slant"]["left-slanted"] == (-math.inf, -0.15)


def test_attribute_agreement_metric() -> None:
    rewinds = []
    source = EvalSource(
        Judged.samples,
        lambda n, g: torch.full((n, 1, 8, 8), -1.0),
        declared_manifest(),
        8,
        attributes=lambda n: [{"thickness": "thin"}] * 20 + [{"thickness": "thick"}] * (n - 20),
        measure=lambda imgs: {"thickness": np.arange(len(imgs), dtype=np.float64)},
        word_ranges={"thickness": {"thin": (-math.inf, 10.0), "thick": (20.0, math.inf)}},
        rewind=lambda: rewinds.append(1),
    )
    cfg = OmegaConf.create({"num_samples": 40, "batch_size": 16, "seed": 0, "feature": "digits"})
    metric = METRICS["attribute_agreement"]
    assert metric.needs is Need.attributes
    out = metric.compute(EvalRun(source, cfg, None, torch.device("cpu")))
    # thin: values 0..19, 11 of them <= 10; thick: 20..39, all >= 20
    assert out == {"attribute_agreement/thickness": 31 / 40, "attribute_gap/thickness": 20.0}
    assert rewinds == [1]
