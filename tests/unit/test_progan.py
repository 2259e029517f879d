"""ProGAN's networks and the resolution-stage schedule: equalised learning rate, pixel norm,
minibatch stddev, the paper's sizes, fade-in that leaves the old path unchanged at alpha = 0, and
the schedule's alpha ramp."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from bigtrain.models.progan import (
    EqualizedConv2d,
    build_progan,
    minibatch_stddev,
    pixel_norm,
    widths,
)
from bigtrain.train.stages import Stage, StageSchedule


def test_paper_sizes_at_1024() -> None:
    # Karras et al. 2018, table 2: 23.1M parameters in each network for CelebA-HQ 1024x1024
    assert widths(9, 8192, 512) == [512, 512, 512, 512, 512, 256, 128, 64, 32, 16]
    with torch.device("meta"):
        G, D = build_progan(resolution=1024, channels=3, z_dim=512)
    for net in (G, D):
        assert round(sum(p.numel() for p in net.parameters()) / 1e6, 1) == 23.1


def test_equalized_lr_scales_at_run_time() -> None:
    torch.manual_seed(0)
    conv = EqualizedConv2d(64, 32, 3)
    assert conv.scale == pytest.approx(math.sqrt(2) / math.sqrt(64 * 9))
    assert conv.weight.std().item() == pytest.approx(1.0, abs=0.05)  # stored N(0, 1)
    x = torch.randn(2, 64, 8, 8)
    assert torch.allclose(conv(x), F.conv2d(x, conv.weight * conv.scale, conv.bias, padding=1))


def test_pixel_norm_and_minibatch_stddev() -> None:
    x = torch.randn(8, 16, 4, 4) * 5
    assert torch.allclose(pixel_norm(x).square().mean(dim=1), torch.ones(8, 4, 4), atol=1e-4)
    y = minibatch_stddev(x, group=4)
    assert y.shape == (8, 17, 4, 4)
    same = torch.ones(8, 16, 4, 4)
    assert minibatch_stddev(same)[:, -1].abs().max() < 1e-3  # identical samples: no spread


def _pair(res: int = 32) -> tuple[torch.nn.Module, torch.nn.Module]:
    torch.manual_seed(0)
    return build_progan(resolution=res, channels=1, z_dim=32, fmap_base=256, fmap_max=64)


def test_generator_fade_in_leaves_the_old_path_unchanged_at_alpha_zero() -> None:
    G, _ = _pair()
    z = torch.randn(4, 32)
    for level in (2, 3, 4):
        G.set_stage(level - 1, 1.0)
        old = G(z)
        G.set_stage(level, 0.0)
        new = G(z)
        assert new.shape[-1] == 2 * old.shape[-1] == G.current_resolution
        assert torch.allclose(new, F.interpolate(old, scale_factor=2, mode="nearest"), atol=1e-6)
        G.set_stage(level, 0.5)
        half = G(z)
        G.set_stage(level, 1.0)
        full = G(z)
        assert torch.allclose(half, 0.5 * new + 0.5 * full, atol=1e-5)  # a linear blend


def test_discriminator_fade_in_leaves_the_old_path_unchanged_at_alpha_zero() -> None:
    _, D = _pair()
    x = torch.randn(4, 1, 32, 32)
    for level in (2, 3, 4):
        res = 4 * 2 ** (level - 1)
        xi = F.adaptive_avg_pool2d(x, res)
        D.set_stage(level - 1, 1.0)
        old = D(F.avg_pool2d(xi, 2))
        D.set_stage(level, 0.0)
        assert torch.allclose(D(xi), old, atol=1e-5)


def test_inactive_blocks_get_no_gradients() -> None:
    G, D = _pair()
    G.set_stage(2, 1.0)
    D.set_stage(2, 1.0)
    D(G(torch.randn(4, 32))).mean().backward()
    assert G.blocks[0].conv0.weight.grad is not None and G.blocks[1].conv0.weight.grad is None
    assert D.blocks[0].conv0.weight.grad is not None and D.blocks[2].conv0.weight.grad is None


def test_schedule_alpha_ramps_then_holds_per_stage() -> None:
    s = StageSchedule([Stage(4, 10), Stage(8, 20, fade_steps=10), Stage(16, 20, fade_steps=5)])
    assert s.total_steps == 50
    assert [s.at(t).index for t in (1, 10, 11, 30, 31, 50, 99)] == [0, 0, 1, 1, 2, 2, 2]
    assert [s.at(t).alpha for t in (1, 10)] == [1.0, 1.0]
    assert [s.at(t).alpha for t in (11, 15, 20, 21, 30)] == [0.1, 0.5, 1.0, 1.0, 1.0]
    assert [s.at(t).alpha for t in (31, 33, 35)] == [0.2, 0.6, 1.0]
    state = s.state_dict(15)
    assert state == {"step": 15, "stage": 1, "resolution": 8, "alpha": 0.5}
    assert s.check_resume(state) is None
    edited = StageSchedule([Stage(4, 12), Stage(8, 20, fade_steps=10)])
    assert "changed since the checkpoint" in (edited.check_resume(state) or "")


def test_schedule_from_config_in_images_and_its_errors() -> None:
    s = StageSchedule.from_config(
        [
            {"resolution": 4, "images": 1000},
            {"resolution": 8, "images": 2000, "fade_images": 1000, "batch_size": 32},
        ],
        images_per_step={0: 64, 1: 32},
    )
    assert [(st.steps, st.fade_steps, st.batch_size) for st in s.stages] == [(16, 0, None), (63, 32, 32)]
    with pytest.raises(ValueError, match="exactly one of steps or images"):
        StageSchedule.from_config([{"resolution": 4}], {})
    with pytest.raises(ValueError, match="must not decrease"):
        StageSchedule([Stage(8, 1), Stage(4, 1)])
    with pytest.raises(ValueError, match="nothing to fade in"):
        StageSchedule([Stage(4, 10, fade_steps=2)])
    with pytest.raises(ValueError, match="unknown key"):
        StageSchedule.from_config([{"resolution": 4, "steps": 1, "fade": 3}], {})


def test_gan_task_follows_the_stages_and_resets_adam_at_a_new_stage() -> None:
    from bigtrain.train.tasks.gan import GANTask
    from tests.conftest import compose, cpu, declared_manifest

    cfg = compose(
        "experiment=mnist_progan", "data.path=/x", "model.arch.fmap_base=64", "model.arch.fmap_max=16",
        "model.z_dim=8", "data.batch_size=4", "stages.schedule=[{resolution: 4, steps: 2}, "
        "{resolution: 8, steps: 3, fade_steps: 2, batch_size: 2, lr_g: 0.5}]",
    )  # fmt: skip
    torch.manual_seed(0)
    task = GANTask(cfg, declared_manifest(8), torch.device("cpu"), cpu())
    step = 0

    def data():  # noqa: ANN202
        while True:
            res, n = task.data_shape(step)  # what the loop asks the stream for
            yield {"image": torch.rand(n, 1, res, res) * 2 - 1, "label": torch.zeros(n, dtype=torch.long)}

    it = data()
    for step in (1, 2):  # noqa: B007 - data() reads it
        m = task.train_step(step, it)
        assert (m["stage"], m["alpha"], m["resolution"]) == (0, 1.0, 4) and task.images_per_step() == 4
    first = task.G.to_rgb[0].weight
    assert task.opt_G.state[first]["step"] == 2
    step = 3
    m = task.train_step(3, it)  # stage 1 starts: fade-in at alpha 0.5, batch 2, its own G learning rate
    assert (m["stage"], m["alpha"], m["resolution"], m["lr/G"]) == (1, 0.5, 8, 0.5)
    assert task.images_per_step() == 2 and task.opt_G.state[first]["step"] == 1  # Adam started afresh
    assert task.G.current_resolution == task.ema.model.current_resolution == 8  # type: ignore[union-attr]
    state = task.state_dict()["task"]["stages"]
    assert state == {"step": 3, "stage": 1, "resolution": 8, "alpha": 0.5}


def test_resolution_must_be_a_power_of_two() -> None:
    for bad in (2, 24, 48):
        with pytest.raises(ValueError, match="power-of-two resolution >= 4"):
            build_progan(resolution=bad, channels=1, z_dim=8)
