"""Signals become a request that every rank acts on together at a step boundary.

SLURM warns a job before its time limit with the signal asked for by ``--signal`` (bigtrain's
sbatch scripts use SIGUSR2: NCCL may use SIGUSR1, and submitit uses USR2 too), and ends it (scancel,
node drain, the time limit) with SIGTERM. Saving inside a signal handler is unsafe: the handler
may run in the middle of a collective or an optimizer step, and other ranks may not have the
signal at all. So the handler only records what was asked for; the training loop calls
:meth:`Preemption.poll` after each step, which agrees across ranks (the strongest request on any
rank wins, one tiny all-reduce), and then all ranks save a checkpoint together. A requeue request
makes rank 0 call ``scontrol requeue`` afterwards; a stop request only saves and exits.
"""

from __future__ import annotations

import enum
import logging
import signal
from collections.abc import Iterable
from types import FrameType
from typing import Any

import torch
import torch.distributed as dist

log = logging.getLogger("bigtrain")


class Request(enum.IntEnum):
    """Ordered by strength: when ranks disagree the larger value wins."""

    NONE = 0
    REQUEUE = 1  # save, requeue the SLURM job, exit
    STOP = 2  # save and exit (scancel / SIGTERM): no requeue


def parse_signal(name: str) -> signal.Signals:
    """``"USR2"``, ``"SIGUSR2"`` or ``"12"`` -> ``signal.SIGUSR2``."""
    text = str(name).strip().upper()
    if text.isdigit():
        return signal.Signals(int(text))
    if not text.startswith("SIG"):
        text = "SIG" + text
    try:
        return signal.Signals[text]
    except KeyError:
        raise ValueError(f"unknown signal {name!r}") from None


class Preemption:
    """Installs handlers for the requeue and stop signals; :meth:`poll` says what to do now."""

    def __init__(self, requeue_signals: Iterable[str] = ("USR2",), stop_signals: Iterable[str] = ("TERM",)):
        self.requeue_signals = [parse_signal(s) for s in requeue_signals]
        self.stop_signals = [parse_signal(s) for s in stop_signals]
        self.pending = Request.NONE
        self.received: list[str] = []
        self._previous: dict[signal.Signals, Any] = {}

    def install(self) -> Preemption:
        for sig in [*self.requeue_signals, *self.stop_signals]:
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def uninstall(self) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous.clear()

    def _handle(self, signum: int, _frame: FrameType | None) -> None:
        sig = signal.Signals(signum)
        self.received.append(sig.name)
        request = Request.STOP if sig in self.stop_signals else Request.REQUEUE
        self.pending = max(self.pending, request)

    def poll(self) -> Request:
        """The request all ranks agree on (a collective: every rank must call it at the same step)."""
        value = int(self.pending)
        if dist.is_available() and dist.is_initialized():
            flag = torch.tensor([value], dtype=torch.int32)
            if dist.get_backend() == "nccl":
                flag = flag.cuda()
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            value = int(flag.item())
        return Request(value)


__all__ = ["Preemption", "Request", "parse_signal"]
