"""BigGAN (Brock et al. 2019): reference parameter counts, the (G, D) contract and layer maths."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

from bigtrain.distributed.sync_bn import CrossReplicaBatchNorm, convert_cross_replica_bn
from bigtrain.losses.regularizers import orthogonal_penalty
from bigtrain.models import build_gan
from bigtrain.models.biggan import BigGANDiscriminator, BigGANGenerator
from bigtrain.models.biggan_layers import (
    ConditionalBatchNorm,
    SelfAttention,
    init_orthogonal,
    raw_weight,
    sn_linear,
)

# ajbrock/BigGAN-PyTorch, 128x128 ImageNet script: G_ch = D_ch = 96, dim_z 120, shared_dim 128,
# hier, attention at 64 in both nets, 1000 classes (counts printed by the release's train.py).
REF_G_PARAMS = 70_433_988
REF_D_PARAMS = 87_982_370
BATCH = 4
NUM_CLASSES = 5


def _n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _sn_modules(module: nn.Module) -> list[nn.Module]:
    return [m for m in module.modules() if parametrize.is_parametrized(m, "weight")]


def test_reference_parameter_counts_128() -> None:
    with torch.device("meta"):  # no memory, no init: only shapes matter here
        g = BigGANGenerator(128, 3, 1000, z_dim=120, ch=96, shared_dim=128, hier=True, attention=(64,))
        d = BigGANDiscriminator(128, 3, 1000, ch=96, attention=(64,))
    n_g, n_d = _n_params(g), _n_params(d)
    print(f"BigGAN 128x128 params: G {n_g:,} (ref {REF_G_PARAMS:,}), D {n_d:,} (ref {REF_D_PARAMS:,})")
    assert abs(n_g - REF_G_PARAMS) <= 0.01 * REF_G_PARAMS
    assert abs(n_d - REF_D_PARAMS) <= 0.01 * REF_D_PARAMS
    assert (n_g, n_d) == (REF_G_PARAMS, REF_D_PARAMS)  # in fact exact
    # Power-iteration vectors are buffers, as in the release.
    assert all("parametrizations.weight.0" in name for name, _ in g.named_buffers() if name.endswith(".u"))
    assert len(g.attention) == 1 and len(d.attention) == 1
    assert g.z_splits == [20] * 6


@pytest.mark.parametrize(
    ("resolution", "ch", "num_classes", "arch"),
    [
        (32, 16, NUM_CLASSES, {"hier": False, "shared_dim": 0, "attention": ()}),  # CIFAR-style preset
        (32, 16, 0, {"hier": False, "attention": ()}),
        (32, 16, NUM_CLASSES, {"attention": (16,)}),
        (64, 8, NUM_CLASSES, {"shared_dim": 16, "attention": (32,)}),
        (64, 8, 0, {"attention": (32,)}),
        (128, 8, NUM_CLASSES, {"shared_dim": 8, "attention": (64,)}),
        (128, 4, 0, {"hier": False, "attention": ()}),
    ],
)
def test_contract_shapes_and_ranges(resolution: int, ch: int, num_classes: int, arch: dict) -> None:
    torch.manual_seed(0)
    z_dim = 24
    g, d = build_gan(
        "biggan",
        resolution=resolution,
        channels=3,
        num_classes=num_classes,
        z_dim=z_dim,
        g_width=ch,
        d_width=ch,
        d_norm="batch",
        **arch,
    )
    z = torch.randn(BATCH, z_dim)
    y = torch.randint(0, num_classes, (BATCH,)) if num_classes > 0 else None
    x = g(z, y)
    assert x.shape == (BATCH, 3, resolution, resolution)
    assert torch.isfinite(x).all() and x.min() >= -1.0 and x.max() <= 1.0
    logits = d(x, y)
    assert logits.shape == (BATCH,) and torch.isfinite(logits).all()
    assert (g.z_dim, g.resolution, g.channels, g.num_classes) == (z_dim, resolution, 3, num_classes)
    assert (d.resolution, d.channels, d.num_classes) == (resolution, 3, num_classes)
    logits.sum().backward()
    assert all(p.grad is not None for p in d.parameters())


def test_cifar_preset_uses_per_layer_class_embeddings() -> None:
    g = BigGANGenerator(32, 3, 10, z_dim=128, ch=16, shared_dim=0, hier=False, attention=())
    assert g.shared is None and len(g.attention) == 0
    cbns = [m for m in g.modules() if isinstance(m, ConditionalBatchNorm)]
    assert len(cbns) == 6 and all(isinstance(m.gain, nn.Embedding) for m in cbns)
    with pytest.raises(ValueError, match="shared class embedding"):
        BigGANGenerator(32, 3, 10, ch=16, shared_dim=0, hier=True)


def test_generator_output_depends_on_labels() -> None:
    torch.manual_seed(0)
    g = BigGANGenerator(32, 3, NUM_CLASSES, z_dim=20, ch=16, shared_dim=16, attention=()).eval()
    z = torch.randn(BATCH, 20).repeat(2, 1)
    y = torch.tensor([0, 1, 2, 3, 1, 2, 3, 4])
    with torch.no_grad():
        x = g(z, y)
    assert not torch.allclose(x[:BATCH], x[BATCH:], atol=1e-4)


@pytest.mark.parametrize("num_classes", [NUM_CLASSES, 0])
def test_every_hierarchical_z_chunk_feeds_the_output(num_classes: int) -> None:
    torch.manual_seed(0)
    g = BigGANGenerator(32, 3, num_classes, z_dim=22, ch=16, shared_dim=16, hier=True, attention=()).eval()
    assert g.z_splits == [7, 5, 5, 5]  # remainder goes to the input linear's chunk
    z = torch.randn(2, 22)
    y = torch.tensor([1, 3]) if num_classes else None
    with torch.no_grad():
        base = g(z, y)
        start = 0
        for size in g.z_splits:
            z2 = z.clone()
            z2[:, start : start + size] += 1.0
            assert (g(z2, y) - base).abs().max() > 1e-4, f"chunk at {start} has no effect"
            start += size


def test_self_attention_is_identity_at_init_then_mixes() -> None:
    torch.manual_seed(0)
    attn = SelfAttention(16)
    assert attn.gamma.item() == 0.0
    x = torch.randn(2, 16, 8, 8)
    assert torch.equal(attn(x), x)
    with torch.no_grad():
        attn.gamma.fill_(1.0)
    assert not torch.allclose(attn(x), x)
    assert [m.out_channels for m in (attn.theta, attn.phi, attn.g, attn.o)] == [2, 2, 8, 16]


def test_spectral_norm_converges_to_unit_top_singular_value() -> None:
    torch.manual_seed(0)
    layer = sn_linear(12, 10)
    with torch.no_grad():  # a well-separated top singular value (10 vs <= 1) and a large scale
        u, _, vh = torch.linalg.svd(torch.randn(10, 12), full_matrices=False)
        s = torch.tensor([10.0] + [1.0 - 0.1 * i for i in range(9)])
        raw_weight(layer).copy_(u @ torch.diag(s) @ vh)
    x = torch.randn(3, 12)
    for _ in range(5):
        layer(x)
    sigma = torch.linalg.matrix_norm(layer.weight.detach(), ord=2)
    assert sigma == pytest.approx(1.0, abs=1e-3)
    assert layer.parametrizations.weight[0].sv.item() == pytest.approx(10.0, rel=1e-3)
    assert _n_params(layer) == 12 * 10 + 10  # u / sv are buffers


def test_spectral_norm_in_models_after_training_steps() -> None:
    torch.manual_seed(0)
    g = BigGANGenerator(32, 3, NUM_CLASSES, z_dim=20, ch=16, shared_dim=16, attention=(16,))
    d = BigGANDiscriminator(32, 3, NUM_CLASSES, ch=16, attention=(16,))
    with torch.no_grad():  # leave the (already unit-norm) orthogonal init: scale it, add a spike
        for net in (g, d):
            for m in _sn_modules(net):
                w = raw_weight(m).flatten(1)
                a = torch.nn.functional.normalize(torch.randn(w.shape[0], 1), dim=0)
                b = torch.nn.functional.normalize(torch.randn(1, w.shape[1]), dim=1)
                w.mul_(3.0).add_(4.0 * a @ b)
    y = torch.randint(0, NUM_CLASSES, (BATCH,))
    for _ in range(6):
        d(g(torch.randn(BATCH, 20), y), y)
    modules = _sn_modules(g) + _sn_modules(d)
    assert len(modules) > 20
    for m in modules:
        sigma = torch.linalg.matrix_norm(m.weight.detach().flatten(1), ord=2).item()
        # Power iteration underestimates sigma, so the normalised norm approaches 1 from above.
        assert 0.999 < sigma < 1.1, (m, sigma)


def test_orthogonal_init() -> None:
    layer = nn.Linear(8, 4)
    init_orthogonal(layer)
    w = layer.weight.detach()
    torch.testing.assert_close(w @ w.t(), torch.eye(4), atol=1e-5, rtol=0)


def test_ortho_reg_value_and_gradient() -> None:
    torch.manual_seed(0)
    strength = 1e-2
    layer = nn.Linear(6, 4, bias=True)
    init_orthogonal(layer)
    assert orthogonal_penalty(layer, strength).item() == pytest.approx(0.0, abs=1e-10)
    # Row norms do not matter: only the off-diagonal of W W^T is penalised.
    with torch.no_grad():
        layer.weight.mul_(torch.tensor([[1.0], [2.0], [3.0], [0.5]]))
    assert orthogonal_penalty(layer, strength).item() == pytest.approx(0.0, abs=1e-10)

    conv = nn.Conv2d(3, 5, 3).double()
    loss = orthogonal_penalty(conv, strength)
    assert loss.item() > 0
    loss.backward()
    # The release's ``utils.ortho`` closed-form update: strength * 2 (W W^T ⊙ (1 - I)) W.
    w = conv.weight.detach().flatten(1)
    expected = strength * 2 * ((w @ w.t()) * (1 - torch.eye(5, dtype=w.dtype))) @ w
    torch.testing.assert_close(conv.weight.grad.flatten(1), expected)
    assert conv.bias.grad is None  # 1-D parameters are not regularised

    weight = torch.randn(4, 3, 2, dtype=torch.double, requires_grad=True)

    def fn(t: torch.Tensor) -> torch.Tensor:
        return orthogonal_penalty(_ParamHolder(t), strength)

    assert torch.autograd.gradcheck(fn, (weight,))


class _ParamHolder(nn.Module):
    """Exposes a (non-leaf) tensor through ``parameters()`` so gradcheck can differentiate through it."""

    def __init__(self, t: torch.Tensor) -> None:
        super().__init__()
        self._t = t

    def parameters(self, recurse: bool = True):  # type: ignore[override]
        yield self._t


def test_ortho_reg_blacklist_skips_shared_embedding() -> None:
    g = BigGANGenerator(32, 3, NUM_CLASSES, z_dim=20, ch=16, shared_dim=16, attention=())
    assert g.shared is not None
    with torch.no_grad():  # orthogonal init would make the embedding's own term 0
        g.shared.weight.normal_()
    orthogonal_penalty(g, 1e-4, blacklist=[g.shared]).backward()
    assert g.shared.weight.grad is None
    assert raw_weight(g.blocks[0].conv1).grad is not None
    with_shared = orthogonal_penalty(g, 1e-4).item()
    without = orthogonal_penalty(g, 1e-4, blacklist=[g.shared.weight]).item()
    assert with_shared > without > 0


def test_sync_batchnorm_conversion() -> None:
    g = BigGANGenerator(32, 3, NUM_CLASSES, z_dim=20, ch=16, shared_dim=16, attention=())
    n_bn = sum(isinstance(m, nn.BatchNorm2d) for m in g.modules())
    assert n_bn == 2 * 3 + 1  # two CBNs per block, plus the output BN
    n_params = _n_params(g)
    g = nn.SyncBatchNorm.convert_sync_batchnorm(g)
    assert sum(isinstance(m, nn.SyncBatchNorm) for m in g.modules()) == n_bn
    assert not any(isinstance(m, nn.BatchNorm2d) for m in g.modules())
    assert _n_params(g) == n_params
    # Outside a process group SyncBatchNorm falls back to ordinary BN, so the model still runs.
    x = g(torch.randn(BATCH, 20), torch.randint(0, NUM_CLASSES, (BATCH,)))
    assert x.shape == (BATCH, 3, 32, 32)

    built = BigGANGenerator(32, 3, 0, z_dim=20, ch=16, hier=False, attention=(), cross_replica_bn=True)
    assert built.cross_replica_bn  # the trainer converts it (bigtrain.distributed.sync_bn)
    converted = convert_cross_replica_bn(built)
    assert sum(isinstance(m, CrossReplicaBatchNorm) for m in converted.modules()) == 7
    assert converted(torch.randn(BATCH, 20), None).shape == (BATCH, 3, 32, 32)  # alone: plain BN


def test_input_validation() -> None:
    g = BigGANGenerator(32, 3, NUM_CLASSES, z_dim=20, ch=16, shared_dim=16, attention=())
    with pytest.raises(ValueError, match="labels"):
        g(torch.randn(2, 20), None)
    with pytest.raises(ValueError, match="z must have shape"):
        g(torch.randn(2, 21), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="resolution"):
        BigGANDiscriminator(48, 3, 0, ch=16)
    with pytest.raises(
        ValueError, match="model.arch.bogus: not an option of model=biggan; valid: shared_dim, "
    ):
        build_gan("biggan", resolution=32, channels=3, num_classes=0, z_dim=8, g_width=8, d_width=8, bogus=1)
