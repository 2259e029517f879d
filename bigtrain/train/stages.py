"""Resolution stages: ProGAN's growing with fade-in (Karras et al. 2018) and plain resolution
stages without growing (LlamaGen's 256 -> 512), as one schedule in the config.

A schedule is a list of stages, each with a resolution, a length (``steps``, or ``images`` seen
over all processes), an optional batch size and learning rates, and ``fade_steps``: for that many
steps at the start of the stage a newly grown block is blended in with weight ``alpha`` rising
linearly from 0 to 1 (ProGAN's fade-in; 0 = the stage starts at full weight, e.g. without growing).
A stage's batch that does not fit in memory is split into ``micro_batch``-sized pieces whose
gradients are accumulated (``stages.max_micro_batch`` caps every stage's micro-batch at once), so the
optimizer still sees the stage's batch.
Position in the schedule is a pure function of the global step, so a run resumed in the middle of
a fade continues with the same ``alpha`` bit for bit; the checkpoint still records the stage and
``alpha`` (``state_dict``) so that a changed schedule is noticed on resume.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from bigtrain.train.task import Task

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Stage:
    resolution: int
    steps: int  # the stage's length in optimizer steps (fade included)
    fade_steps: int = 0
    batch_size: int | None = None  # per process; None = data.batch_size
    lr_g: float | None = None  # None = optim.g.lr
    lr_d: float | None = None
    micro_batch: int | None = None  # per process and forward pass; None = the whole batch at once

    def batch(self, default: int) -> int:
        return int(self.batch_size or default)

    def micro(self, default: int) -> int:
        return int(self.micro_batch or self.batch(default))

    def splits(self, default: int) -> int:
        """Micro-batches accumulated per optimizer step to make up the stage's batch."""
        return self.batch(default) // self.micro(default)


@dataclass(frozen=True)
class Position:
    index: int  # which stage
    stage: Stage
    step_in_stage: int  # 1-based
    alpha: float  # fade-in weight of the stage's new block, 1.0 once faded in

    @property
    def fading(self) -> bool:
        return self.alpha < 1.0


class StageSchedule:
    def __init__(self, stages: Sequence[Stage]) -> None:
        if not stages:
            raise ValueError("a stage schedule needs at least one stage")
        for i, s in enumerate(stages):
            if s.resolution < 1 or s.steps < 1 or s.fade_steps < 0 or s.fade_steps > s.steps:
                raise ValueError(
                    f"stage {i}: resolution >= 1, steps >= 1 and 0 <= fade_steps <= steps are required"
                )
            if s.micro_batch is not None and (
                s.micro_batch < 1 or (s.batch_size is not None and s.batch_size % s.micro_batch)
            ):
                raise ValueError(
                    f"stage {i}: micro_batch {s.micro_batch} must divide its batch_size {s.batch_size}"
                )
            if i and s.resolution < stages[i - 1].resolution:
                raise ValueError(
                    f"stage {i}: resolutions must not decrease ({stages[i - 1].resolution} -> {s.resolution})"
                )
        if stages[0].fade_steps:
            raise ValueError("stage 0 has nothing to fade in from: its fade_steps must be 0")
        for i in range(1, len(stages)):
            if stages[i].fade_steps and stages[i].resolution != 2 * stages[i - 1].resolution:
                raise ValueError(
                    f"stage {i} fades in one new block, so its resolution must double the previous "
                    f"stage's ({stages[i - 1].resolution} -> {stages[i].resolution}); set fade_steps to 0"
                )
        self.stages = tuple(stages)
        self.ends = [sum(s.steps for s in self.stages[: i + 1]) for i in range(len(self.stages))]

    @classmethod
    def from_config(
        cls,
        items: Sequence[Mapping[str, Any]],
        images_per_step: Mapping[int, int],
        *,
        batch_size: int | None = None,
        max_micro_batch: int = 0,
    ) -> StageSchedule:
        """Stages from config dicts; a stage given in ``images`` is converted to steps with
        ``images_per_step[i]`` (its batch x accumulation x processes), rounding up. A stage whose
        batch (its own or ``batch_size``) exceeds ``max_micro_batch`` (0 = no cap) is split into
        micro-batches of at most that size, which must divide the batch evenly."""
        stages = []
        for i, raw in enumerate(items):
            d = dict(raw)
            unknown = set(d) - {
                "resolution",
                "steps",
                "images",
                "fade_steps",
                "fade_images",
                "batch_size",
                "lr_g",
                "lr_d",
                "micro_batch",
            }
            if unknown:
                raise ValueError(f"stage {i}: unknown key(s) {', '.join(sorted(unknown))}")
            per = max(1, int(images_per_step.get(i, 1)))
            if ("steps" in d) == ("images" in d):
                raise ValueError(f"stage {i}: give its length as exactly one of steps or images")
            steps = int(d["steps"]) if "steps" in d else math.ceil(int(d["images"]) / per)
            fade = (
                int(d.get("fade_steps", 0))
                if "fade_images" not in d
                else math.ceil(int(d["fade_images"]) / per)
            )
            batch = int(d.get("batch_size") or batch_size or 0)
            micro = d.get("micro_batch")
            if micro is None and max_micro_batch > 0 and batch > max_micro_batch:
                micro = next(m for m in range(max_micro_batch, 0, -1) if batch % m == 0)
            if micro is not None and batch and batch % int(micro):
                raise ValueError(f"stage {i}: micro_batch {micro} must divide its batch of {batch}")
            stages.append(
                Stage(
                    int(d["resolution"]),
                    steps,
                    fade,
                    d.get("batch_size") or batch_size,
                    d.get("lr_g"),
                    d.get("lr_d"),
                    None if micro is None or int(micro) == batch else int(micro),
                )
            )
        return cls(stages)

    @property
    def total_steps(self) -> int:
        return self.ends[-1]

    def at(self, step: int) -> Position:
        """The position of global step ``step`` (1-based); past the end, the last stage, faded in."""
        index = next((i for i, end in enumerate(self.ends) if step <= end), len(self.stages) - 1)
        start = self.ends[index] - self.stages[index].steps
        in_stage = max(1, step - start)
        stage = self.stages[index]
        alpha = 1.0 if stage.fade_steps == 0 else min(1.0, in_stage / stage.fade_steps)
        return Position(index, stage, in_stage, alpha)

    def state_dict(self, step: int) -> dict[str, Any]:
        pos = self.at(step)
        return {"step": step, "stage": pos.index, "resolution": pos.stage.resolution, "alpha": pos.alpha}

    def check_resume(self, state: Mapping[str, Any]) -> str | None:
        """A warning when the schedule in the config no longer puts the checkpoint's step where the
        checkpoint says it was (the schedule was edited between runs)."""
        pos = self.at(int(state["step"]))
        if pos.index != int(state["stage"]) or pos.alpha != float(state["alpha"]):
            return (
                f"the stage schedule changed since the checkpoint: step {state['step']} was stage "
                f"{state['stage']} (alpha {state['alpha']:.4f}), now stage {pos.index} (alpha {pos.alpha:.4f})"
            )
        return None


class StageDriver:
    """What a task does with a schedule, the same for every task: at each step, set the growing
    networks to the stage's resolution and fade weight, start the optimizers' moments afresh when a
    stage begins (``stages.reset_optimizer``), and tell the loop the resolution and micro-batch the
    stream must deliver. The networks are *growing* ones (``set_resolution(res, alpha)``, e.g.
    ProGAN or ``model.arch.grow=true``) or none at all: a fully convolutional model (the tokenizer)
    just sees smaller images, and its stages cannot fade."""

    def __init__(
        self,
        schedule: StageSchedule,
        *,
        batch_size: int,
        accumulation: int,
        growing: Sequence[Any],
        reset_optimizer: bool,
        reset_after_fade: bool = False,
    ) -> None:
        self.schedule, self.default_batch, self.base_accumulation = schedule, batch_size, accumulation
        self.growing, self.reset_optimizer = list(growing), reset_optimizer
        self.reset_after_fade = reset_after_fade
        if not self.growing:
            fading = [i for i, st in enumerate(schedule.stages) if st.fade_steps]
            if fading:
                raise ValueError(
                    f"stage {fading[0]} has fade_steps, but this model does not grow: there is no new "
                    "block to fade in (set fade_steps to 0)"
                )
        self.step = 0  # the last step trained or restored

    def at(self, step: int) -> Position:
        return self.schedule.at(max(1, step))

    def micro_batch(self, step: int) -> int:
        return self.at(step).stage.micro(self.default_batch)

    def accumulation(self, step: int) -> int:
        return self.base_accumulation * self.at(step).stage.splits(self.default_batch)

    def data_shape(self, step: int) -> tuple[int, int]:
        """The (resolution, micro-batch) the stream must deliver for ``step``."""
        return self.at(step).stage.resolution, self.micro_batch(step)

    @property
    def resolution(self) -> int:
        return self.at(self.step).stage.resolution

    def set_networks(self, pos: Position) -> None:
        for net in self.growing:
            net.set_resolution(pos.stage.resolution, pos.alpha)

    def begin_step(self, step: int, optimizers: Sequence[Any]) -> tuple[Position, dict[str, float]]:
        """Move to ``step``: networks, optimizer reset at a stage's first step, metrics to log."""
        pos = self.at(step)
        self.step = step
        self.set_networks(pos)
        if self.resets_at(pos):
            for opt in optimizers:
                opt.state.clear()  # ProGAN: Adam's moments start afresh
        metrics = {"stage": float(pos.index), "alpha": pos.alpha, "resolution": float(pos.stage.resolution)}
        return pos, metrics

    def resets_at(self, pos: Position) -> bool:
        """Whether the optimizers start afresh at this step: a stage's first step (``reset_optimizer``)
        and the first step after its fade, whose alpha is 1 (``reset_after_fade``). ProGAN's
        ``reset_opt_for_new_lod`` resets at both moments, when the level of detail leaves an integer
        and when it reaches the next one."""
        if pos.index == 0:
            return False
        start = self.reset_optimizer and pos.step_in_stage == 1
        fade = pos.stage.fade_steps
        return start or (self.reset_after_fade and fade > 0 and pos.step_in_stage == fade)

    def state_dict(self) -> dict[str, Any]:
        return self.schedule.state_dict(max(1, self.step))

    def load_state_dict(self, state: Mapping[str, Any]) -> str | None:
        """Restore the position (and the networks' stage, so sampling a checkpoint uses it); a
        warning when the schedule was edited since the checkpoint."""
        warning = self.schedule.check_resume(state)
        self.step = int(state["step"])
        self.set_networks(self.at(self.step))
        return warning


def build_driver(
    cfg: Any,
    *,
    images_per_micro_step: int,
    growing: Sequence[Any],
    allowed: Sequence[int],
    final_resolution: int,
    world_size: int,
) -> StageDriver:
    """The ``stages`` config block as a :class:`StageDriver`. ``images_per_micro_step`` is what one
    unit of batch size costs per optimizer step and process beyond the batch (a GAN's D steps x
    ``trainer.accumulation``), used to turn ``images:`` lengths into steps; ``allowed`` lists the
    resolutions the model can train at."""
    items = [dict(d) for d in cfg.stages.schedule]
    default_batch = int(cfg.data.batch_size)
    per_step = {
        i: int(d.get("batch_size") or default_batch) * images_per_micro_step * world_size
        for i, d in enumerate(items)
    }
    schedule = StageSchedule.from_config(
        items,
        per_step,
        batch_size=default_batch,
        max_micro_batch=int(cfg.stages.get("max_micro_batch", 0) or 0),
    )
    for s in schedule.stages:
        if s.resolution not in allowed:
            raise ValueError(
                f"stage resolution {s.resolution} is not one of the model's {', '.join(map(str, allowed))}"
            )
    if str(cfg.stages.get("downsample", "lanczos")) == "box":
        for s in schedule.stages:
            ratio, rest = divmod(final_resolution, s.resolution)
            if rest or ratio & (ratio - 1):
                raise ValueError(
                    f"stages.downsample=box halves images: stage resolution {s.resolution} is not "
                    f"{final_resolution} / 2^k"
                )
    if schedule.stages[-1].resolution != final_resolution:
        raise ValueError(
            f"the last stage must reach the dataset's resolution {final_resolution} "
            f"(it ends at {schedule.stages[-1].resolution})"
        )
    return StageDriver(
        schedule,
        batch_size=default_batch,
        accumulation=max(1, int(cfg.trainer.get("accumulation", 1))),
        growing=growing,
        reset_optimizer=bool(cfg.stages.reset_optimizer),
        reset_after_fade=bool(cfg.stages.get("reset_after_fade", False)),
    )


class StagedTask(Task):
    """A task's side of the stages (the GAN and tokenizer tasks derive from it): follow the driver at
    each step (networks, micro-batch, accumulation of every optimizer step, per-stage learning
    rates), tell the loop the data shape, and keep the position in the checkpoint."""

    staging: StageDriver | None = None
    batch_size: int
    accumulation: int
    final_resolution: int
    stage_lr: tuple[float | None, float | None] = (None, None)  # (lr_g, lr_d) of the stage, if set

    def stage_updates(self) -> list[Any]:
        """The task's optimizer steps (``bigtrain.train.step``): their accumulation follows the stage."""
        raise NotImplementedError

    def follow_stage(self, step: int) -> dict[str, float]:
        """Networks, batch split and optimizers for ``step`` of the schedule; its metrics."""
        if self.staging is None:
            return {}
        updates = self.stage_updates()
        pos, metrics = self.staging.begin_step(step, [u.optimizer for u in updates])
        self.batch_size = self.staging.micro_batch(step)
        self.accumulation = self.staging.accumulation(step)
        for u in updates:
            u.accumulation = self.accumulation
        self.stage_lr = (pos.stage.lr_g, pos.stage.lr_d)
        return metrics

    def data_shape(self, step: int) -> tuple[int, int] | None:
        return None if self.staging is None else self.staging.data_shape(step)

    def stage_schedule(self) -> StageSchedule | None:
        return None if self.staging is None else self.staging.schedule

    def current_resolution(self) -> int:
        return self.staging.resolution if self.staging is not None else self.final_resolution

    def save_stages(self, task_state: dict[str, Any]) -> None:
        if self.staging is not None:
            task_state["stages"] = self.staging.state_dict()

    def load_stages(self, task_state: Mapping[str, Any]) -> None:
        saved = task_state.get("stages")
        if self.staging is not None and saved is not None:
            warning = self.staging.load_state_dict(saved)  # sampling a checkpoint uses its stage
            if warning:
                log.warning(warning)
            self.follow_stage(self.staging.step)


def fade_reals(x: Tensor, alpha: float) -> Tensor:
    """ProGAN's ``process_reals`` (FadeLOD) during a fade: each real image moves towards its 2x2
    box-averaged, nearest-upsampled self by ``1 - alpha`` (the fractional level of detail), so D
    compares reals and fakes blurred alike while G's new block fades in."""
    if alpha >= 1.0:
        return x
    coarse = F.interpolate(F.avg_pool2d(x, 2), scale_factor=2, mode="nearest")
    return torch.lerp(x, coarse, 1.0 - alpha)


__all__ = ["Position", "Stage", "StageDriver", "StageSchedule", "StagedTask", "build_driver", "fade_reals"]
