"""Training tasks: what one optimisation step means for a model family.

The loop (``bigtrain.train.loop``) knows nothing about GANs: it asks a task for a step, for its
checkpointable state, and for samples. A new family (a VQ tokenizer, an autoregressive prior) is a
new task registered here plus its models; the loop does not change.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any, Protocol

import torch
from omegaconf import DictConfig

from bigtrain.data.manifest import DatasetManifest


class NonFiniteLossError(RuntimeError):
    """A loss became NaN or inf; the step was not applied."""

    def __init__(self, name: str, step: int):
        super().__init__(name, step)
        self.name, self.step = name, step
        self.last_checkpoint: object | None = None  # filled in by the loop, which knows it

    def __str__(self) -> str:
        where = self.last_checkpoint or "none (no checkpoint was written yet)"
        return f"non-finite {self.name} loss at step {self.step}: run stopped; last good checkpoint: {where}"


class NonFiniteGuard:
    """``trainer.on_nonfinite`` for one task: a loss that is NaN/inf on any rank either stops the run
    (``stop``) or drops that update and counts it (``skip``), up to ``max_nonfinite_skips`` in a row.
    Its counters are checkpointed in the task's ``task`` component."""

    def __init__(self, trainer_cfg: DictConfig) -> None:
        self.policy = str(trainer_cfg.on_nonfinite)
        self.max_skips = int(trainer_cfg.max_nonfinite_skips)
        self.skips = 0  # in a row; reset by a good step
        self.total = 0

    def check(self, loss_sum: torch.Tensor, name: str, step: int) -> float | None:
        """The rank-averaged loss, or None when the update must be dropped; raises to stop."""
        import math

        from bigtrain import distributed as bdist

        value = float(bdist.all_reduce_mean(loss_sum.detach().float()))
        if math.isfinite(value):
            return value
        if self.policy == "skip" and self.skips < self.max_skips:
            self.skips += 1
            self.total += 1
            return None
        raise NonFiniteLossError(name, step)

    def good_step(self) -> None:
        self.skips = 0

    def state_dict(self) -> dict[str, int]:
        return {"nonfinite_skips": self.skips, "nonfinite_total": self.total}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.skips = int(state.get("nonfinite_skips", 0))
        self.total = int(state.get("nonfinite_total", 0))


class Task(Protocol):
    def state(self) -> dict[str, Any]:
        """Shared (rank-independent) components to checkpoint, by name."""
        ...

    def load_state(self, states: Mapping[str, Any]) -> None: ...

    def train_step(self, step: int, data: Iterator[dict[str, Any]]) -> dict[str, float]:
        """One step; returns metrics already averaged over ranks. Raises NonFiniteLossError."""
        ...

    def images_per_step(self) -> int:
        """Real images this rank consumes per step (for img/s)."""
        ...

    def sample_grid(self, seed: int, rows: int) -> tuple[torch.Tensor, int]:
        """Images in [-1, 1] for the fixed-z grid, and the number per row."""
        ...

    def sampler(self) -> Callable[[int, torch.Generator], torch.Tensor]:
        """``f(n, generator) -> n images in [-1, 1]`` from the network that FID judges (EMA G)."""
        ...

    def digest_modules(self) -> dict[str, torch.nn.Module]:
        """Networks whose weights must agree across ranks (checked by the multi-process test)."""
        ...


TaskFactory = Callable[[DictConfig, DatasetManifest, torch.device, Any], Task]
TASKS: dict[str, TaskFactory] = {}


def register_task(name: str) -> Callable[[TaskFactory], TaskFactory]:
    def deco(factory: TaskFactory) -> TaskFactory:
        TASKS[name] = factory
        return factory

    return deco


def build_task(cfg: DictConfig, manifest: DatasetManifest, device: torch.device, accelerator: Any) -> Task:
    if cfg.task not in TASKS:
        raise ValueError(f"unknown task '{cfg.task}'; choose one of: {', '.join(sorted(TASKS))}")
    from bigtrain.config.validate import ConfigError

    try:
        return TASKS[cfg.task](cfg, manifest, device, accelerator)
    except ValueError as exc:  # a model builder rejecting an option (unknown key, bad size): one line
        raise ConfigError(str(exc)) from None


# registering the built-in tasks
from bigtrain.train import gan_task as _gan_task  # noqa: E402,F401
from bigtrain.train import prior_task as _prior_task  # noqa: E402,F401
from bigtrain.train import tokenizer_task as _tokenizer_task  # noqa: E402,F401
