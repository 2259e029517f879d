"""The checkpoint manager: when to save, what to save, and where a run resumes from.

Components register once (torchtitan's ``CheckpointManager``, edm2's ``CheckpointIO(**objects)``):
anything with ``state_dict`` / ``load_state_dict`` is one file of the checkpoint, shared by all
ranks (written by rank 0) or one per rank (``rng.rank3``); a *group* (a task) contributes several
files at once (``G``, ``D``, ``opt_G``, ...); an engine with its own files (DeepSpeed) is a
:class:`~bigtrain.checkpoint.io.NativeState` that saves and loads collectively. The manager owns

* the save interval (``trainer.ckpt_every``) and the once-per-step rule: a step is saved at most
  once, so the end of a run or a preemption right after a periodic save writes nothing new;
* keep-last-k (``trainer.keep_last``), through :func:`~bigtrain.checkpoint.io.save_checkpoint`,
  which writes atomically with content digests (the folder layout ``bigtrain inspect`` reads);
* the resume policy (``resume=auto|never|best|PATH``): the newest checkpoint that verifies, none,
  the best by ``trainer.keep_best``, or exactly the one named; components load in registration order.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Protocol

from bigtrain import distributed as bdist
from bigtrain.checkpoint.best import best_checkpoint
from bigtrain.checkpoint.io import Checkpoint, NativeState, latest_valid, open_checkpoint, save_checkpoint
from bigtrain.errors import CheckpointError

log = logging.getLogger(__name__)


class Stateful(Protocol):
    def state_dict(self) -> Any: ...

    def load_state_dict(self, state: Any) -> None: ...


class Group(Protocol):
    """Several components at once, by name (a task: ``{"G": ..., "opt_G": ...}``)."""

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, states: Mapping[str, Any]) -> None: ...


LIKELY_CAUSE = (
    "likely cause: the run's networks or optimizers differ from those that wrote the checkpoint "
    "(another model, width or normalisation, or a checkpoint of another run); start a new run.dir"
)


def load_component(name: str, target: Stateful, states: Mapping[str, Any]) -> None:
    """``target.load_state_dict(states[name])``; a missing component or a state that does not fit
    is one :class:`CheckpointError` line naming the component, not a ``load_state_dict`` traceback."""
    if name not in states:
        raise CheckpointError(
            f"the checkpoint has no '{name}' component; likely cause: it was written by a run of "
            "another task or model"
        )
    try:
        target.load_state_dict(states[name])
    except (RuntimeError, ValueError, KeyError) as exc:
        lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
        detail = lines[1] if len(lines) > 1 and lines[0].startswith("Error(s) in loading") else lines[0]
        more = f" (and {len(lines) - 2} more)" if len(lines) > 2 and lines[0].startswith("Error(s)") else ""
        raise CheckpointError(
            f"checkpoint component '{name}' does not fit this run: {detail}{more}; {LIKELY_CAUSE}"
        ) from None


class CheckpointManager:
    def __init__(self, run_dir: str | Path, *, every: int, keep_last: int, resume: str, config_yaml: str):
        self.run_dir, self.every, self.keep_last = Path(run_dir), every, keep_last
        self.policy, self.config_yaml = str(resume), config_yaml
        self._entries: list[tuple[str, Any]] = []  # (kind, obj) in registration (= load) order
        self.last: Path | None = None  # the newest checkpoint written or resumed from
        self.last_step = -1

    # -- registration -------------------------------------------------------------------------------
    def add(self, name: str, obj: Stateful, *, per_rank: bool = False) -> None:
        """One component: ``name.pt`` (rank 0 writes it), or ``name.rankR.pt`` on every rank."""
        self._entries.append(("rank" if per_rank else "shared", (name, obj)))

    def add_group(self, group: Group) -> None:
        """A group's ``state_dict()`` keys are its components' names."""
        self._entries.append(("group", group))

    def add_native(self, native: NativeState) -> None:
        self._entries.append(("native", native))

    # -- saving ---------------------------------------------------------------------------------------
    def due(self, step: int) -> bool:
        return step % self.every == 0

    def saved(self, step: int) -> bool:
        return self.last_step == step

    def save(self, step: int, meta: Mapping[str, Any]) -> Path:
        """Collective. Write step ``step`` unless it is already saved; the checkpoint's folder."""
        if self.saved(step) and self.last is not None:
            return self.last
        shared: dict[str, Any] = {}
        per_rank: dict[str, Any] = {}
        natives: list[NativeState] = []
        for kind, obj in self._entries:
            if kind == "group":
                shared.update(obj.state_dict())
            elif kind == "native":
                natives.append(obj)
            else:
                name, comp = obj
                (per_rank if kind == "rank" else shared)[name] = comp.state_dict()
        self.last = save_checkpoint(
            self.run_dir, step, shared, per_rank, dict(meta), self.config_yaml, self.keep_last, natives
        )
        self.last_step = step
        return self.last

    # -- resuming -------------------------------------------------------------------------------------
    def find(self) -> Checkpoint | None:
        """The checkpoint the policy names: ``auto`` the newest that verifies, ``never`` none,
        else the folder given (verified; a damaged one is an error, not a fallback)."""
        if self.policy == "never":
            return None
        if self.policy == "auto":
            return latest_valid(self.run_dir)
        if self.policy == "best":
            best = best_checkpoint(self.run_dir)
            if best is None:
                raise CheckpointError(
                    f"resume=best: {self.run_dir}/checkpoints has no best checkpoint "
                    "(trainer.keep_best.count > 0 and an evaluation make one)"
                )
            ck = open_checkpoint(best)
            ck.verify()
            return ck
        ck = open_checkpoint(self.policy)
        ck.verify()
        return ck

    def resume(
        self,
        on_loaded: Callable[[Checkpoint], None] | None = None,
        before_load: Callable[[Checkpoint], None] | None = None,
    ) -> Checkpoint | None:
        """Load every registered component from :meth:`find`'s checkpoint, in registration order;
        ``before_load`` may refuse the checkpoint (raise) before any state is touched."""
        ck = self.find()
        if ck is None:
            return None
        if before_load is not None:
            before_load(ck)
        rank = bdist.rank()
        names = ck.component_names()
        singles = {obj[0] for kind, obj in self._entries if kind in ("shared", "rank")}
        for kind, obj in self._entries:
            if kind == "group":  # every shared file that no other component claims
                own = [n for n in names if "." not in n and "/" not in n and n not in singles]
                obj.load_state_dict({n: ck.load(n) for n in own})
            elif kind == "native":
                obj.load_native(ck)
            elif kind == "shared":
                name, comp = obj
                load_component(name, comp, {name: ck.load(name)})
            else:
                name, comp = obj
                mine = f"{name}.rank{rank}"
                if mine not in names:
                    log.warning(
                        "checkpoint was written by %s ranks; rank %d takes rank 0's %s state",
                        ck.meta.get("world_size"),
                        rank,
                        name,
                    )
                    mine = f"{name}.rank0"
                load_component(name, comp, {name: ck.load(mine)})
        self.last, self.last_step = ck.path, ck.step
        if on_loaded is not None:
            on_loaded(ck)
        return ck


__all__ = ["CheckpointManager", "Group", "Stateful", "load_component"]
