"""pix2pix's and CycleGAN's networks (``bigtrain.models.translation``) and the PatchGAN's norm options:
shapes, the U-Net's skips, dropout as noise, the release's bias rule, the receptive fields, and the
parameter counts of the release's own ``unet_256``/``resnet_9blocks``/``NLayerDiscriminator``."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bigtrain.errors import ConfigError
from bigtrain.models import build_translation, families, model_family
from bigtrain.models.patchgan import PatchDiscriminator
from bigtrain.models.translation import (
    ConditionalPatchDiscriminator,
    CycleGANArch,
    CycleGANNets,
    Pix2PixArch,
    ResnetGenerator,
    UNetGenerator,
    auto_num_downs,
)


def _n(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def _pix2pix(resolution: int = 32, in_ch: int = 3, out_ch: int = 2, width: int = 8, **arch: object):
    torch.manual_seed(0)
    return build_translation(
        "pix2pix", resolution=resolution, in_channels=in_ch, out_channels=out_ch, g_width=width, d_width=width,
        kind="paired", **arch,
    )  # fmt: skip


def _cyclegan(resolution: int = 32, in_ch: int = 3, out_ch: int = 1, width: int = 8, **arch: object):
    torch.manual_seed(0)
    return build_translation(
        "cyclegan", resolution=resolution, in_channels=in_ch, out_channels=out_ch, g_width=width, d_width=width,
        kind="unpaired", **arch,
    )  # fmt: skip


# --------------------------------------------------------------------------------------- registry


def test_families_registered_with_their_kinds_and_release_defaults() -> None:
    assert set(families("paired")) == {"pix2pix"} and set(families("unpaired")) == {"cyclegan"}
    assert model_family("pix2pix").arch is Pix2PixArch and model_family("cyclegan").arch is CycleGANArch
    p, c = Pix2PixArch(), CycleGANArch()
    assert (p.generator, p.norm, p.dropout, p.n_layers, p.num_downs) == ("unet", "batch", 0.5, 3, 0)
    assert (c.generator, c.norm, c.dropout, c.n_layers, c.padding) == (
        "resnet_9",
        "instance",
        0.0,
        3,
        "reflect",
    )


@pytest.mark.parametrize("generator", ["unet", "resnet_6", "resnet_9"])
def test_pix2pix_shapes_range_and_conditional_d(generator: str) -> None:
    g, d = _pix2pix(generator=generator)
    assert isinstance(d, ConditionalPatchDiscriminator) and d.net.in_channels == 5
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    y = g(x)
    assert y.shape == (2, 2, 32, 32) and y.abs().max() <= 1
    logits = d(x, y)
    assert logits.shape == (2, 1, 2, 2)  # 32 -> 16 -> 8 -> 4 -> 3 -> 2 with n_layers = 3
    # D sees the source first, then the target, concatenated along channels (the release's order)
    torch.testing.assert_close(logits, d.net(torch.cat([x, y], 1)))
    if generator != "unet":
        assert len(g.blocks) == int(generator[-1])


def test_cyclegan_nets_shapes_and_domains() -> None:
    nets = _cyclegan()
    assert isinstance(nets, CycleGANNets)
    g_ab, g_ba, d_a, d_b = nets  # unpacks as a tuple
    assert isinstance(g_ab, ResnetGenerator) and len(g_ab.blocks) == 9
    assert (g_ab.in_channels, g_ab.out_channels, g_ba.in_channels, g_ba.out_channels) == (3, 1, 1, 3)
    assert (d_a.in_channels, d_b.in_channels) == (3, 1)
    assert d_a.norm == d_b.norm == "instance"
    a = torch.rand(2, 3, 32, 32) * 2 - 1
    fake_b = g_ab(a)
    rec_a = g_ba(fake_b)
    assert fake_b.shape == (2, 1, 32, 32) and rec_a.shape == a.shape and rec_a.abs().max() <= 1
    assert d_a(rec_a).shape == d_b(fake_b).shape == (2, 1, 2, 2)
    unet = _cyclegan(generator="unet").g_ab
    assert isinstance(unet, UNetGenerator) and unet(a).shape == (2, 1, 32, 32)


def test_256px_shapes_on_meta() -> None:
    """The release's full-size networks, shaped without allocating them."""
    with torch.device("meta"):
        g, d = _pix2pix(256, 3, 3, 64)
        x = torch.empty(1, 3, 256, 256)
        assert g.num_downs == 8 and g(x).shape == (1, 3, 256, 256)
        assert d(x, x).shape == (1, 1, 30, 30)  # the release's 30x30 map of 70x70 patches
        nets = _cyclegan(256, 3, 3, 64)
        assert nets.g_ab(x).shape == (1, 3, 256, 256) and nets.d_b(x).shape == (1, 1, 30, 30)


def test_num_downs_auto_and_checks() -> None:
    assert [auto_num_downs(r) for r in (256, 128, 32, 96)] == [8, 7, 5, 5]
    assert _pix2pix(64)[0].num_downs == 6
    assert _pix2pix(64, num_downs=4)[0].num_downs == 4
    with pytest.raises(ConfigError, match="model.arch.num_downs=6"):
        _pix2pix(32, num_downs=6)
    with pytest.raises(ConfigError, match="model.arch.generator"):
        _pix2pix(generator="resnet_7")
    with pytest.raises(ConfigError, match="model.arch.norm"):
        _pix2pix(norm="group")
    with pytest.raises(ConfigError, match="not an option of model=pix2pix"):
        _pix2pix(ngf=3)
    with pytest.raises(ConfigError, match="unknown paired model 'cyclegan'"):
        build_translation("cyclegan", resolution=32, in_channels=3, out_channels=3, kind="paired")
    with pytest.raises(ConfigError, match="not an image-to-image"):
        build_translation("dcgan", resolution=32, in_channels=3, out_channels=3)
    with pytest.raises(ValueError, match="divisible by 32"):
        UNetGenerator(3, 3, 5, 4)(torch.zeros(1, 3, 48, 48))


# ----------------------------------------------------------------------------------- the U-Net


def test_unet_layout_is_the_releases() -> None:
    """Widths ngf * min(2^i, 8), no norm at the outermost and innermost encoder levels, Tanh out."""
    g = UNetGenerator(3, 2, 8, ngf=4)
    convs = [s[-1] if i == 0 else s[1] for i, s in enumerate(g.encoder)]
    assert [c.out_channels for c in convs] == [4, 8, 16, 32, 32, 32, 32, 32]
    assert all(isinstance(c, nn.Conv2d) and c.kernel_size == (4, 4) and c.stride == (2, 2) for c in convs)
    assert len(g.encoder[0]) == 1 and len(g.encoder[-1]) == 2  # conv only; LeakyReLU + conv
    assert all(isinstance(s[0], nn.LeakyReLU) and s[0].negative_slope == 0.2 for s in g.encoder[1:])
    assert all(isinstance(s[-1], nn.BatchNorm2d) for s in g.encoder[1:-1])
    assert isinstance(g.decoder[0][-1], nn.Tanh) and g.decoder[0][1].out_channels == 2
    assert all(isinstance(s[0], nn.ReLU) and isinstance(s[1], nn.ConvTranspose2d) for s in g.decoder)
    # skip concatenation doubles every decoder input but the innermost's
    assert [s[1].in_channels for s in g.decoder] == [8, 16, 32, 64, 64, 64, 64, 32]


def test_unet_skips_carry_detail_past_a_cut_bottleneck() -> None:
    """With the 1x1 bottleneck's features replaced by zeros, a one-pixel change of the input still
    changes the output, most near that pixel: the detail travels by the skip connections."""
    torch.manual_seed(0)
    g = UNetGenerator(1, 1, 5, ngf=8, dropout=0.0).eval()
    g.encoder[-1].register_forward_hook(lambda m, i, out: torch.zeros_like(out))
    x = torch.rand(1, 1, 32, 32) * 2 - 1
    x2 = x.clone()
    x2[0, 0, 20, 9] += 1.0
    with torch.no_grad():
        diff = (g(x2) - g(x)).abs()[0, 0]
    assert diff.max() > 1e-4
    near = diff[18:23, 7:12].max()
    assert near == diff.max()  # the largest change is around the edited pixel
    assert diff[:8, 20:].max() < near  # far away it is smaller


def test_dropout_is_noise_in_train_mode_and_optionally_in_eval() -> None:
    torch.manual_seed(0)
    g = UNetGenerator(3, 3, 8, ngf=4)  # 256 px: the release's three 8*ngf dropout levels
    drops = [m for m in g.modules() if isinstance(m, nn.Dropout)]
    assert len(drops) == 3 and all(m.p == 0.5 for m in drops)
    assert [i for i, s in enumerate(g.decoder) if isinstance(s[-1], nn.Dropout)] == [4, 5, 6]
    x = torch.rand(2, 3, 256, 256) * 2 - 1
    with torch.no_grad():
        assert not torch.equal(g.train()(x), g(x))  # same batch, same BN statistics: dropout differs
        g.eval()
        assert torch.equal(g(x), g(x))  # plain eval: deterministic
        g.dropout_at_eval = True  # re-applies to the current (eval) mode
        assert all(m.training for m in drops) and not any(
            m.training for m in g.modules() if isinstance(m, nn.BatchNorm2d)
        )
        assert not torch.equal(g(x), g(x))
        g.train().eval()
        assert all(m.training for m in drops)
    assert UNetGenerator(3, 3, 5, ngf=4).has_dropout is False  # 32 px: no 8*ngf middle level
    g_built, _ = _pix2pix(64)  # the families leave sampling noise to the task: plain eval is deterministic
    assert g_built.has_dropout and not g_built.dropout_at_eval
    assert not any(m.training for m in g_built.eval().modules())


# --------------------------------------------------------------------------------- the ResNet G


@pytest.mark.parametrize("blocks", [6, 9])
def test_resnet_layout_reflect_padding_and_blocks(blocks: int) -> None:
    torch.manual_seed(0)
    g = ResnetGenerator(3, 3, ngf=4, n_blocks=blocks)
    assert len(g.blocks) == blocks
    convs = [m for b in g.blocks for m in b.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 2 * blocks and all(
        c.padding_mode == "reflect" and c.padding == (1, 1) for c in convs
    )
    assert g.stem[0].kernel_size == g.head[0].kernel_size == (7, 7)
    assert g.stem[0].padding_mode == g.head[0].padding_mode == "reflect" and g.stem[0].padding == (3, 3)
    assert [m.stride for m in g.down if isinstance(m, nn.Conv2d)] == [(2, 2), (2, 2)]
    ups = [m for m in g.up if isinstance(m, nn.ConvTranspose2d)]
    assert [(u.in_channels, u.out_channels, u.output_padding) for u in ups] == [
        (16, 8, (1, 1)),
        (8, 4, (1, 1)),
    ]
    assert isinstance(g.head[-1], nn.Tanh)
    # reflect padding means what it says: a block's conv equals the conv of the reflect-padded map
    h = torch.randn(1, 16, 8, 8)
    c = g.blocks[0].body[0]
    torch.testing.assert_close(c(h), F.conv2d(F.pad(h, (1, 1, 1, 1), mode="reflect"), c.weight, c.bias))
    zero = ResnetGenerator(3, 3, ngf=4, n_blocks=1, padding="zero")
    assert zero.blocks[0].body[0].padding_mode == "zeros"
    with pytest.raises(ValueError, match="unknown padding"):
        ResnetGenerator(3, 3, padding="circular")


def test_resnet_dropout_between_the_block_convs() -> None:
    g = ResnetGenerator(3, 3, ngf=4, n_blocks=2, dropout=0.5)
    assert [type(m).__name__ for m in g.blocks[0].body] == [
        "Conv2d", "InstanceNorm2d", "ReLU", "Dropout", "Conv2d", "InstanceNorm2d",
    ]  # fmt: skip
    assert not ResnetGenerator(3, 3, ngf=4, n_blocks=2).has_dropout


# ------------------------------------------------------------------------ norms, biases, init


def _hidden_convs(m: nn.Module) -> list[nn.Module]:
    """The convs that a norm layer (or its identity stand-in) follows."""
    out = []
    for seq in m.modules():
        if isinstance(seq, nn.Sequential):
            mods = list(seq)
            out += [a for a, b in zip(mods, mods[1:], strict=False)
                    if isinstance(a, nn.Conv2d | nn.ConvTranspose2d)
                    and isinstance(b, nn.BatchNorm2d | nn.InstanceNorm2d | nn.Identity)]  # fmt: skip
    return out


@pytest.mark.parametrize(("norm", "bias"), [("batch", False), ("instance", True), ("none", False)])
def test_conv_bias_only_with_instance_norm_as_released(norm: str, bias: bool) -> None:
    """The release: ``use_bias = norm_layer is InstanceNorm2d`` (so no bias with "none" either); the
    output convs (U-Net's outermost transposed conv, the ResNet head, D's first and last) always have one."""
    g_unet = UNetGenerator(3, 3, 6, ngf=4, norm=norm)
    g_res = ResnetGenerator(3, 3, ngf=4, norm=norm, n_blocks=2)
    d = PatchDiscriminator(6, 4, 3, norm=norm)
    for net, n_hidden in ((g_unet, 9), (g_res, 9), (d, 3)):
        hidden = _hidden_convs(net)
        assert len(hidden) == n_hidden
        assert all((c.bias is not None) == bias for c in hidden)
    # the U-Net's outermost encoder conv has no norm after it but follows the rule too
    assert (g_unet.encoder[0][0].bias is not None) == bias
    assert g_unet.decoder[0][1].bias is not None and g_res.head[0].bias is not None
    assert d.main[0].bias is not None and d.main[-1].bias is not None
    norms = [m for m in g_unet.modules() if isinstance(m, nn.InstanceNorm2d)]
    assert all(not m.affine and not m.track_running_stats for m in norms)
    assert all(m.affine and m.track_running_stats for m in d.modules() if isinstance(m, nn.BatchNorm2d))


def test_init_is_the_releases_normal_002() -> None:
    torch.manual_seed(0)
    g, d = _pix2pix(64, width=32)
    for net in (g, d):
        convs = [m for m in net.modules() if isinstance(m, nn.Conv2d | nn.ConvTranspose2d)]
        w = torch.cat([c.weight.flatten() for c in convs])
        assert abs(w.std().item() - 0.02) < 1e-3 and abs(w.mean().item()) < 1e-3
        assert all(c.bias is None or not c.bias.any() for c in convs)
        bns = [m for m in net.modules() if isinstance(m, nn.BatchNorm2d)]
        gains = torch.cat([b.weight for b in bns])
        assert abs(gains.mean().item() - 1) < 5e-3 and abs(gains.std().item() - 0.02) < 5e-3
        assert not torch.cat([b.bias for b in bns]).any()


# -------------------------------------------------------------------------------- the PatchGAN


@pytest.mark.parametrize(("n_layers", "field"), [(3, 70), (2, 34), (1, 16)])
@pytest.mark.parametrize("norm", ["batch", "none"])
def test_patchgan_receptive_field(n_layers: int, field: int, norm: str) -> None:
    """The input pixels that one (central) logit depends on: a ``field`` x ``field`` square."""
    torch.manual_seed(0)
    d = PatchDiscriminator(3, 4, n_layers, norm=norm).eval()  # eval: BatchNorm acts per position
    x = torch.randn(1, 3, 128, 128, requires_grad=True)
    out = d(x)
    h, w = out.shape[-2:]
    out[0, 0, h // 2, w // 2].backward()
    support = x.grad.abs().sum(dim=(0, 1)) > 0
    rows, cols = support.any(dim=1).nonzero().flatten(), support.any(dim=0).nonzero().flatten()
    assert rows.max() - rows.min() + 1 == field and cols.max() - cols.min() + 1 == field
    assert support[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1].all()  # a full square


def test_default_patchgan_unchanged() -> None:
    """The VQ-GAN tokenizer's PatchGAN: same tensors and names as before the norm option, and the
    same draws (``norm="batch"`` is the default; ``zero_bias`` draws nothing)."""
    d = PatchDiscriminator(3, 64, 3)
    names = [f"main.{i}.weight" for i in (0,)] + ["main.0.bias"]
    for i in (2, 5, 8):
        names += [f"main.{i}.weight", f"main.{i + 1}.weight", f"main.{i + 1}.bias", f"main.{i + 1}.running_mean",
                  f"main.{i + 1}.running_var", f"main.{i + 1}.num_batches_tracked"]  # fmt: skip
    names += ["main.11.weight", "main.11.bias"]
    assert list(d.state_dict()) == names and _n(d) == 2_765_633
    torch.manual_seed(0)
    a = PatchDiscriminator(3, 16, 2)
    torch.manual_seed(0)
    b = PatchDiscriminator(3, 16, 2, norm="batch", zero_bias=True)
    for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        if k in ("main.0.bias", "main.8.bias"):
            assert (
                va.any() and not vb.any()
            )  # taming keeps PyTorch's default bias init; the release zeroes it
        else:
            assert torch.equal(va, vb), k
    with pytest.raises(ValueError, match="unknown norm"):
        PatchDiscriminator(3, 8, 2, norm="layer")


# -------------------------------------------------------------------- the release's own counts


def test_parameter_counts_are_the_releases() -> None:
    """Counted from junyanz/pytorch-CycleGAN-and-pix2pix ``models/networks.py`` (``define_G`` /
    ``define_D`` with ngf = ndf = 64, 3-channel images): pix2pix's unet_256 and D on 6 channels with
    BatchNorm, CycleGAN's resnet_9blocks/resnet_6blocks and D on 3 channels with InstanceNorm."""
    with torch.device("meta"):
        assert _n(UNetGenerator(3, 3, 8, 64, "batch")) == 54_413_955  # unet_256
        assert _n(UNetGenerator(3, 3, 7, 64, "batch")) == 41_828_995  # unet_128
        assert _n(ConditionalPatchDiscriminator(3, 3, 64, 3, "batch")) == 2_768_705  # basic, 6 channels
        assert _n(ResnetGenerator(3, 3, 64, "instance", 9)) == 11_378_179  # resnet_9blocks
        assert _n(ResnetGenerator(3, 3, 64, "instance", 6)) == 7_837_699  # resnet_6blocks
        assert _n(PatchDiscriminator(3, 64, 3, "instance")) == 2_764_737  # basic, 3 channels
        assert _n(UNetGenerator(3, 3, 8, 64, "instance")) == 54_409_603
        assert _n(ResnetGenerator(3, 3, 64, "batch", 9)) == 11_383_427
        g, d = _pix2pix(256, 3, 3, 64)
        assert (_n(g), _n(d)) == (54_413_955, 2_768_705)
        nets = _cyclegan(256, 3, 3, 64)
        assert [_n(m) for m in nets] == [11_378_179, 11_378_179, 2_764_737, 2_764_737]
