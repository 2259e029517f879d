"""Engines for a task that trains one network alone (the transformer prior): plain PyTorch, or
DeepSpeed with ZeRO, as two objects behind one interface instead of a flag.

An engine owns the network's optimizer step (an :class:`~bigtrain.train.step.Update`), the forward
call that step needs (DeepSpeed's engine wraps the module), the precision context, what goes into
bigtrain's checkpoint files and what the engine writes itself, the whole weights (gathered under
ZeRO-3) and the model that samples. The task above it is the same code for both.
"""

from __future__ import annotations

import contextlib
import logging
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bigtrain import distributed as bdist
from bigtrain.checkpoint.digest import digest
from bigtrain.checkpoint.io import Checkpoint, NativeState
from bigtrain.distributed.zero import init_deepspeed, zero_config
from bigtrain.errors import CheckpointError, NonFiniteLossError
from bigtrain.train.step import NonFiniteGuard, OptimizerStep, set_lr
from bigtrain.utils.rng import preserve_rng

log = logging.getLogger(__name__)

DS_TAG = "deepspeed"  # the DeepSpeed checkpoint's folder inside bigtrain's checkpoint folder


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Weight decay on matrices and embeddings (dim >= 2), none on biases and norm gains."""
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    rest = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}]


def adamw(model: nn.Module, c: Any, device: torch.device) -> torch.optim.AdamW:
    """AdamW over :func:`param_groups` (GPT-2 / LlamaGen practice), fused on CUDA."""
    return torch.optim.AdamW(
        param_groups(model, float(c.weight_decay)),
        lr=float(c.lr),
        betas=tuple(c.betas),
        eps=float(c.eps),
        fused=device.type == "cuda",
    )


class Engine(ABC):
    """One network's training machinery; ``name`` is its checkpoint component (``prior``)."""

    def __init__(self, name: str, model: nn.Module) -> None:
        self.name, self.model = name, model

    @property
    @abstractmethod
    def update(self) -> Any:
        """The :class:`~bigtrain.train.step.Update` a step drives."""

    @abstractmethod
    def forward(self) -> Callable[..., torch.Tensor]:
        """What the training forward calls (the module, or DeepSpeed's engine around it)."""

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        return contextlib.nullcontext()

    def state_dict(self) -> dict[str, Any]:
        """Checkpoint components besides the weights (a torch optimizer's state)."""
        return {}

    def load_state_dict(self, states: Mapping[str, Any]) -> None:  # noqa: B027 - optional
        pass

    def native_state(self) -> NativeState | None:
        return None

    def full_weights(self) -> dict[str, torch.Tensor]:
        """The whole network's weights (collective under ZeRO-3: every rank calls it)."""
        return self.model.state_dict()

    def digest_modules(self) -> dict[str, nn.Module]:
        return {self.name: self.model}

    def before_sampling(self) -> None:  # noqa: B027 - optional
        """Collective: make :meth:`sampling_model` usable on the main process."""

    def sampling_model(self) -> nn.Module:
        return self.model

    def close(self) -> None:  # noqa: B027 - optional
        """Release what the engine holds beyond the module (before the process group ends)."""


class TorchEngine(Engine):
    """Plain PyTorch: one gradient all-reduce per step, global-norm clipping, AdamW."""

    def __init__(
        self,
        name: str,
        model: nn.Module,
        hparams: Any,
        guard: NonFiniteGuard,
        *,
        accumulation: int,
        clip: float,
        device: torch.device,
        accelerator: Any,
    ) -> None:
        super().__init__(name, model)
        self.accelerator = accelerator
        self._update: OptimizerStep | None = None
        if device.type != "meta":
            bdist.broadcast_module(model)
            self._update = OptimizerStep(
                name,
                model.parameters(),
                adamw(model, hparams, device),
                guard,
                hparams=hparams,
                accumulation=accumulation,
                clip=clip if clip > 0 else float("inf"),  # inf: measure the norm, clip nothing
            )

    @property
    def update(self) -> OptimizerStep:
        assert self._update is not None, "a meta-device engine does not train"
        return self._update

    def forward(self) -> Callable[..., torch.Tensor]:
        return self.model

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        return self.accelerator.autocast()

    def state_dict(self) -> dict[str, Any]:
        return {} if self._update is None else {f"opt_{self.name}": self._update.state_dict()}

    def load_state_dict(self, states: Mapping[str, Any]) -> None:
        key = f"opt_{self.name}"
        if self._update is not None and key in states:
            self._update.load_state_dict(states[key])


class DeepSpeedStep:
    """DeepSpeed's engine as an :class:`~bigtrain.train.step.Update`: its ``backward`` divides by the
    accumulation steps and its ``step`` applies only at the accumulation boundary, after DeepSpeed's
    own all-reduce, clipping and overflow check."""

    def __init__(
        self, name: str, engine: Callable[[], Any], guard: NonFiniteGuard, accumulation: int, hparams: Any
    ):
        self.name, self._engine, self.guard = name, engine, guard
        self.accumulation, self.hparams = accumulation, hparams
        self.grad_norm = float("nan")

    def zero(self) -> None:
        """DeepSpeed zeroes its gradients itself at the accumulation boundary."""

    def backward(self, loss: torch.Tensor) -> None:
        eng = self._engine()
        eng.backward(loss)
        eng.step()

    def apply(self, loss_sum: torch.Tensor, step: int) -> float | None:
        eng = self._engine()
        value = self.guard.check(loss_sum, self.name, step)  # raises under on_nonfinite=stop
        if value is None and eng.was_step_applied():
            # DeepSpeed applied a non-finite update (overflow detection off): the weights are gone
            raise NonFiniteLossError(self.name, step)
        norm = eng.get_global_grad_norm()
        self.grad_norm = float(norm) if norm is not None else float("nan")
        return value

    def schedule(self, factor: float, base: float | None = None) -> float:
        lr = float(self.hparams.lr if base is None else base) * factor
        set_lr(self._engine().optimizer, lr)
        return lr


class DeepSpeedEngine(Engine):
    """DeepSpeed's own engine with ZeRO stage 1, 2 or 3, bf16/fp16, accumulation and clipping. Its
    optimizer partitions are DeepSpeed checkpoint files inside bigtrain's checkpoint folder
    (``deepspeed/``, digested in ``meta.json`` like every component, with DeepSpeed's
    ``zero_to_fp32.py`` beside them); the engine is built when training needs it (sampling from a
    checkpoint does not)."""

    def __init__(
        self,
        name: str,
        model: nn.Module,
        hparams: Any,
        guard: NonFiniteGuard,
        *,
        accumulation: int,
        micro_batch: int,
        precision: str,
        zero_stage: int,
        grad_clip: float,
        device: torch.device,
    ) -> None:
        super().__init__(name, model)
        self.hparams, self.device, self.zero_stage = hparams, device, int(zero_stage)
        self.config = zero_config(
            micro_batch=micro_batch,
            accumulation=accumulation,
            precision=precision,
            zero_stage=zero_stage,
            grad_clip=grad_clip,
        )
        self._engine: Any = None
        self._sampling_copy: nn.Module | None = None
        self._update = DeepSpeedStep(name, self.engine, guard, accumulation, hparams)

    def engine(self) -> Any:
        if self._engine is None:
            deepspeed = init_deepspeed()
            opt = adamw(self.model, self.hparams, self.device)
            self._engine, *_ = deepspeed.initialize(model=self.model, optimizer=opt, config=self.config)
        return self._engine

    @property
    def sharded(self) -> bool:
        """ZeRO-3 with the engine built: each rank holds a slice of the weights."""
        return self.zero_stage == 3 and self._engine is not None

    @property
    def update(self) -> DeepSpeedStep:
        return self._update

    def forward(self) -> Callable[..., torch.Tensor]:
        return self.engine()

    def native_state(self) -> NativeState:
        return self

    def full_weights(self) -> dict[str, torch.Tensor]:
        if self.sharded:
            return self._engine._zero3_consolidated_16bit_state_dict() or {}  # noqa: SLF001
        return self.model.state_dict()

    def digest_modules(self) -> dict[str, nn.Module]:
        return {} if self.sharded else {self.name: self.model}  # ZeRO-3: nothing common to compare

    # -- the engine's own checkpoint files (a NativeState) ------------------------------------------
    def save_native(self, folder: Path) -> dict[str, str]:
        """Collective: DeepSpeed's checkpoint of the engine into ``folder/deepspeed``; returns the
        digests of the files this rank wrote (rank 0 also the model-states file)."""
        eng = self.engine()
        eng.save_checkpoint(str(folder), tag=DS_TAG, save_latest=False)
        rank = bdist.rank()
        mine = {}
        for f in sorted((folder / DS_TAG).glob("*.pt")):
            owned = f"_rank_{rank}_" in f.name or (rank == 0 and f.name.startswith("mp_rank_"))
            if owned:
                mine[f"{DS_TAG}/{f.stem}"] = digest(torch.load(f, map_location="cpu", weights_only=False))
        return mine

    def load_native(self, ck: Checkpoint) -> None:
        """Restore the engine (weights, fp32 master weights, optimizer partitions) from ``ck``."""
        eng = self.engine()
        if not (ck.path / DS_TAG).is_dir():
            log.warning(
                "%s has no DeepSpeed state (written with prior.engine=torch?): weights restored, "
                "optimizer state starts fresh",
                ck.path,
            )
            return
        saved = int(ck.meta.get("world_size", bdist.world_size()))
        if saved != bdist.world_size():
            raise CheckpointError(
                f"{ck.path}: its ZeRO optimizer state is partitioned over {saved} ranks; resume with "
                f"{saved} ranks, or start a new run from its weights (DeepSpeed's zero_to_fp32.py is "
                "in the checkpoint folder)"
            )
        path, _ = eng.load_checkpoint(
            str(ck.path), tag=DS_TAG, load_optimizer_states=True, load_lr_scheduler_states=False
        )
        if path is None:
            raise CheckpointError(f"DeepSpeed could not load {ck.path / DS_TAG}")

    # -- sampling -------------------------------------------------------------------------------------
    def before_sampling(self) -> None:
        """Under ZeRO-3, every rank takes part in gathering the weights into a full copy for the main
        process (the partitioned module cannot run on one rank alone)."""
        if not self.sharded:
            return
        state = self.full_weights()
        if bdist.is_main():
            with preserve_rng():
                copy = type(self.model)(self.model.cfg).to(self.device)  # type: ignore[call-arg]
            copy.load_state_dict(state)
            self._sampling_copy = copy

    def sampling_model(self) -> nn.Module:
        if self.sharded:
            if self._sampling_copy is None:
                raise RuntimeError("ZeRO-3: call before_sampling() on every rank first")
            return self._sampling_copy
        return self.model

    def close(self) -> None:
        """DeepSpeed's engine releases its optimizer's hooks and partitions (ZeRO-3's parameter
        coordinator) while the process group still exists, not in the interpreter's teardown."""
        if self._engine is not None:
            self._engine.destroy()
            self._engine = None


__all__ = ["DS_TAG", "DeepSpeedEngine", "DeepSpeedStep", "Engine", "TorchEngine", "adamw", "param_groups"]
