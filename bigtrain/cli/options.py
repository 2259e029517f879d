"""What a config can choose, as text for ``bigtrain train --help`` and ``bigtrain info --help``:
the tasks, the model families with their typed ``model.arch`` options (the selected family's in
full), the metrics, and the config groups."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from bigtrain.config.typed import describe_options
from bigtrain.eval.registry import METRICS
from bigtrain.models.registry import families
from bigtrain.train.compose import CONFIG_DIR
from bigtrain.train.task import all_tasks


def _value(v: Any) -> str:
    return "null" if v is None else str(v).lower() if isinstance(v, bool) else str(v)


def arch_options(model: str, current: Any | None = None) -> str:
    """``model.arch.*`` of one family: name, type, value (the config's, when it differs from the
    default: both), help."""
    fam = families()[model]
    rows = describe_options(fam.arch)
    if not rows:
        return f"model={model} has no model.arch options"
    width = max(len(r[0]) for r in rows)
    lines = [f"model.arch.* of model={model} ({fam.help}):"]
    for name, kind, default, text in rows:
        now = current.get(name, default) if current is not None else default
        value = _value(now) if now == default else f"{_value(now)} (default {_value(default)})"
        lines.append(f"  {name.ljust(width)}  {kind} = {value}  {text}")
    return "\n".join(lines)


def choices(cfg: Any | None = None) -> str:
    """Everything selectable; with a composed ``cfg``, its task and model family in detail."""
    groups = sorted(p.name for p in Path(CONFIG_DIR).iterdir() if p.is_dir())
    lines = ["config groups (GROUP=OPTION):"]
    for g in groups:
        opts = sorted(f.stem for f in (Path(CONFIG_DIR) / g).glob("*.yaml"))
        lines.append(f"  {g}: {', '.join(opts)}")
    lines.append("tasks (task=NAME):")
    for name, cls in all_tasks().items():
        models = ", ".join(families(cls.model_kind))
        lines.append(
            f"  {name}: models {models}; sections {', '.join(cls.own_sections()) or '-'}; "
            f"optimizers {', '.join('optim.' + o for o in cls.optimizer_blocks())}; "
            f"metrics by default {', '.join(cls.default_metrics)}"
        )
    lines.append("metrics (eval.metrics=[...]):")
    for m in METRICS.values():
        lines.append(f"  {m.name}: {m.help}")
    if cfg is not None and str(cfg.model.name) in families():
        current = OmegaConf.to_container(cfg.model.arch, resolve=True)
        lines.append(arch_options(str(cfg.model.name), current if isinstance(current, dict) else None))
    else:
        lines.append("model families (model=NAME; `model=NAME --help` lists its model.arch options):")
        for name, fam in families().items():
            lines.append(f"  {name} ({fam.kind}): {fam.help}")
    return "\n".join(lines)


__all__ = ["arch_options", "choices"]
