"""The (G, D) interface contract of every registered family, plus DCGAN-specific guarantees."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn

from bigtrain.models import MODELS, GANShape, build_gan, register_model
from bigtrain.models.dcgan import DCGANDiscriminator, DCGANGenerator
from bigtrain.models.mlp_gan import MLPDiscriminator, MLPGANArch, MLPGenerator

Z_DIM = 16
BATCH = 4
NUM_CLASSES = 5


def _build(name: str, resolution: int, channels: int, num_classes: int, d_norm: str = "batch"):
    torch.manual_seed(0)
    return build_gan(
        name,
        resolution=resolution,
        channels=channels,
        num_classes=num_classes,
        z_dim=Z_DIM,
        g_width=8,
        d_width=8,
        d_norm=d_norm,
    )


def _inputs(num_classes: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    gen = torch.Generator().manual_seed(1)
    z = torch.randn(BATCH, Z_DIM, generator=gen)
    y = torch.randint(0, num_classes, (BATCH,), generator=gen) if num_classes > 0 else None
    return z, y


@pytest.mark.parametrize(
    ("name", "resolution", "channels", "num_classes"),
    list(itertools.product(["mlp_gan", "dcgan"], [16, 32, 64], [1, 3], [0, NUM_CLASSES])),
)
def test_contract_shapes_and_ranges(name: str, resolution: int, channels: int, num_classes: int) -> None:
    g, d = _build(name, resolution, channels, num_classes)
    z, y = _inputs(num_classes)
    x = g(z, y)
    assert x.shape == (BATCH, channels, resolution, resolution)
    assert x.min() >= -1.0 and x.max() <= 1.0
    assert torch.isfinite(x).all()
    logits = d(x, y)
    assert logits.shape == (BATCH,)
    assert torch.isfinite(logits).all()
    assert (g.z_dim, g.resolution, g.channels, g.num_classes) == (Z_DIM, resolution, channels, num_classes)
    assert (d.resolution, d.channels, d.num_classes) == (resolution, channels, num_classes)


@pytest.mark.parametrize("name", ["mlp_gan", "dcgan"])
def test_gradients_reach_both_networks(name: str) -> None:
    g, d = _build(name, 16, 3, NUM_CLASSES)
    z, y = _inputs(NUM_CLASSES)
    d(g(z, y), y).sum().backward()
    for net in (g, d):
        grads = [p.grad for p in net.parameters()]
        assert all(gr is not None for gr in grads)
        assert any(gr.abs().sum() > 0 for gr in grads)


@pytest.mark.parametrize("name", ["mlp_gan", "dcgan"])
def test_conditional_outputs_depend_on_labels(name: str) -> None:
    g, d = _build(name, 16, 3, NUM_CLASSES)
    g.eval()
    d.eval()  # no dropout / batch statistics: only y differs between the two calls
    z, _ = _inputs(NUM_CLASSES)
    y0 = torch.zeros(BATCH, dtype=torch.long)
    y1 = torch.ones(BATCH, dtype=torch.long)
    with torch.no_grad():
        x0, x1 = g(z, y0), g(z, y1)
        assert (x0 - x1).abs().max() > 1e-4
        assert (d(x0, y0) - d(x0, y1)).abs().max() > 1e-6


@pytest.mark.parametrize("name", ["mlp_gan", "dcgan"])
def test_conditional_models_require_labels(name: str) -> None:
    g, d = _build(name, 16, 1, NUM_CLASSES)
    z, y = _inputs(NUM_CLASSES)
    with pytest.raises(ValueError, match="class-conditional"):
        g(z, None)
    with pytest.raises(ValueError, match="class-conditional"):
        d(g(z, y), None)
    with pytest.raises(ValueError, match="shape"):
        g(z, y[:2])


@pytest.mark.parametrize("name", ["mlp_gan", "dcgan"])
def test_unconditional_models_ignore_labels(name: str) -> None:
    g, d = _build(name, 16, 1, 0)
    g.eval()
    d.eval()
    z, _ = _inputs(0)
    y = torch.arange(BATCH)
    with torch.no_grad():
        x = g(z, None)
        assert torch.equal(x, g(z, y))
        assert torch.equal(d(x, None), d(x, y))


@pytest.mark.parametrize("resolution", [0, 4, 12, 48, 100])
def test_dcgan_rejects_bad_resolution(resolution: int) -> None:
    for make in (
        lambda: DCGANGenerator(Z_DIM, resolution, 3, 0, 8),
        lambda: DCGANDiscriminator(resolution, 3, 0, 8),
    ):
        with pytest.raises(ValueError, match="power of two >= 8") as info:
            make()
        assert "\n" not in str(info.value)


def test_dcgan_smallest_resolution_and_channel_schedule() -> None:
    g = DCGANGenerator(Z_DIM, 8, 3, 0, 8)
    assert g(torch.randn(2, Z_DIM)).shape == (2, 3, 8, 8)
    # 32x32: 4x4 with width*4 channels, then width*2 at 8x8, width at 16x16, `channels` at 32x32.
    g = DCGANGenerator(Z_DIM, 32, 3, 0, 8)
    convs = [m for m in g.modules() if isinstance(m, nn.ConvTranspose2d)]
    assert [c.out_channels for c in convs] == [32, 16, 8, 3]
    d = DCGANDiscriminator(32, 3, 0, 8)
    convs = [m for m in d.modules() if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [8, 16, 32, 1]


@pytest.mark.parametrize(("norm", "norm_type"), [("batch", nn.BatchNorm2d), ("layer", nn.GroupNorm)])
def test_dcgan_discriminator_norms(norm: str, norm_type: type[nn.Module]) -> None:
    d = DCGANDiscriminator(32, 3, 0, 8, norm=norm)
    norms = [m for m in d.modules() if isinstance(m, nn.BatchNorm2d | nn.GroupNorm)]
    # Every conv but the first (input) and the head is normalised.
    assert len(norms) == 2 and all(type(m) is norm_type for m in norms)
    if norm == "layer":
        assert all(m.num_groups == 1 for m in norms)


def test_dcgan_discriminator_without_norm_and_bad_norm() -> None:
    d = DCGANDiscriminator(32, 3, 0, 8, norm="none")
    assert not any(isinstance(m, nn.BatchNorm2d | nn.GroupNorm) for m in d.modules())
    assert all(m.bias is not None for m in d.modules() if isinstance(m, nn.Conv2d))
    with pytest.raises(ValueError, match="batch, layer, none"):
        DCGANDiscriminator(32, 3, 0, 8, norm="instance")


def test_layer_norm_discriminator_is_per_sample() -> None:
    # The property WGAN-GP relies on: one sample's logit does not depend on the rest of the batch.
    torch.manual_seed(0)
    d = DCGANDiscriminator(16, 3, 0, 8, norm="layer").train()
    x = torch.randn(BATCH, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(d(x)[:1], d(x[:1]))


def test_dcgan_init_statistics() -> None:
    torch.manual_seed(0)
    g = DCGANGenerator(100, 64, 3, 0, 64)
    d = DCGANDiscriminator(64, 3, 0, 64)
    conv_w = torch.cat(
        [
            m.weight.flatten()
            for net in (g, d)
            for m in net.modules()
            if isinstance(m, nn.Conv2d | nn.ConvTranspose2d)
        ]
    )
    norm_w = torch.cat([m.weight for net in (g, d) for m in net.modules() if isinstance(m, nn.BatchNorm2d)])
    assert abs(conv_w.mean().item()) < 1e-3
    assert conv_w.std().item() == pytest.approx(0.02, rel=0.02)
    assert norm_w.mean().item() == pytest.approx(1.0, abs=3e-3)
    assert norm_w.std().item() == pytest.approx(0.02, rel=0.2)
    biases = [m.bias for net in (g, d) for m in net.modules() if getattr(m, "bias", None) is not None]
    assert all(torch.count_nonzero(b) == 0 for b in biases)


def test_mlp_discriminator_uses_dropout_only_in_training() -> None:
    torch.manual_seed(0)
    d = MLPDiscriminator(8, 1, 0, 32, dropout=0.5)
    x = torch.randn(BATCH, 1, 8, 8)
    with torch.no_grad():
        assert not torch.equal(d(x), d(x))
        d.eval()
        assert torch.equal(d(x), d(x))
    assert MLPGenerator(Z_DIM, 8, 1).net[0].in_features == Z_DIM


def test_registry_unknown_name_lists_known_names() -> None:
    with pytest.raises(ValueError) as info:
        _build("stylegan9", 32, 3, 0)
    message = str(info.value)
    assert "\n" not in message
    assert "'stylegan9'" in message
    assert "dcgan" in message and "mlp_gan" in message


def test_register_model_adds_a_family_and_refuses_duplicates() -> None:
    @register_model("tiny_test_family", kind="gan", arch=MLPGANArch)
    def _tiny(shape: GANShape, arch: MLPGANArch):  # noqa: ARG001
        return MLPGenerator(shape.z_dim, shape.resolution, shape.channels, width=4), nn.Identity()

    try:
        g, _ = _build("tiny_test_family", 8, 1, 0)
        assert isinstance(g, MLPGenerator)

        def other(shape: GANShape, arch: MLPGANArch):  # noqa: ANN202
            return _tiny(shape, arch)

        with pytest.raises(ValueError, match="already registered"):
            register_model("tiny_test_family", kind="gan", arch=MLPGANArch)(other)
    finally:
        MODELS.pop("tiny_test_family")
    assert {"mlp_gan", "dcgan", "biggan", "biggan_deep", "progan"} <= {
        n for n, f in MODELS.items() if f.kind == "gan"
    }


@pytest.mark.parametrize("family", ["mlp_gan", "dcgan", "biggan"])
def test_build_gan_rejects_an_unknown_d_norm_for_every_family(family: str) -> None:
    with pytest.raises(ValueError, match="unknown D norm 'spectral'"):
        build_gan(
            family, resolution=32, channels=1, num_classes=0, z_dim=8, g_width=4, d_width=4, d_norm="spectral"
        )
