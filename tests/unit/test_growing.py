"""Progressive growing beyond ProGAN (DCGAN, BigGAN, BigGAN-deep with ``model.arch.grow=true``), resolution
stages without growing (the tokenizer), and stages whose batch is split into accumulated
micro-batches."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from bigtrain.models import build_gan
from bigtrain.train.compose import compose_config
from bigtrain.train.stages import Stage, StageDriver, StageSchedule

FAMILIES = {
    "dcgan": {"g_width": 8, "d_width": 8, "d_norm": "layer"},
    "biggan": {"g_width": 4, "d_width": 4, "d_norm": "batch", "attention": [16], "shared_dim": 8},
    "biggan_deep": {"g_width": 4, "d_width": 4, "d_norm": "batch", "attention": [16], "shared_dim": 8},
}


def _pair(name: str, grow: bool, seed: int = 0) -> tuple[torch.nn.Module, torch.nn.Module]:
    torch.manual_seed(seed)
    extra = {"grow": True} if grow else {}
    return build_gan(name, resolution=32, channels=3, num_classes=10, z_dim=20, **FAMILIES[name], **extra)


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_growth_keeps_the_old_path_at_alpha_zero_and_blends_linearly(name: str) -> None:
    G, D = _pair(name, grow=True)
    G.eval()  # BatchNorm on running statistics: the same function at every call
    D.eval()
    z, y = torch.randn(4, 20), torch.arange(4)
    stages = sorted(set(G.stage_resolutions) & set(D.stage_resolutions))
    assert stages == [8, 16, 32]
    for small, big in zip(stages, stages[1:], strict=False):
        G.set_resolution(small, 1.0)
        old = G(z, y)
        G.set_resolution(big, 0.0)
        new = G(z, y)
        assert new.shape == (4, 3, big, big)
        assert torch.equal(new, F.interpolate(old, scale_factor=2, mode="nearest"))
        G.set_resolution(big, 1.0)
        full = G(z, y)
        G.set_resolution(big, 0.25)
        assert torch.allclose(G(z, y), 0.75 * new + 0.25 * full, atol=1e-6)
        x = torch.rand(4, 3, big, big) * 2 - 1
        D.set_resolution(small, 1.0)
        d_old = D(F.avg_pool2d(x, 2), y)
        D.set_resolution(big, 0.0)
        assert torch.allclose(D(x, y), d_old, atol=1e-6)  # D sees the pooled image through the old path


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_the_final_stage_is_the_plain_network_with_the_same_names(name: str) -> None:
    grown_G, grown_D = _pair(name, grow=True)
    plain_G, plain_D = _pair(name, grow=False, seed=1)
    extra = {"to_rgb", "from_rgb"}
    for grown, plain in ((grown_G, plain_G), (grown_D, plain_D)):
        state = {k: v for k, v in grown.state_dict().items() if k.split(".")[0] not in extra}
        assert set(state) == set(plain.state_dict())  # growing only adds the lower-resolution layers
        plain.load_state_dict(state)
        grown.eval()
        plain.eval()
    z, y, x = torch.randn(4, 20), torch.arange(4), torch.rand(4, 3, 32, 32)
    assert torch.equal(grown_G(z, y), plain_G(z, y)) and torch.equal(grown_D(x, y), plain_D(x, y))
    assert not plain_G.growing and grown_G.growing


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_blocks_above_the_stage_get_no_gradient(name: str) -> None:
    G, D = _pair(name, grow=True)
    G.set_resolution(8, 1.0)
    D.set_resolution(8, 1.0)
    D(G(torch.randn(4, 20), torch.arange(4)), torch.arange(4)).mean().backward()
    idle_G = [n for n, p in G.named_parameters() if p.grad is None]
    idle_D = [n for n, p in D.named_parameters() if p.grad is None]
    assert idle_G and idle_D
    if name == "dcgan":  # 4x4 stem and the 8px head train; the 16px and 32px layers wait
        idle = {".".join(n.split(".")[:2]) for n in idle_G}
        assert idle == {"net.3", "net.4", "net.6", "net.7", "net.9", "to_rgb.1"}
        assert {".".join(n.split(".")[:2]) for n in idle_D} == {
            "features.0",
            "features.2",
            "features.3",
            "features.5",
            "features.6",
            "from_rgb.0",
        }
    elif name == "biggan":  # the 8px head, not the 16px one or the final output layer
        assert "to_rgb.8.conv.parametrizations.weight.original" not in idle_G
        assert {"to_rgb.16.conv.parametrizations.weight.original", "out_conv.bias"} <= set(idle_G)
        assert "from_rgb.8.parametrizations.weight.original" not in idle_D and "blocks.0.conv1.bias" in idle_D
    with pytest.raises(ValueError, match="not one of this network's stages"):
        G.set_resolution(12)


def test_micro_batches_from_the_config_and_their_errors() -> None:
    s = StageSchedule.from_config(
        [{"resolution": 8, "steps": 2}, {"resolution": 16, "steps": 2, "batch_size": 24, "micro_batch": 6}],
        {0: 64, 1: 24},
        batch_size=64,
        max_micro_batch=20,
    )
    assert [(st.batch(64), st.micro(64), st.splits(64)) for st in s.stages] == [(64, 16, 4), (24, 6, 4)]
    driver = StageDriver(s, batch_size=64, accumulation=2, growing=[], reset_optimizer=False)
    assert [driver.data_shape(t) for t in (1, 3)] == [(8, 16), (16, 6)]
    assert [driver.accumulation(t) for t in (1, 3)] == [8, 8]  # trainer.accumulation x the split
    with pytest.raises(ValueError, match="micro_batch 5 must divide its batch of 24"):
        StageSchedule.from_config([{"resolution": 8, "steps": 1, "batch_size": 24, "micro_batch": 5}], {})
    with pytest.raises(ValueError, match="its resolution must double the previous stage's"):
        StageSchedule([Stage(8, 2), Stage(32, 2, fade_steps=1)])
    with pytest.raises(ValueError, match="this model does not grow"):
        StageDriver(
            StageSchedule([Stage(8, 2), Stage(16, 2, fade_steps=1)]),
            batch_size=8, accumulation=1, growing=[], reset_optimizer=False,
        )  # fmt: skip


def _tokenizer(micro: str) -> object:
    from bigtrain.train.tasks.tokenizer import TokenizerTask
    from tests.conftest import cpu, declared_manifest

    cfg = compose_config([
        "experiment=mnist_vqgan", "data.path=/unused", "model.arch.ch=8", "model.arch.groups=8",
        "model.arch.z_channels=8", "model.arch.embed_dim=8", "model.arch.num_codes=16",
        "model.arch.quantizer=st", "model.arch.restart_after=0", "vq.disc_start=100",
        f"stages.schedule=[{{resolution: 16, steps: 1, batch_size: 8{micro}}}, {{resolution: 32, steps: 1}}]",
    ])  # fmt: skip
    torch.manual_seed(0)
    return TokenizerTask(cfg, declared_manifest(), torch.device("cpu"), cpu())


def test_a_split_stage_batch_gives_the_whole_batch_gradient() -> None:
    """The tokenizer at a 16px stage (no growing: it is fully convolutional), its batch of 8 taken
    at once or as 2 accumulated micro-batches of 4: the same gradient, so the same update."""
    images = torch.rand(8, 1, 16, 16) * 2 - 1
    grads = []
    for micro in ("", ", micro_batch: 4"):
        task = _tokenizer(micro)
        res, n = task.data_shape(1)  # type: ignore[attr-defined]
        assert res == 16 and n == (4 if micro else 8)
        batches = iter([{"image": images[i : i + n]} for i in range(0, 8, n)])
        metrics = task.train_step(1, batches)  # type: ignore[attr-defined]
        assert metrics["resolution"] == 16 and task.images_per_step() == 8  # type: ignore[attr-defined]
        assert next(batches, None) is None  # exactly the stage's batch was consumed
        grads.append([p.grad.clone() for p in task.vq.parameters() if p.grad is not None])  # type: ignore[attr-defined]
        assert task.current_resolution() == 16  # type: ignore[attr-defined]
    assert len(grads[0]) == len(grads[1]) > 10
    for a, b in zip(*grads, strict=True):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-6)


def test_a_fade_does_not_recompile_under_torch_compile() -> None:
    """alpha changes every step of a fade: the networks read it from a buffer, so torch.compile
    traces a fading stage once, not once per step."""
    G, _ = _pair("dcgan", grow=True)
    graphs = []

    def counting_backend(gm: torch.fx.GraphModule, example_inputs: list) -> object:  # noqa: ARG001
        graphs.append(gm)
        return gm.forward

    torch._dynamo.reset()
    compiled = torch.compile(G, backend=counting_backend)
    z, y = torch.randn(2, 20), torch.arange(2)
    outs = []
    for alpha in (0.25, 0.5, 0.75):
        G.set_resolution(16, alpha)
        outs.append(compiled(z, y))
    assert len(graphs) == 1  # one trace for the whole fade
    G.set_resolution(16, 0.5)
    assert torch.equal(outs[1], G(z, y))  # and it does use each step's alpha
    assert not torch.equal(outs[0], outs[2])
    torch._dynamo.reset()
