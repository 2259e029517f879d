"""The model FLOPs of one training step of any task, as its preset trains it, split into a part that
grows with the batch (per image) and a fixed part (spectral norm's power iterations, BigGAN's
orthogonal penalty: both act on weights, not on images). Counted with
``torch.utils.flop_counter.FlopCounterMode`` (matmuls, convolutions, attention, forward and
backward; elementwise work such as BatchNorm or the optimizer counts zero, as in every MFU) over one
fp32 eager step on the CPU at batches 1 and 2: FLOPs are linear in the batch, so two points give
both parts exactly, in seconds, whatever batch the step is timed at.

    python benchmarks/step_flops.py experiment=imagenet128_biggan [trainer.accumulation=1 ...]

Prints one JSON line last: ``gflop_per_image``, ``gflop_fixed`` and the per-operator split.
``task_step.py flops=true`` (``biggan_step.py``) uses :func:`step_flops` to report the timed step's
model TFLOP/s and MFU over the card's measured matmul rate.
"""

from __future__ import annotations

from typing import Any

import torch
from _common import emit, parse_args
from torch.utils.flop_counter import FlopCounterMode

from bigtrain.distributed import LocalAccelerator
from bigtrain.train.compose import compose_config
from bigtrain.train.task import build_task


def _count(experiment: str, overrides: list[str], batch: int) -> dict[str, int]:
    """FLOPs per operator of one training step (the second: the first may set things up)."""
    import task_step  # the synthetic batch of the preset's declared shape

    cfg = compose_config(
        [
            f"experiment={experiment}",
            "data.path=/unused",
            f"data.batch_size={batch}",
            "data.global_batch_size=0",
            "trainer.precision=no",
            "trainer.compile=false",
            "trainer.channels_last=false",
            *overrides,
        ]
    )
    torch.manual_seed(0)
    device = torch.device("cpu")
    manifest, data = task_step._synthetic(cfg, batch, device)
    task = build_task(cfg, manifest, device, LocalAccelerator(device, "no"))
    stages = task.stage_schedule()
    first = (
        1
        if stages is None
        else stages.total_steps - stages.stages[-1].steps + stages.stages[-1].fade_steps + 1
    )

    def batches():  # noqa: ANN202
        while True:
            yield data

    it = batches()
    task.train_step(first, it)
    with FlopCounterMode(display=False) as counter:
        task.train_step(first + 1, it)
    return {str(op): int(n) for op, n in counter.get_flop_counts()["Global"].items()}


def step_flops(experiment: str, overrides: list[str]) -> dict[str, Any]:
    """``{"per_image": F, "fixed": F0, "by_op": {op: per-image FLOPs}}`` of one training step: the
    step at ``data.batch_size=B`` does ``F0 + B * F`` model FLOPs (F covers every micro-batch and D
    step that one unit of ``data.batch_size`` goes through, so the recipe's accumulation and
    ``loss.d_steps`` count as the benchmark sets them)."""
    keep = [
        o for o in overrides if not o.startswith(("trainer.precision", "trainer.compile", "data.batch_size"))
    ]
    one, two = _count(experiment, keep, 1), _count(experiment, keep, 2)
    by_op = {op: two.get(op, 0) - one.get(op, 0) for op in sorted(set(one) | set(two))}
    per = sum(by_op.values())
    fixed = sum(one.values()) - per
    return {"per_image": per, "fixed": fixed, "by_op": {k: v for k, v in by_op.items() if v}}


def main() -> None:
    a = parse_args({"experiment": "imagenet128_biggan"})
    torch.set_num_threads(max(1, torch.get_num_threads()))
    f = step_flops(a["experiment"], a["overrides"])
    emit(
        {
            "bench": "step_flops",
            "experiment": a["experiment"],
            "gflop_per_image": round(f["per_image"] / 1e9, 3),
            "gflop_fixed": round(f["fixed"] / 1e9, 3),
            "gflop_per_image_by_op": {k: round(v / 1e9, 3) for k, v in f["by_op"].items()},
            "overrides": a["overrides"],
        }
    )


if __name__ == "__main__":
    main()
