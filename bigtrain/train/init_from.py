"""``init_from.path=PATH``: a new run starts from another run's network weights (fine-tuning).

Unlike ``resume``, nothing else comes along: the step starts at 0, the optimizers and the data
position start fresh, the run's own config decides everything else. The source may be a checkpoint
folder, a run folder (its newest valid checkpoint) or a ``bigtrain export`` folder; it is read for
tensors only (``weights_only`` / safetensors), so a checkpoint from elsewhere cannot run code.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bigtrain.checkpoint.digest import digest
from bigtrain.checkpoint.exported import COMPONENTS, is_export, read_folder
from bigtrain.checkpoint.io import resolve_checkpoint
from bigtrain.errors import ConfigError
from bigtrain.train.task import Task

log = logging.getLogger(__name__)


def source_weights(path: str | Path, wanted: Sequence[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(weights by component, provenance)`` of the networks in ``wanted`` that ``path`` holds."""
    p = Path(path).expanduser()
    if is_export(p):
        desc, weights = read_folder(p)
        names = COMPONENTS.get(str(desc.get("kind")), ())
        found = {n: weights for n in names if n in wanted}
        step = int(desc.get("source", {}).get("step", 0))
        return found, {"path": str(p.resolve()), "kind": "export", "step": step}
    if (p / "meta.json").is_file() or (p / "checkpoints").is_dir():
        ck = resolve_checkpoint(p)
    else:
        raise ConfigError(
            f"init_from.path={p}: not a checkpoint folder (meta.json), a run folder or an export (config.json)"
        )
    names = [n for n in ck.component_names() if n in wanted]
    found = {n: ck.load(n, weights_only=True) for n in names}
    return found, {"path": str(ck.path.resolve()), "kind": "checkpoint", "step": ck.step}


def init_weights(task: Task, path: str, modules: Sequence[str]) -> dict[str, Any]:
    """Load ``path``'s network weights into ``task`` (all it has, or ``modules``); what was loaded,
    with digests, for ``meta.json`` and the tracker."""
    nets = task.weight_modules()
    unknown = [m for m in modules if m not in nets]
    if unknown:
        raise ConfigError(
            f"init_from.modules: {', '.join(unknown)} not among task={task.name}'s networks ({', '.join(nets)})"
        )
    wanted = list(modules) or list(nets)
    weights, source = source_weights(path, wanted)
    missing = [m for m in modules if m not in weights]
    if missing or not weights:
        has = ", ".join(weights) or "none of them"
        raise ConfigError(
            f"init_from.path={path} has no {', '.join(missing or wanted)} weights for task={task.name} (it has: {has})"
        )
    loaded = task.init_weights(weights)
    digests = {n: digest(nets[n].state_dict()) for n in loaded}
    log.info(
        "initialised %s from %s (step %d of the source)", ", ".join(loaded), source["path"], source["step"]
    )
    return {**source, "modules": loaded, "digests": digests}


__all__ = ["init_weights", "source_weights"]
