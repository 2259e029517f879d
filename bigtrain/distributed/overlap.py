"""Gradient averaging that overlaps the backward pass: buckets filled by gradient hooks and reduced
asynchronously while backward continues, as DDP's reducer does, without DDP's one-forward-per-backward
contract (see ``bigtrain.distributed`` for why the GAN tasks do not use DDP).

:func:`bigtrain.distributed.all_reduce_grads` averages after backward with one flat all-reduce, so
the network's whole gradient crosses the wire while nothing else runs. :class:`GradBuckets` splits
the parameters into buckets (about ``bucket_mb`` MiB each) and sends a bucket as soon as the
gradients of all its parameters are final, while autograd still computes the earlier layers'. The
result is the same average: each bucket is the same elementwise ``SUM`` then division by the world
size, so with two ranks (``a + b == b + a``) every gradient is bit-identical to ``all_reduce_grads``.
With more ranks every rank still gets the same result, but the summation order of a collective can
depend on where an element sits in its buffer, so the last bit may differ from the single flat
all-reduce (as it does between DDP runs with different bucket sizes).

What the hooks can rely on, measured with torch 2.14 (``Tensor.register_post_accumulate_grad_hook``):

* The hook fires once per leaf per ``backward()``, after autograd summed every path into that
  parameter: a network run twice in one forward (D on real and on fake, split or concatenated), the
  gradient penalty's double backward (``autograd.grad(..., create_graph=True)`` then ``backward``)
  each fire it exactly once. So "all of a bucket's parameters fired" means its gradients are final
  for this backward.
* ``torch.autograd.grad`` with respect to a parameter (the tokenizer's adaptive weight) never fires
  it: nothing is accumulated into ``.grad``.
* A parameter with ``requires_grad=False`` during the backward (a frozen discriminator under the
  generator's step, the EMA codebook) never fires; registering a hook on one raises, so hooks are
  added when a parameter first requires a gradient at :meth:`GradBuckets.arm`.
* Re-entrant activation checkpointing (``use_reentrant=True``) runs a nested backward per segment,
  so a parameter used in two checkpointed segments fires twice in one outer backward; the
  non-re-entrant kind fires once. A second firing after its bucket was sent makes that bucket
  *stale*: :meth:`GradBuckets.finish` reduces it again from the final gradients.

Micro-batches: with ``trainer.accumulation`` > 1 each micro-batch has its own backward and the
gradients are final only after the last one. The owner calls :meth:`GradBuckets.arm` just before
the last backward; before that the hooks do nothing (DDP's ``no_sync``).

Ordering, the one thing that can hang a job: ranks pair collectives by the order in which each
issues them, so every rank must issue the same reductions in the same order. The rules that give
this, whatever each rank's backward computes:

1. the buckets are laid out from the parameter list alone, at construction (the same model code,
   the same layout on every rank);
2. bucket *k* is sent only after buckets ``0..k-1`` (in index order), when it and all buckets before
   it are complete; :meth:`GradBuckets.finish` sends the rest in index order. So every rank issues
   bucket 0, 1, ..., n-1 exactly once per step, though a bucket one rank sends during backward
   another may send from ``finish`` (a parameter unused on one rank only, a growing network's
   unreached block): the order is the same, only the time differs;
3. a bucket's buffer holds every parameter that requires a gradient (zeros for one without a
   gradient), so its size depends on ``requires_grad``, which the task's code sets alike on every
   rank, never on which gradients happened to arrive;
4. stale buckets are re-reduced in index order after the others: this needs every rank to see the
   same staleness, i.e. the same number of backward passes after ``arm`` and the same checkpointing
   code, which holds when the ranks run the same code.

The caller should call :meth:`GradBuckets.finish` before any other collective of its step (the
optimizer step calls it before its loss check's all-reduce), so that no other collective lands
between one rank's in-backward sends and another's in-``finish`` sends. A model that issues
collectives inside its own backward (cross-replica BatchNorm's gradient all-reduce) interleaves
them with the bucket sends: their relative order is then the same on every rank when every rank's
backward reaches the same parameters, which holds for every bigtrain task (data-dependent parameter
use is the case to avoid with overlap and such a model).

Why in index order rather than as buckets complete: completion order is deterministic for one
graph, but rule 2 keeps the collective order independent of it. The cost: a bucket waiting for a
parameter that gets no gradient (an unused embedding, a growing network's unreached block) holds
back the buckets after it until ``finish``; the buckets are filled from the last registered
parameters, whose gradients arrive first, so for a network that uses all its parameters the
buckets complete in index order anyway.
"""

from __future__ import annotations

import time
import weakref
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.hooks import RemovableHandle

from bigtrain.distributed import is_dist, world_size

#: DDP's defaults: 25 MiB buckets, and a small first one (``dist._DEFAULT_FIRST_BUCKET_BYTES``) so
#: that the first reduction starts as soon as the last layers' gradients are in, not after 25 MiB
DEFAULT_BUCKET_MB = 25.0
DEFAULT_FIRST_BUCKET_MB = 1.0


@dataclass(eq=False)
class _Bucket:
    """Parameters reduced together (one dtype, one device), and one step's progress."""

    index: int
    params: list[nn.Parameter]
    # -- this step (set by GradBuckets.arm, cleared by finish/reset) --
    active: list[nn.Parameter] = field(default_factory=list)  # those that required a gradient
    waiting: set[int] = field(default_factory=set)  # ids of active parameters yet to fire
    launched: bool = False
    stale: bool = False  # a gradient changed after the bucket was sent
    flat: torch.Tensor | None = None
    work: Any = None  # the async all-reduce's Work


class GradBuckets:
    """Average ``params``' gradients over ranks, bucket by bucket during the last backward.

    Use per optimizer step: :meth:`reset` (with the gradients' zeroing), the micro-batches'
    backward passes with :meth:`arm` called just before the last one, then :meth:`finish` before
    the optimizer reads the gradients. Equivalent to ``all_reduce_grads(params)`` after the last
    backward: a parameter whose ``.grad`` is None keeps None (and counts as zeros), one that does
    not require a gradient is left alone. Every method is a no-op while no process group is up.

    ``bucket_mb``: a bucket's size (MiB, as DDP's ``bucket_cap_mb``); ``first_bucket_mb``: the
    first one's (the last layers'), small so that communication starts early. A bucket closes at
    the parameter that brings it to its size (so one large parameter can exceed it), and when the
    dtype or device changes. :attr:`stats` counts buckets sent during backward, from
    ``finish`` and re-reduced because stale, since construction; :attr:`finish_seconds` is the
    wall time spent in ``finish`` (over :attr:`finish_calls` calls): the communication that
    backward did not hide.
    """

    def __init__(
        self,
        params: Iterable[nn.Parameter],
        bucket_mb: float = DEFAULT_BUCKET_MB,
        first_bucket_mb: float = DEFAULT_FIRST_BUCKET_MB,
    ) -> None:
        unique: dict[int, nn.Parameter] = {}
        for p in params:
            unique.setdefault(id(p), p)
        self.params = list(unique.values())
        self.buckets = self._layout(self.params, bucket_mb, first_bucket_mb)
        self._bucket_of = {id(p): b for b in self.buckets for p in b.params}
        self._hooks: dict[int, RemovableHandle] = {}
        self._armed = False
        self._next = 0  # the first bucket not sent yet this step (they go in index order)
        self.stats = {"in_backward": 0, "in_finish": 0, "rereduced": 0}
        self.finish_seconds, self.finish_calls = 0.0, 0
        # hooks hold the buckets only weakly: a discarded owner leaves inert hooks, which are removed
        self._finalizer = weakref.finalize(self, _remove_hooks, self._hooks)
        self._hook_trainable()

    @staticmethod
    def _layout(params: list[nn.Parameter], bucket_mb: float, first_bucket_mb: float) -> list[_Bucket]:
        """Buckets over ``params`` in reverse order (autograd produces the last layers' gradients
        first), each closed once it reaches its size or when dtype or device change (one flat
        buffer per bucket)."""
        buckets: list[_Bucket] = []
        current: list[nn.Parameter] = []
        size = 0

        def close() -> None:
            nonlocal current, size
            if current:
                buckets.append(_Bucket(len(buckets), current))
            current, size = [], 0

        for p in reversed(params):
            if current and (p.dtype, p.device) != (current[0].dtype, current[0].device):
                close()
            current.append(p)
            size += p.numel() * p.element_size()
            cap = (first_bucket_mb if not buckets else bucket_mb) * 2**20
            if size >= cap:
                close()
        close()
        return buckets

    # -- the hooks ----------------------------------------------------------------------------------
    def _hook_trainable(self) -> None:
        """A hook on every parameter that requires a gradient and has none yet (PyTorch refuses
        hooks on the others; a frozen parameter that is unfrozen later gets one at ``arm``)."""
        if not self._finalizer.alive:  # closed
            return
        ref = weakref.ref(self)
        for p in self.params:
            if p.requires_grad and id(p) not in self._hooks:
                self._hooks[id(p)] = p.register_post_accumulate_grad_hook(_Hook(ref, id(p)))

    def _on_grad(self, key: int) -> None:
        """``p.grad`` is final for this backward (see the module docstring): count it, and send
        every bucket that is now complete and next in line."""
        if not self._armed:
            return  # an earlier micro-batch (no_sync), or another network's step
        bucket = self._bucket_of[key]
        if bucket.launched:
            bucket.stale = True  # accumulated again after it was sent: finish re-reduces it
            return
        if key in bucket.waiting:
            bucket.waiting.discard(key)
            self._send_ready()

    def _send_ready(self) -> None:
        while self._next < len(self.buckets) and not self.buckets[self._next].waiting:
            self.stats["in_backward"] += self._send(self.buckets[self._next])
            self._next += 1

    # -- one step -------------------------------------------------------------------------------
    def arm(self) -> None:
        """Called just before the last micro-batch's backward: from now on a complete bucket is
        sent at once. Takes which parameters require a gradient now (they make up the buckets'
        buffers; a frozen network's are left out, as ``all_reduce_grads`` leaves them)."""
        if not is_dist() or self._armed:
            return
        self._hook_trainable()
        for b in self.buckets:
            b.active = [p for p in b.params if p.requires_grad]
            b.waiting = {id(p) for p in b.active}
            b.launched, b.stale, b.flat, b.work = False, False, None, None
        self._next = 0
        self._armed = True
        self._send_ready()  # buckets with nothing to wait for (all frozen) go first

    def finish(self) -> None:
        """After the last backward, before anything reads the gradients: send the buckets that
        did not complete (parameters without a gradient count as zeros), wait for all, re-reduce
        the stale ones, and write the averages into ``.grad``."""
        if not is_dist():
            return
        t0 = time.perf_counter()
        if not self._armed:  # no armed backward (e.g. no micro-batch ran): reduce it all now
            self.arm()
        with torch.no_grad():
            for b in self.buckets[self._next :]:
                b.active = [p for p in b.params if p.requires_grad]  # as they are now: not sent yet
                self.stats["in_finish"] += self._send(b)
            self._next = len(self.buckets)
            for b in self.buckets:
                if b.work is not None:
                    b.work.wait()
                    b.work = None
            for b in self.buckets:
                # requires_grad changed since arm: the buffer's parameters are no longer the ones
                # to average (the same on every rank: the task's code sets it). Compared by
                # identity: == on parameters would compare their values.
                now = [p for p in b.params if p.requires_grad]
                if b.stale or [id(p) for p in b.active] != [id(p) for p in now]:
                    b.active = now
                    self.stats["rereduced"] += self._send(b)
            n = world_size()
            for b in self.buckets:
                if b.work is not None:
                    b.work.wait()
                self._unpack(b, n)
        self._clear()
        self.finish_seconds += time.perf_counter() - t0
        self.finish_calls += 1

    def reset(self) -> None:
        """Forget this step (the gradients were zeroed): wait for any reduction still in flight
        (its buffer must outlive it), then disarm. No collective is issued."""
        for b in self.buckets:
            if b.work is not None:
                b.work.wait()
        self._clear()

    def close(self) -> None:
        """Remove the hooks (the buckets are unusable afterwards)."""
        self.reset()
        self._finalizer()

    def _clear(self) -> None:
        for b in self.buckets:
            b.active, b.waiting = [], set()
            b.launched, b.stale, b.flat, b.work = False, False, None, None
        self._armed = False
        self._next = 0

    # -- buffers ----------------------------------------------------------------------------------
    def _send(self, b: _Bucket) -> bool:
        """Copy the bucket's gradients (zeros where None) into a fresh flat buffer and start its
        all-reduce (SUM, as ``all_reduce_grads``); whether a collective was issued: a bucket with
        nothing to reduce (all frozen) sends nothing, on every rank alike (rule 3 of the module
        docstring)."""
        b.launched = True
        if not b.active:
            b.flat = None
            return False
        with torch.no_grad():  # the hook may run inside a create_graph backward
            ref = b.active[0]
            flat = torch.empty(sum(p.numel() for p in b.active), dtype=ref.dtype, device=ref.device)
            offset = 0
            for p in b.active:
                part = flat[offset : offset + p.numel()].view_as(p)
                if p.grad is None:
                    part.zero_()
                else:
                    part.copy_(p.grad)
                offset += p.numel()
        b.flat = flat
        b.work = dist.all_reduce(flat, op=dist.ReduceOp.SUM, async_op=True)
        return True

    @staticmethod
    def _unpack(b: _Bucket, n: int) -> None:
        """Average in place and hand each parameter a view of the buffer as its gradient (no copy,
        as DDP's ``gradient_as_bucket_view``; contiguous, like ``all_reduce_grads``'s). A
        parameter without a gradient keeps None."""
        if b.flat is None:
            return
        b.flat.div_(n)
        offset = 0
        for p in b.active:
            if p.grad is not None:
                p.grad = b.flat[offset : offset + p.numel()].view_as(p)
            offset += p.numel()


class _Hook:
    """The post-accumulate-grad hook of one parameter; holds its :class:`GradBuckets` weakly."""

    def __init__(self, owner: weakref.ref[GradBuckets], key: int) -> None:
        self.owner, self.key = owner, key

    def __call__(self, _param: torch.Tensor) -> None:
        owner = self.owner()
        if owner is not None:
            owner._on_grad(self.key)


def _remove_hooks(hooks: dict[int, RemovableHandle]) -> None:
    for handle in hooks.values():
        handle.remove()
    hooks.clear()


__all__ = ["DEFAULT_BUCKET_MB", "DEFAULT_FIRST_BUCKET_MB", "GradBuckets"]
