"""BigGAN-deep (Brock et al. 2019, appendix B): reference parameter counts, structure, contract."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from bigtrain.distributed.sync_bn import CrossReplicaBatchNorm, convert_cross_replica_bn
from bigtrain.models import build_gan
from bigtrain.models.biggan_deep import (
    BigGANDeepDiscriminator,
    BigGANDeepGenerator,
    DeepDBlock,
    DeepGBlock,
)
from bigtrain.models.biggan_layers import ConditionalBatchNorm, SelfAttention

BATCH = 4
NUM_CLASSES = 5


def _n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# Counts printed by ajbrock/BigGAN-PyTorch's BigGANdeep.py (G_ch = D_ch, G_depth = D_depth = 2,
# dim_z 128, shared_dim 128, hier, 1000 classes) at each resolution's attention setting.
REFERENCE_COUNTS = [
    (128, 128, (64,), 50_244_484, 34_590_210),  # launch_BigGAN_deep.sh
    (256, 128, (64,), 55_736_708, 38_247_426),
    (64, 128, (32,), 49_829_636, 20_951_554),
    (32, 64, (), 3_206_019, 905_089),
]


@pytest.mark.parametrize(("resolution", "ch", "attention", "ref_g", "ref_d"), REFERENCE_COUNTS)
def test_reference_parameter_counts(
    resolution: int, ch: int, attention: tuple[int, ...], ref_g: int, ref_d: int
) -> None:
    with torch.device("meta"):
        g, d = build_gan(
            "biggan_deep",
            resolution=resolution,
            channels=3,
            num_classes=1000,
            z_dim=128,
            g_width=ch,
            d_width=ch,
            attention=attention,
        )
    assert (_n_params(g), _n_params(d)) == (ref_g, ref_d)


def test_stages_have_depth_blocks_and_resample_once() -> None:
    g = BigGANDeepGenerator(64, 3, NUM_CLASSES, z_dim=16, ch=16, shared_dim=8, depth=3, attention=(32,))
    d = BigGANDeepDiscriminator(64, 3, NUM_CLASSES, ch=16, depth=3, attention=(32,))
    assert len(g.blocks) == 4 * 3 and len(d.blocks) == 4 * 3  # four stages of three blocks
    # G: only the last block of a stage upsamples and changes the width.
    assert [b.upsample for b in g.blocks] == [False, False, True] * 4
    assert all(b.in_channels == b.out_channels for b in g.blocks if not b.upsample)
    # D: only the first block of a stage downsamples and changes the width.
    assert [b.downsample for b in d.blocks] == [True, False, False] * 4
    assert all(b.in_channels == b.out_channels for b in d.blocks if not b.downsample)
    # Attention after the stage producing 32x32: G's first stage makes 8, then 16, 32 -> block 8;
    # D's first stage makes 32 -> block 2.
    assert list(g.attention) == ["8"] and list(d.attention) == ["2"]
    assert isinstance(g.attention["8"], SelfAttention)


def test_every_layer_is_conditioned_on_the_shared_embedding_and_the_whole_z() -> None:
    g = BigGANDeepGenerator(32, 3, NUM_CLASSES, z_dim=24, ch=16, shared_dim=8, attention=())
    cbns = [m for m in g.modules() if isinstance(m, ConditionalBatchNorm)]
    assert len(cbns) == 4 * 2 * 3 and all(m.cond_dim == 8 + 24 for m in cbns)
    assert g.linear.in_features == 8 + 24
    torch.manual_seed(0)
    z, y = torch.randn(BATCH, 24), torch.randint(0, NUM_CLASSES, (BATCH,))
    cond = g.condition(z, y)
    torch.testing.assert_close(cond, torch.cat([g.shared(y), z], dim=1))  # embedding first
    seen: list[torch.Tensor] = []
    for m in cbns:
        m.register_forward_hook(lambda _m, inputs, _out: seen.append(inputs[1]))
    g(z, y)
    assert len(seen) == len(cbns) and all(torch.equal(c, cond) for c in seen)


@pytest.mark.parametrize("num_classes", [NUM_CLASSES, 0])
@pytest.mark.parametrize("resolution", [32, 64])
def test_contract_shapes_ranges_and_gradients(resolution: int, num_classes: int) -> None:
    torch.manual_seed(0)
    g, d = build_gan(
        "biggan_deep",
        resolution=resolution,
        channels=1,
        num_classes=num_classes,
        z_dim=16,
        g_width=16,
        d_width=16,
        shared_dim=8,
        attention=(16,),
    )
    z = torch.randn(BATCH, 16)
    y = torch.randint(0, NUM_CLASSES, (BATCH,)) if num_classes else None
    x = g(z, y)
    assert x.shape == (BATCH, 1, resolution, resolution)
    assert x.abs().max() <= 1.0
    logits = d(x, y)
    assert logits.shape == (BATCH,)
    logits.sum().backward()
    for net in (g, d):
        for name, p in net.named_parameters():
            assert p.grad is not None, name
    assert (g.shared is None) == (num_classes == 0)
    assert (d.embed is None) == (num_classes == 0)


def test_labels_change_the_output() -> None:
    torch.manual_seed(0)
    g = BigGANDeepGenerator(32, 3, NUM_CLASSES, z_dim=16, ch=16, shared_dim=8, attention=()).eval()
    z = torch.randn(1, 16).repeat(2, 1)
    x = g(z, torch.tensor([0, 1]))
    assert not torch.allclose(x[0], x[1])


def test_cross_replica_conversion_finds_every_batchnorm() -> None:
    g = BigGANDeepGenerator(
        32, 3, NUM_CLASSES, z_dim=16, ch=16, shared_dim=8, attention=(), cross_replica_bn=True
    )
    assert g.cross_replica_bn
    n_bn = sum(isinstance(m, nn.BatchNorm2d) for m in g.modules())
    assert n_bn == 3 * 2 * 4 + 1
    convert_cross_replica_bn(g)
    assert sum(isinstance(m, CrossReplicaBatchNorm) for m in g.modules()) == n_bn
    assert g(torch.randn(BATCH, 16), torch.zeros(BATCH, dtype=torch.long)).shape == (BATCH, 3, 32, 32)


def test_bad_options_are_named() -> None:
    kw = {"resolution": 32, "channels": 3, "num_classes": 5, "z_dim": 16, "g_width": 16, "d_width": 16}
    with pytest.raises(ValueError, match="model.arch.hier"):
        build_gan("biggan_deep", hier=True, **kw)
    with pytest.raises(ValueError, match="resolution must be one of"):
        build_gan("biggan_deep", **{**kw, "resolution": 48})
    with pytest.raises(ValueError, match="depth"):
        build_gan("biggan_deep", depth=0, **kw)
    with pytest.raises(ValueError, match="shared class embedding"):
        build_gan("biggan_deep", shared_dim=0, **kw)
    with pytest.raises(ValueError, match="init"):
        build_gan("biggan_deep", init="xavier", **kw)
    g, d = build_gan("biggan_deep", g_depth=1, d_depth=3, **kw)
    assert (g.depth, d.depth) == (1, 3)


def test_bottleneck_blocks() -> None:
    torch.manual_seed(0)
    gblock = DeepGBlock(32, 16, make_norm=lambda c: ConditionalBatchNorm(c, 12))
    x, cond = torch.randn(2, 32, 4, 4), torch.randn(2, 12)
    assert gblock(x, cond).shape == (2, 16, 8, 8)
    # Bottleneck width in // 4 = 8; the shortcut (channel drop + upsample) has no parameters.
    convs = 32 * 8 + 8 + 2 * (8 * 8 * 9 + 8) + 8 * 16 + 16
    cbns = 2 * 12 * (32 + 8 + 8 + 8)
    assert _n_params(gblock) == convs + cbns

    dblock = DeepDBlock(16, 32)
    x = torch.randn(2, 16, 8, 8)
    assert dblock(x).shape == (2, 32, 4, 4)
    residual: list[torch.Tensor] = []
    dblock.conv4.register_forward_hook(lambda _m, _i, out: residual.append(out))
    out = dblock(x)
    # The shortcut's first 16 channels are the pooled input itself; the rest are learned.
    torch.testing.assert_close((out - residual[0])[:, :16], torch.nn.functional.avg_pool2d(x, 2))
