"""The one place that knows about ranks, process groups and Accelerate.

Everything else calls ``is_main()``, ``barrier()``, ``all_reduce_grads()`` and friends.

Why GAN gradients are averaged here rather than by DDP: a GAN step runs a network several times per
backward (D on real and on fake, the gradient penalty's double backward, G's loss through D).
DDP's reducer expects one forward per backward and fails or needs ``find_unused_parameters`` for
that. One coalesced all-reduce of each network's gradients after its backward keeps every rank's
weights bit-identical with no such constraint; BatchNorm running statistics are broadcast from rank
0 after each step, as DDP's ``broadcast_buffers`` would. ``bigtrain.distributed.overlap`` computes
the same average in buckets sent while backward still runs, as DDP overlaps its reduction
(``OptimizerStep(overlap=True)``).
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterable
from typing import Any

import torch
import torch.distributed as dist
from torch import nn


def build_accelerator(precision: str = "no", cpu: bool | None = None, timeout_s: float = 1800.0) -> Any:
    """An Accelerate ``Accelerator``: device, mixed precision, and the process group under a launcher.

    ``timeout_s`` bounds every collective: when a peer hangs (a stuck node, a dead NFS mount) the
    other ranks fail with an error after that long instead of waiting forever. A peer that *dies*
    is noticed sooner: its sockets close and gloo/NCCL raise at once, or the launcher stops the rest.
    """
    from datetime import timedelta

    from accelerate import Accelerator
    from accelerate.utils import InitProcessGroupKwargs

    from bigtrain.distributed.slurm import init_env_from_slurm

    init_env_from_slurm()  # `srun -n N python -m bigtrain ...`: rendezvous from SLURM's variables
    if cpu is None:
        cpu = not torch.cuda.is_available()
    kwargs = InitProcessGroupKwargs(timeout=timedelta(seconds=timeout_s))
    return Accelerator(mixed_precision=precision, cpu=cpu, kwargs_handlers=[kwargs])


class LocalAccelerator:
    """The slice of an Accelerator that tasks use (``device``, ``autocast()``), for one process that
    must not start a process group: ``bigtrain info`` (the meta device), benchmarks, tests."""

    def __init__(self, device: torch.device | str = "cpu", precision: str = "no") -> None:
        self.device = torch.device(device)
        self.precision = "no" if precision in ("no", "fp32") else precision

    def autocast(self) -> Any:
        kind = self.device.type if self.device.type in ("cuda", "cpu") else "cpu"
        if self.precision == "no":
            return torch.autocast(kind, enabled=False)
        return torch.autocast(kind, dtype=torch.float16 if self.precision == "fp16" else torch.bfloat16)


def is_dist() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_dist() else int(os.environ.get("RANK", "0"))


def world_size() -> int:
    return dist.get_world_size() if is_dist() else 1


def is_main() -> bool:
    return rank() == 0


def print0(*args: Any, **kwargs: Any) -> None:
    if is_main():
        print(*args, **kwargs, flush=True)


_HAD_GROUP = False


def shutdown(clean: bool) -> None:
    """End the process group: after a barrier when the run ended well (so no rank exits while
    another still talks to it), at once after an error (a peer may be gone)."""
    global _HAD_GROUP
    if not is_dist():
        return
    _HAD_GROUP = True
    if clean or world_size() == 1:  # alone, a barrier cannot hang; it lets gloo's queued work finish
        dist.barrier()
    dist.destroy_process_group()


def had_process_group() -> bool:
    """Whether this process ran collectives (and so may still hold gloo/NCCL C++ threads)."""
    return _HAD_GROUP or is_dist()


def exit_now(code: int | str | None) -> None:
    """Leave the process without the interpreter's finalization, once everything is flushed.

    Why: gloo's worker threads can still hold the last collective's tensors when Python starts
    tearing itself down; freeing them then needs the GIL, which a finalizing interpreter answers by
    ending the thread, and the C++ runtime turns that into ``terminate called without an active
    exception`` and SIGABRT (pytorch/pytorch#179291 describes it). A rank that finished its work, saved
    its checkpoint and closed its tracker then still "fails", and torchrun or SLURM marks the whole
    job failed. Seen about once in three 2-rank CI runs. Nothing is left to finalize by then: the
    loader's workers are joined, files closed, the tracker ended; logs and stdio are flushed here.
    """
    import logging

    if isinstance(code, str):  # sys.exit("message") prints the message and exits 1
        print(code, file=sys.stderr)
        code = 1
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):  # a closed pipe: nothing more can be written
            stream.flush()
    os._exit(int(code or 0))


def barrier() -> None:
    if is_dist():
        dist.barrier()


def broadcast_module(module: nn.Module) -> None:
    """Make every rank start from rank 0's parameters and buffers."""
    if not is_dist():
        return
    for t in itertools_chain(module.parameters(), module.buffers()):
        dist.broadcast(t.data, src=0)


def broadcast_buffers(module: nn.Module) -> None:
    if not is_dist():
        return
    for b in module.buffers():
        dist.broadcast(b.data, src=0)


def itertools_chain(*its: Iterable[torch.Tensor]) -> Iterable[torch.Tensor]:
    for it in its:
        yield from it


def all_reduce_grads(params: Iterable[nn.Parameter]) -> None:
    """Average gradients over ranks with one flat all-reduce (missing grads count as zero, and a
    parameter without a gradient here keeps none: the blocks a growing network has not reached
    yet get no optimizer update, with one process or many)."""
    if not is_dist():
        return
    params = [p for p in params if p.requires_grad]
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    flat.div_(world_size())
    offset = 0
    for p, g in zip(params, grads, strict=True):
        n = g.numel()
        if p.grad is not None:
            p.grad = flat[offset : offset + n].view_as(p).clone()
        offset += n


def all_reduce_mean(values: torch.Tensor) -> torch.Tensor:
    """Mean of a small tensor over ranks (used for losses, so a NaN on any rank is seen by all)."""
    if not is_dist():
        return values
    out = values.detach().clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out / world_size()


def all_reduce_sum(values: torch.Tensor) -> torch.Tensor:
    """Sum of a tensor over ranks (a new tensor; e.g. codebook usage counts and EMA sums)."""
    if not is_dist():
        return values
    out = values.detach().clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out


def broadcast_tensor(values: torch.Tensor) -> torch.Tensor:
    """Rank 0's tensor on every rank (e.g. which encoder outputs restart dead codes)."""
    if not is_dist():
        return values
    out = values.detach().clone().contiguous()
    dist.broadcast(out, src=0)
    return out


def all_gather_objects(obj: Any) -> list[Any]:
    if not is_dist():
        return [obj]
    out: list[Any] = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out
