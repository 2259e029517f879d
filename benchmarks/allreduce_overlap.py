"""Gradient averaging with and without overlap (issue 19, point 3): full GAN training steps (4 D steps,
G's step through the frozen D, EMA) in ``nprocs`` gloo processes on the CPU, the gradients averaged
either after each backward (``all_reduce_grads``) or in buckets sent while backward continues
(``OptimizerStep(overlap=True)``, ``bigtrain.distributed.overlap``).

    python benchmarks/allreduce_overlap.py [experiment=cifar10_biggan] [batch=25] [rounds=2] [iters=1]
        [warmup=1] [bucket_mb=25] [nprocs=2] [model.d_width=32 ...]   (dotted keys: config overrides)

``batch`` is per process (cifar10_biggan's global batch of 50 over 2 processes). One task is built
per process and its two optimizer steps are switched between the two ways between timing windows
(same weights, same data); the windows alternate in ``rounds`` rounds whose order flips every
round (off, on, on, off, ...), so noise on a shared machine and a slow drift hit both alike. A
window's time is the slowest rank's (the job waits for it). Each process runs one thread
(``OMP_NUM_THREADS=1``). Prints one JSON line last: seconds per step of each window and way, their
medians, ``ratio`` (with / without, below 1 is faster), how many buckets went while backward ran,
``finish_ms``, the mean time an update spent in ``GradBuckets.finish`` (the communication backward
did not hide, plus any wait for a slower rank to end its backward, which the way without overlap
waits for too), and ``reduce_ms``, one flat all-reduce of D's gradients alone, ranks in step (the
wire time each of D's updates has to hide).

On the CPU the processes' compute and gloo's communication share the same cores, so overlap can
gain only where a rank waits on the wire, not on its peer's compute.
"""

from __future__ import annotations

import json
import os
import socket
import statistics
import tempfile
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from _common import emit, parse_args
from task_step import _synthetic

from bigtrain.distributed import LocalAccelerator, all_reduce_grads
from bigtrain.train.compose import compose_config
from bigtrain.train.step import OptimizerStep
from bigtrain.train.task import build_task

DEFAULTS: dict[str, Any] = {
    "experiment": "cifar10_biggan",
    "batch": 25,
    "rounds": 2,
    "iters": 1,
    "warmup": 1,
    "bucket_mb": 25.0,
    "nprocs": 2,
}


def _twin(update: OptimizerStep, overlap: bool, bucket_mb: float) -> OptimizerStep:
    """The same optimizer step (optimizer, scaler, guard, options), averaging with or without overlap."""
    return OptimizerStep(
        update.name,
        update.params,
        update.optimizer,
        update.guard,
        hparams=update.hparams,
        scaler=update.scaler,
        accumulation=update.accumulation,
        clip=update.clip,
        broadcast=update.broadcast,
        overlap=overlap,
        bucket_mb=bucket_mb,
    )


def _slowest(seconds: float) -> float:
    t = torch.tensor([seconds], dtype=torch.float64)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return float(t)


def _worker(rank: int, a: dict[str, Any], port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=a["nprocs"], timeout=timedelta(seconds=600))
    try:
        cfg = compose_config(
            [
                f"experiment={a['experiment']}",
                "data.path=/unused",
                f"data.batch_size={a['batch']}",
                "data.global_batch_size=0",
                "trainer.precision=no",
                *a["overrides"],
            ]
        )
        torch.manual_seed(0)
        device = torch.device("cpu")
        manifest, batch = _synthetic(cfg, a["batch"], device)
        task = build_task(cfg, manifest, device, LocalAccelerator(device))
        ways = {
            overlap: {
                net: _twin(getattr(task, f"{net}_update"), overlap, a["bucket_mb"]) for net in ("d", "g")
            }
            for overlap in (False, True)
        }

        def use(overlap: bool) -> None:
            for net, update in ways[overlap].items():
                setattr(task, f"{net}_update", update)

        def data():  # noqa: ANN202
            while True:
                yield batch

        it, step = data(), 1
        for overlap in (False, True):  # warm-up: both ways
            use(overlap)
            for _ in range(a["warmup"]):
                task.train_step(step, it)
                step += 1
        windows: dict[str, list[float]] = {"off": [], "on": []}
        for r in range(a["rounds"]):
            for overlap in (False, True) if r % 2 == 0 else (True, False):
                use(overlap)
                dist.barrier()
                t0 = time.perf_counter()
                for _ in range(a["iters"]):
                    task.train_step(step, it)
                    step += 1
                sec = _slowest((time.perf_counter() - t0) / a["iters"])
                windows["on" if overlap else "off"].append(round(sec, 4))
        # one flat all-reduce of D's gradients (left by its last step), alone: the wire time to hide
        d_params = ways[False]["d"].params
        reps = 5
        dist.barrier()
        t0 = time.perf_counter()
        for _ in range(reps):
            all_reduce_grads(d_params)
        reduce_ms = _slowest((time.perf_counter() - t0) / reps) * 1e3
        if rank == 0:
            buckets = {}
            for net, u in ways[True].items():
                gb = u._buckets
                assert gb is not None
                buckets[net.upper()] = {
                    "buckets": len(gb.buckets),
                    **gb.stats,
                    "finish_ms": round(1e3 * gb.finish_seconds / max(1, gb.finish_calls), 2),
                }
            result = {
                "windows_s_per_step": windows,
                "buckets": buckets,
                "reduce_ms": round(reduce_ms, 2),
                "params": {
                    "G": sum(p.numel() for p in task.G.parameters()),
                    "D": sum(p.numel() for p in task.D.parameters()),
                },
                "d_steps": int(cfg.loss.d_steps),
                "accumulation": int(cfg.trainer.accumulation),
            }
            Path(out).write_text(json.dumps(result))
    finally:
        dist.destroy_process_group()


def main() -> None:
    a = parse_args(DEFAULTS)
    os.environ["OMP_NUM_THREADS"] = "1"  # inherited by the spawned processes before torch starts
    with socket.socket() as s:  # a free port on loopback for the rendezvous
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with tempfile.TemporaryDirectory() as tmp:
        out = str(Path(tmp) / "result.json")
        mp.spawn(_worker, args=(a, port, out), nprocs=a["nprocs"], join=True)
        r = json.loads(Path(out).read_text())
    off = statistics.median(r["windows_s_per_step"]["off"])
    on = statistics.median(r["windows_s_per_step"]["on"])
    emit(
        {
            "bench": "allreduce_overlap",
            "experiment": a["experiment"],
            "device": "cpu",
            "backend": "gloo",
            "nprocs": a["nprocs"],
            "batch_per_process": a["batch"],
            "rounds": a["rounds"],
            "iters_per_window": a["iters"],
            "bucket_mb": a["bucket_mb"],
            **r,
            "s_per_step_off": round(off, 4),
            "s_per_step_on": round(on, 4),
            "ratio": round(on / off, 4),
            "overrides": a["overrides"],
        }
    )


if __name__ == "__main__":
    main()
