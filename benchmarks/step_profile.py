"""Where one training step's time goes: the step of ``task_step.py`` (same arguments) under
``torch.profiler``, its kernels summed per iteration and grouped by kind (convolution, matmul,
attention, normalisation, fused elementwise, optimizer, copies), so the next speed lever is chosen
from a measurement rather than a guess (issue 19: BigGAN-128's step at 35% of the card's matmul
rate, where does the other 65% go?).

    python benchmarks/step_profile.py experiment=imagenet128_biggan batch=256 device=cuda \\
        precision=bf16 channels_last=true compile=true trainer.accumulation=1 [iters=5 top=25]

On a GPU the kernels' device time is counted (what the card spends; gaps in between, where the GPU
waits for the host, show as ``idle_ms``); on the CPU each operator's own CPU time. Prints one JSON
line last: ``step_ms``, ``busy_ms`` per iteration, the kinds' milliseconds and shares, the kernel launches (CPU:
operator calls) per iteration and the ``top`` kernels. ``trace=PATH`` also writes a Chrome trace (chrome://tracing, Perfetto).
"""

from __future__ import annotations

import re
import time
from typing import Any

import torch
from _common import emit, parse_args
from task_step import build
from torch.profiler import ProfilerActivity, profile

# Kernel name patterns, tried in order: cuDNN / CUTLASS / Triton / ATen names as they appear on a
# GPU, and ATen operator names on the CPU.
KINDS: tuple[tuple[str, str], ...] = (
    # first: Inductor names its fused kernels after the ops they fuse (triton_poi_fused_convolution_
    # relu_0 is the elementwise epilogue of a library convolution, not the convolution)
    ("triton_reduction", r"triton_(red|per)_"),
    ("triton_pointwise", r"triton_"),
    ("attention", r"fmha|flash|attention|softmax"),
    ("optimizer", r"adam|multi_tensor|foreach|fused_sgd"),
    ("normalisation", r"batch_norm|batchnorm|bn_fw|bn_bw|native_layer_norm|welford|_norm_"),
    ("convolution", r"conv|cudnn|implicit|dgrad|wgrad|fprop|xmma_|sm\d+_xmma|nhwc"),
    ("matmul", r"gemm|cutlass|matmul|\bmm\b|addmm|bmm|nvjet|cublas"),
    ("pooling", r"pool"),
    ("copy", r"copy|memcpy|memset|cat|contiguous|transpose|fill"),
)


def kind_of(name: str) -> str:
    low = name.lower()
    for kind, pattern in KINDS:
        if re.search(pattern, low):
            return kind
    return "other"


def main() -> None:
    a = parse_args(
        {
            "experiment": "mnist_dcgan", "batch": 64, "iters": 5, "warmup": 3, "device": "cpu",
            "precision": "no", "channels_last": False, "compile": False, "top": 20, "trace": "",
        }
    )  # fmt: skip
    _, task, batch, step = build(a)
    cuda = a["device"].startswith("cuda")

    def data():  # noqa: ANN202
        while True:
            yield batch

    it = data()
    for _ in range(a["warmup"]):  # compilation and autotuning happen here, outside the profile
        task.train_step(step, it)
        step += 1
    task.settle()
    if cuda:
        torch.cuda.synchronize()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        t = time.perf_counter()
        for _ in range(a["iters"]):
            task.train_step(step, it)
            step += 1
        task.settle()
        if cuda:
            torch.cuda.synchronize()
        wall = time.perf_counter() - t
    if a["trace"]:
        prof.export_chrome_trace(a["trace"])
    emit({"bench": "step_profile", **summarise(prof, cuda, a["iters"], wall, a["top"]), **_what(a)})


def summarise(prof: Any, cuda: bool, iters: int, wall: float, top: int) -> dict[str, Any]:
    """Per-iteration milliseconds by kind and for the ``top`` kernels. On a GPU: kernels only
    (device events); on the CPU: each operator's self time, so nested calls are not counted twice."""
    rows = []
    for e in prof.key_averages():
        ms = (e.self_device_time_total if cuda else e.self_cpu_time_total) / 1000 / iters
        if ms <= 0 or (cuda and e.device_type != torch.autograd.DeviceType.CUDA):
            continue
        if not cuda and e.key.startswith(("ProfilerStep", "[memory]")):
            continue
        rows.append((e.key, ms, e.count // iters))
    busy = sum(ms for _, ms, _ in rows)
    kinds: dict[str, float] = {}
    for name, ms, _ in rows:
        kinds[kind_of(name)] = kinds.get(kind_of(name), 0.0) + ms
    step_ms = wall / iters * 1000
    rows.sort(key=lambda r: -r[1])
    return {
        "step_ms": round(step_ms, 2),
        "busy_ms": round(busy, 2),
        "idle_ms": round(max(0.0, step_ms - busy), 2) if cuda else None,
        "kinds_ms": {k: round(v, 2) for k, v in sorted(kinds.items(), key=lambda kv: -kv[1])},
        "kinds_share": {k: round(v / busy, 3) for k, v in sorted(kinds.items(), key=lambda kv: -kv[1])},
        "kernels": len(rows),
        "calls_per_iter": sum(n for _, _, n in rows),
        "top": [
            {"name": n[:120], "ms": round(ms, 3), "calls": c, "kind": kind_of(n)} for n, ms, c in rows[:top]
        ],
    }


def _what(a: dict[str, Any]) -> dict[str, Any]:
    keys = ("experiment", "device", "precision", "channels_last", "compile", "batch", "iters", "overrides")
    out = {k: a[k] for k in keys}
    if a["device"].startswith("cuda"):
        out["device"] = torch.cuda.get_device_name()
    return out


if __name__ == "__main__":
    main()
