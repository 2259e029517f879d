"""The GAN step's speed levers measured one at a time, in one process, on one compiled model (issue 19).

    python benchmarks/gan_levers.py experiment=imagenet128_biggan batch=256 device=cuda precision=bf16 \\
        channels_last=true compile=true trainer.accumulation=1

Compiling BigGAN-128 takes minutes, and none of these levers changes the compiled graphs, so the
task is built (and compiled) once and the levers are switched on cumulatively between timing
windows, in ``rounds`` interleaved rounds (noise on a shared machine hits every configuration alike):

- ``base``: the step as it was before issue 19: the EMA one tensor at a time (two kernels per
  tensor), the fakes' classes copied from ordinary memory (a copy that waits for the GPU), Adam's
  multi-tensor (foreach) kernels, and every loss and metric read on the host at every step;
- ``+pinned_labels``: the classes go through pinned memory without blocking (bigtrain's code now);
- ``+foreach_ema``: the EMA as one foreach lerp over all tensors (bigtrain's code now);
- ``+fused_adam``: ``optim.d.fused=true optim.g.fused=true``;
- ``+sync_every``: ``trainer.sync_every=N``: losses, gradient norms and logits stay on the GPU and
  are read every N steps (the finite checks too).

``trainer.cudnn_benchmark`` cannot be a window here: cuDNN keeps the algorithm it first chose for a
shape whatever the flag says later, so the windows run with the process's setting (the preset's
default, on, unless ``trainer.cudnn_benchmark=false`` is passed) and ``biggan128.sh next`` compares
the two in separate processes.

The first two are bigtrain's behaviour now and the ``base`` window puts the old code back for the
comparison only; the last two are config keys (``bench biggan_step.py`` with them times the real
code path end to end). Prints one JSON line last: seconds per iteration, img/s, peak GiB and the
speed-up over ``base`` of each configuration (median over rounds), and the first-iteration losses.
"""

from __future__ import annotations

import statistics
import time
import types
from typing import Any

import torch
from _common import emit, parse_args
from task_step import build

from bigtrain.train.optim import build_optimizer

LEVERS = ("base", "+pinned_labels", "+foreach_ema", "+fused_adam", "+sync_every")


def _per_tensor_ema(ema: Any, model: torch.nn.Module, step: int) -> None:
    """The EMA update before issue 19, for the ``base`` window: ``lerp_``/``copy_`` tensor by tensor."""
    d = ema.current_decay(step)
    with torch.no_grad():
        for e, p in zip(ema.model.parameters(), model.parameters(), strict=True):
            e.copy_(p) if d == 0.0 else e.lerp_(p.to(e.dtype), 1.0 - d)
        average = ema.buffers == "average" and d > 0.0
        for e, b in zip(ema.model.buffers(), model.buffers(), strict=True):
            e.lerp_(b.to(e.dtype), 1.0 - d) if average and e.is_floating_point() else e.copy_(b)


def _blocking_labels(task: Any, n: int) -> torch.Tensor | None:
    """The fakes' classes as before issue 19: a copy from pageable memory, which waits for the GPU."""
    if not task.num_classes:
        return None
    return torch.randint(0, task.num_classes, (n,)).to(task.device)


class Levers:
    """Switches each lever of a built GAN task on or off in place."""

    def __init__(self, task: Any, cfg: Any, sync_every: int) -> None:
        self.task, self.sync_every = task, sync_every
        self.updates = {"d": task.d_update, "g": task.g_update}
        self.plain = {k: u.optimizer for k, u in self.updates.items()}
        self.fused = {}
        for k, u in self.updates.items():
            hp = getattr(cfg.optim, k)
            fused_cfg = types.SimpleNamespace(**{**dict(hp), "fused": True})
            self.fused[k] = build_optimizer(u.params, fused_cfg)
        self.ema_update = task.ema.update if task.ema is not None else None
        self.labels = task._labels

    def set(self, level: int) -> None:
        on = set(LEVERS[1 : level + 1])
        t = self.task
        t.settle()  # nothing pending from the window before
        t._labels = self.labels if "+pinned_labels" in on else types.MethodType(_blocking_labels, t)
        if t.ema is not None:
            t.ema.update = (
                self.ema_update if "+foreach_ema" in on else types.MethodType(_per_tensor_ema, t.ema)
            )
        for k, u in self.updates.items():
            u.optimizer = (self.fused if "+fused_adam" in on else self.plain)[k]
        t.guard.every = self.sync_every if "+sync_every" in on else 1


def main() -> None:
    a = parse_args(
        {
            "experiment": "imagenet128_biggan",
            "batch": 256,
            "iters": 8,
            "warmup": 3,
            "rounds": 2,
            "device": "cuda",
            "precision": "bf16",
            "channels_last": True,
            "compile": True,
            "sync_every": 100,
        }
    )
    cfg, task, batch, step = build(a)
    cuda = a["device"].startswith("cuda")

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize()

    def data():  # noqa: ANN202
        while True:
            yield batch

    it = data()
    levers = Levers(task, cfg, a["sync_every"])
    levers.set(0)
    t0 = time.perf_counter()
    first = task.train_step(step, it)
    first_losses = {k.removeprefix("loss/"): float(v) for k, v in first.items() if k.startswith("loss/")}
    first_iter_s = time.perf_counter() - t0
    step += 1
    for level in range(len(LEVERS)):  # every configuration warms up once (fused Adam's first step...)
        levers.set(level)
        for _ in range(a["warmup"]):
            task.train_step(step, it)
            step += 1
    times: dict[str, list[float]] = {name: [] for name in LEVERS}
    peaks: dict[str, float] = {}
    for _ in range(a["rounds"]):
        for level, name in enumerate(LEVERS):
            levers.set(level)
            task.train_step(step, it)  # one untimed step after each switch
            step += 1
            sync()
            if cuda:
                torch.cuda.reset_peak_memory_stats()
            t = time.perf_counter()
            for _ in range(a["iters"]):
                task.train_step(step, it)
                step += 1
            task.settle()
            sync()
            times[name].append((time.perf_counter() - t) / a["iters"])
            peaks[name] = torch.cuda.max_memory_allocated() / 2**30 if cuda else 0.0
    images = task.images_per_step()
    sec = {name: statistics.median(v) for name, v in times.items()}
    emit(
        {
            "bench": "gan_levers",
            "experiment": a["experiment"],
            "device": torch.cuda.get_device_name() if cuda else "cpu",
            "precision": a["precision"],
            "channels_last": a["channels_last"],
            "compile": a["compile"],
            "batch": a["batch"],
            "sync_every": a["sync_every"],
            "first_iter_s": round(first_iter_s, 2),
            "first_losses": first_losses,
            "sec_per_iter": {k: round(v, 5) for k, v in sec.items()},
            "img_per_s": {k: round(images / v, 1) for k, v in sec.items()},
            "speedup_vs_base": {k: round(sec["base"] / v, 3) for k, v in sec.items()},
            "peak_mem_gib": {k: round(v, 2) for k, v in peaks.items()},
            "rounds": a["rounds"],
            "overrides": a["overrides"],
        }
    )


if __name__ == "__main__":
    main()
