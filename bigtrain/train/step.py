"""One optimizer step, the same for every network of every task.

A step of any task is, per network: zero the gradients, run ``accumulation`` micro-batches and
back-propagate each loss divided by that count (scaled by the fp16 loss scale), then, once:

1. average the loss over ranks and check it is finite (:class:`NonFiniteGuard`): a NaN on any
   rank is seen by every rank at the same step, before anything is applied; the run stops
   (``trainer.on_nonfinite=stop``) or the update is dropped and counted (``skip``);
2. average the gradients over ranks (one flat all-reduce; see ``bigtrain.distributed`` for why
   not DDP), or, with ``overlap``, finish the bucketed reductions the last backward started
   (``bigtrain.distributed.overlap``; done before step 1, whose all-reduce must not come between
   them);
3. clip the global gradient norm (when the task asks);
4. step the optimizer (through the fp16 loss scaler, which skips overflowing steps on every rank
   alike because the scaled gradients were all-reduced before it looks);
5. broadcast BatchNorm statistics from rank 0 (the networks whose buffers moved).

:class:`OptimizerStep` does this for a plain PyTorch optimizer; a DeepSpeed engine does the same
inside itself and stands behind the same interface (``bigtrain.train.engines``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Protocol

import torch
from torch import nn

from bigtrain import distributed as bdist
from bigtrain.distributed.overlap import DEFAULT_BUCKET_MB, GradBuckets
from bigtrain.errors import NonFiniteLossError
from bigtrain.train.optim import build_optimizer


class NonFiniteGuard:
    """``trainer.on_nonfinite`` for one task: a loss that is NaN/inf on any rank either stops the run
    (``stop``) or drops that update and counts it (``skip``), up to ``max_nonfinite_skips`` in a row.
    Its counters are checkpointed in the task's ``task`` component.

    ``deferred`` (``trainer.sync_every`` > 1, ``stop`` only, for a task that declares
    ``Task.defers_checks``): reading a loss on the host waits for the GPU to finish everything queued
    before it, and every such wait leaves the GPU idle while Python queues the next kernels. A
    deferred guard keeps each loss's finite flag on the device and reads them all at once every
    ``sync_every`` steps and whenever the loop is about to write a checkpoint or evaluate
    (:meth:`settle`); a non-finite loss then stops the run naming its exact network and step, and
    no checkpoint is ever written from weights a non-finite update reached.
    """

    def __init__(self, trainer_cfg: Any, *, deferred: bool = False) -> None:
        self.policy = str(trainer_cfg.on_nonfinite)
        self.max_skips = int(trainer_cfg.max_nonfinite_skips)
        self.every = int(trainer_cfg.get("sync_every", 1)) if deferred else 1
        if self.every > 1 and self.policy != "stop":
            raise ValueError("trainer.sync_every > 1 checks losses late: it needs trainer.on_nonfinite=stop")
        self.skips = 0  # in a row; reset by a good step
        self.total = 0
        self._pending: list[tuple[str, int, torch.Tensor]] = []  # deferred: (name, step, finite flag)

    @property
    def deferred(self) -> bool:
        return self.every > 1

    def check(self, loss_sum: torch.Tensor, name: str, step: int) -> float | torch.Tensor | None:
        """The rank-averaged loss, or None when the update must be dropped; raises to stop. A
        deferred guard returns it as a 0-dim tensor on the device and reads it later."""
        mean = bdist.all_reduce_mean(loss_sum.detach().float())
        if self.deferred:
            self._pending.append((name, step, torch.isfinite(mean)))
            if step % self.every == 0:
                self.settle()
            return mean
        value = float(mean)
        if math.isfinite(value):
            return value
        if self.policy == "skip" and self.skips < self.max_skips:
            self.skips += 1
            self.total += 1
            return None
        raise NonFiniteLossError(name, step)

    def settle(self) -> None:
        """Read every deferred finite flag (one host-device synchronisation) and raise for the first
        non-finite loss; a no-op when nothing is pending."""
        if not self._pending:
            return
        pending, self._pending = self._pending, []
        finite = torch.stack([flag for _, _, flag in pending]).cpu()
        if not bool(finite.all()):
            name, step, _ = pending[int((~finite).nonzero()[0])]
            raise NonFiniteLossError(name, step)

    def good_step(self) -> None:
        self.skips = 0

    def state_dict(self) -> dict[str, int]:
        return {"nonfinite_skips": self.skips, "nonfinite_total": self.total}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.skips = int(state.get("nonfinite_skips", 0))
        self.total = int(state.get("nonfinite_total", 0))


class Update(Protocol):
    """What a task drives, whatever does the work underneath (PyTorch or DeepSpeed)."""

    name: str
    accumulation: int

    def zero(self) -> None: ...

    def backward(self, loss: torch.Tensor) -> None:
        """One micro-batch's loss (its mean over the micro-batch)."""
        ...

    def apply(self, loss_sum: torch.Tensor, step: int) -> float | torch.Tensor | None:
        """After the micro-batches: check, reduce, clip, step, broadcast. The rank-averaged loss, or
        None when the update was dropped (``on_nonfinite=skip``). Raises to stop."""
        ...

    def schedule(self, factor: float, base: float | None = None) -> float:
        """Set the learning rate to ``base`` (default: the configured rate) times ``factor``; it."""
        ...


def accumulate(update: Update, micro: Callable[[], torch.Tensor]) -> torch.Tensor:
    """Zero, then ``update.accumulation`` times: ``loss = micro()`` and its backward. Returns the
    mean loss over the micro-batches (detached), which :meth:`Update.apply` checks."""
    update.zero()
    total: torch.Tensor | None = None
    for _ in range(update.accumulation):
        loss = micro()
        update.backward(loss)
        part = loss.detach() / update.accumulation
        total = part if total is None else total + part
    assert total is not None
    return total


def apply_frozen(
    update: Update, micro: Callable[[], torch.Tensor], step: int, frozen: nn.Module
) -> float | torch.Tensor | None:
    """:func:`accumulate` and apply ``update`` with ``frozen``'s parameters out of autograd: a
    generator's step through its discriminator, whose weights must collect no gradient from it."""
    frozen.requires_grad_(False)
    try:
        return update.apply(accumulate(update, micro), step)
    finally:
        frozen.requires_grad_(True)


def adversarial_updates(
    g: nn.Module,
    d: nn.Module,
    cfg: Any,
    guard: NonFiniteGuard,
    accumulation: int,
    d_params: list[nn.Parameter] | None = None,
) -> tuple[OptimizerStep, OptimizerStep]:
    """D's and G's updates as the two-player tasks (pix2pix, CycleGAN, GAN-CLS) build them: each
    from its ``optim.d`` / ``optim.g`` block, with ``trainer.grad_overlap``; after D's update D's
    buffers are made equal on every rank, after G's both nets' (D's BatchNorm statistics also move
    in G's forward through it). ``d_params``: what D's update trains when it is more than D (the
    text encoder GAN-CLS trains with D)."""
    options = {"accumulation": accumulation, **grad_overlap(cfg.trainer)}
    if d_params is None:
        d_update = OptimizerStep.build("D", d, cfg.optim.d, guard, broadcast=(d,), **options)
    else:
        optimizer = build_optimizer(d_params, cfg.optim.d)
        d_update = OptimizerStep(
            "D", d_params, optimizer, guard, hparams=cfg.optim.d, broadcast=(d,), **options
        )
    g_update = OptimizerStep.build("G", g, cfg.optim.g, guard, broadcast=(g, d), **options)
    return d_update, g_update


def record_updates(
    metrics: dict[str, float],
    guard: NonFiniteGuard,
    updates: Mapping[str, tuple[OptimizerStep, float | None]],
    *,
    losses: bool = True,
) -> None:
    """``loss/<name>`` and ``grad_norm/<name>`` of every update that was applied (its value is not
    None); a step in which all of them were applied counts as good for the guard. ``losses=False``:
    gradient norms only, for a task that logs its loss under a name of its own (``loss/bits_per_dim``)
    and would otherwise chart the same curve twice."""
    for name, (update, value) in updates.items():
        if value is not None:
            if losses:
                metrics[f"loss/{name}"] = value
            metrics[f"grad_norm/{name}"] = update.gradient_norm()
    if all(value is not None for _, value in updates.values()):
        guard.good_step()


def rank_means(sums: Mapping[str, torch.Tensor]) -> dict[str, float]:
    """Every scalar of ``sums`` (a step's logged parts, summed over its micro-batches) averaged over
    ranks, as floats by name: one all-reduce of them stacked, in sorted key order, so every rank
    contributes the same entries in the same order whatever order the task filled them in."""
    keys = sorted(sums)
    reduced = bdist.all_reduce_mean(torch.stack([sums[k].float() for k in keys]))
    return dict(zip(keys, (float(v) for v in reduced), strict=True))


def grad_overlap(trainer_cfg: Any) -> dict[str, Any]:
    """The :class:`OptimizerStep` options ``trainer.grad_overlap`` and ``trainer.grad_bucket_mb`` set
    (every task passes them to each of its updates)."""
    return {
        "overlap": bool(trainer_cfg.get("grad_overlap", False)),
        "bucket_mb": float(trainer_cfg.get("grad_bucket_mb", DEFAULT_BUCKET_MB)),
    }


def set_lr(optimizer: Any, lr: float) -> None:
    """Every parameter group of a torch or DeepSpeed optimizer at ``lr``."""
    for group in optimizer.param_groups:
        group["lr"] = lr


class OptimizerStep:
    """A PyTorch optimizer's step for one network, in the order of the module docstring.

    ``clip``: None leaves the gradients alone; a number clips their global norm to it (``inf``
    only measures it) and :attr:`grad_norm` holds the norm before clipping. ``broadcast``: the
    networks whose buffers (BatchNorm statistics) rank 0 sends to every rank after the step.

    ``overlap``: average the gradients in buckets of ``bucket_mb`` MiB that the last micro-batch's
    backward sends as they fill (:class:`~bigtrain.distributed.overlap.GradBuckets`), instead of
    one all-reduce after it: the same averages (bit for bit on two ranks), communication hidden
    behind the earlier layers' backward. The buckets are armed by the ``accumulation``-th
    :meth:`backward` call since :meth:`zero`, so the earlier micro-batches send nothing.
    """

    def __init__(
        self,
        name: str,
        params: Iterable[nn.Parameter],
        optimizer: torch.optim.Optimizer,
        guard: NonFiniteGuard,
        *,
        hparams: Any = None,
        scaler: torch.amp.GradScaler | None = None,
        accumulation: int = 1,
        clip: float | None = None,
        broadcast: Sequence[nn.Module] = (),
        overlap: bool = False,
        bucket_mb: float = DEFAULT_BUCKET_MB,
    ) -> None:
        self.name, self.optimizer, self.guard = name, optimizer, guard
        self.hparams = hparams  # the optim.<name> block: lr, betas, eps, weight_decay
        # each group's weight decay as built from the config (AdamW exempts biases and norms)
        self._weight_decay = [g.get("weight_decay", 0.0) for g in optimizer.param_groups]
        self.params = list(params)
        self.scaler = scaler
        self.accumulation = accumulation
        self.clip = clip
        self.broadcast = tuple(broadcast)
        self.grad_norm = float("nan")
        self._buckets = GradBuckets(self.params, bucket_mb) if overlap else None
        self._backwards = 0  # backward() calls since zero(): the last micro-batch's arms the buckets

    @classmethod
    def build(
        cls, name: str, module: nn.Module, hparams: Any, guard: NonFiniteGuard, **options: Any
    ) -> OptimizerStep:
        """The optimizer of ``module``'s parameters from its ``optim.<name>`` block (``name``: Adam
        or RMSProp, ``lr``, ``betas``/``alpha``, ``eps``, ``weight_decay``); ``options`` as for the
        constructor."""
        optimizer = build_optimizer(module.parameters(), hparams)
        return cls(name, module.parameters(), optimizer, guard, hparams=hparams, **options)

    def zero(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        self._backwards = 0
        if self._buckets is not None:
            self._buckets.reset()

    def backward(self, loss: torch.Tensor) -> None:
        self._backwards += 1
        if self._buckets is not None and self._backwards >= self.accumulation:
            self._buckets.arm()  # a no-op alone (no process group)
        scaled = loss / self.accumulation
        (self.scaler.scale(scaled) if self.scaler is not None else scaled).backward()

    def apply(self, loss_sum: torch.Tensor, step: int) -> float | torch.Tensor | None:
        if self._buckets is not None:
            # before the guard's all-reduce, even when the update is then dropped: every rank must
            # issue every bucket once, whichever its backward already sent (GradBuckets' ordering)
            self._buckets.finish()
            self._backwards = 0
        value = self.guard.check(loss_sum, self.name, step)
        if value is None:
            self.zero()
            return None
        if self._buckets is None:
            bdist.all_reduce_grads(self.params)
        if self.clip is not None:
            if self.scaler is not None:
                self.scaler.unscale_(self.optimizer)
            self.grad_norm = float(torch.nn.utils.clip_grad_norm_(self.params, self.clip))
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        for module in self.broadcast:
            bdist.broadcast_buffers(module)
        return value

    def schedule(self, factor: float, base: float | None = None) -> float:
        lr = float(self.hparams.lr if base is None else base) * factor
        set_lr(self.optimizer, lr)
        return lr

    def state_dict(self) -> dict[str, Any]:
        return self.optimizer.state_dict()

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """The optimizer's moments from a checkpoint; its hyper-parameters from the config, so a
        resumed run can lower its learning rate (PyTorch would silently restore the saved one)."""
        self.optimizer.load_state_dict(state)
        if self.hparams is not None:
            for group, wd in zip(self.optimizer.param_groups, self._weight_decay, strict=True):
                group.update(lr=self.hparams.lr, eps=self.hparams.eps, weight_decay=wd)
                if "betas" in group:
                    group["betas"] = tuple(self.hparams.betas)
                if "alpha" in group:
                    group["alpha"] = float(self.hparams.alpha)

    def gradient_norm(self) -> float | torch.Tensor:
        """The global norm of the gradients the last step applied (they are kept until the next
        zero); under a deferred guard a 0-dim tensor on the device, read when the loop logs it."""
        norms = [p.grad.detach() for p in self.params if p.grad is not None]
        if not norms:
            return 0.0
        total = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(norms)))
        return total if self.guard.deferred else float(total)


__all__ = [
    "NonFiniteGuard",
    "OptimizerStep",
    "Update",
    "accumulate",
    "apply_frozen",
    "grad_overlap",
    "rank_means",
    "record_updates",
    "set_lr",
]
