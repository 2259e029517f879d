"""Resolution stages: ProGAN's growing with fade-in (Karras et al. 2018) and plain resolution
stages without growing (LlamaGen's 256 -> 512), as one schedule in the config.

A schedule is a list of stages, each with a resolution, a length (``steps``, or ``images`` seen
over all processes), an optional batch size and learning rates, and ``fade_steps``: for that many
steps at the start of the stage a newly grown block is blended in with weight ``alpha`` rising
linearly from 0 to 1 (ProGAN's fade-in; 0 = the stage starts at full weight, e.g. without growing).
Position in the schedule is a pure function of the global step, so a run resumed in the middle of
a fade continues with the same ``alpha`` bit for bit; the checkpoint still records the stage and
``alpha`` (``state_dict``) so that a changed schedule is noticed on resume.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Stage:
    resolution: int
    steps: int  # the stage's length in optimizer steps (fade included)
    fade_steps: int = 0
    batch_size: int | None = None  # per process; None = data.batch_size
    lr_g: float | None = None  # None = optim.g.lr
    lr_d: float | None = None


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
            if i and s.resolution < stages[i - 1].resolution:
                raise ValueError(
                    f"stage {i}: resolutions must not decrease ({stages[i - 1].resolution} -> {s.resolution})"
                )
        if stages[0].fade_steps:
            raise ValueError("stage 0 has nothing to fade in from: its fade_steps must be 0")
        self.stages = tuple(stages)
        self.ends = [sum(s.steps for s in self.stages[: i + 1]) for i in range(len(self.stages))]

    @classmethod
    def from_config(
        cls, items: Sequence[Mapping[str, Any]], images_per_step: Mapping[int, int]
    ) -> StageSchedule:
        """Stages from config dicts; a stage given in ``images`` is converted to steps with
        ``images_per_step[i]`` (its batch x accumulation x processes), rounding up."""
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
            stages.append(
                Stage(int(d["resolution"]), steps, fade, d.get("batch_size"), d.get("lr_g"), d.get("lr_d"))
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


__all__ = ["Position", "Stage", "StageSchedule"]
