"""The training config as Hydra composes it: the YAML under ``bigtrain/configs/`` merged onto the typed
schema (``bigtrain.config.schema``) and, under ``model.arch``, onto the chosen model family's
options dataclass (``bigtrain.models``), so a wrong key or type stops at composition.

:func:`register` puts them into Hydra's ConfigStore: the shared schema as ``train_schema``, each
task's extension of it as ``<task>_schema`` (which ``bigtrain/configs/task/<task>.yaml`` lists first) and each
family's options as ``model/arch/<family>`` (which ``bigtrain/configs/model/<family>.yaml`` lists first). It
lives here, above ``config``, ``models`` and the tasks, because it needs all three. :func:`compose_config` is the
same composition outside the Hydra app (``bigtrain info``, ``doctor``, ``train --help``, tests):
what it reports is what a run with those overrides will use; a bad override is one
:class:`ConfigError` line, which for ``model.arch`` names the family's valid keys.
"""

from __future__ import annotations

from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.config_store import ConfigStore
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from bigtrain.config.launcher import apply_launcher
from bigtrain.config.schema import register as register_schema
from bigtrain.config.sweep import job_dirname
from bigtrain.errors import ConfigError
from bigtrain.models.registry import families
from bigtrain.train.task import all_tasks

CONFIG_DIR = str(Path(__file__).resolve().parents[1] / "configs")  # shipped inside the package


def register() -> None:
    """The schemas of the run, of every task and of every model family's ``model.arch``, and the
    resolver that names a sweep's job folders (``bigtrain/configs/train.yaml``'s ``hydra.sweep.subdir``)."""
    register_schema()
    OmegaConf.register_new_resolver(
        "bigtrain_job", lambda task, fixed: job_dirname(list(task), list(fixed or [])), replace=True
    )
    store = ConfigStore.instance()
    for name, cls in all_tasks().items():
        store.store(name=f"{name}_schema", node=cls.config)
    for name, fam in families().items():
        store.store(group="model/arch", name=name, node=fam.arch)


def _arch_error(overrides: list[str], message: str) -> str | None:
    """For an unknown ``model.arch.KEY`` override: the one line that names the family's keys."""
    bad = next((o for o in overrides if o.lstrip("+~").startswith("model.arch.")), None)
    if bad is None or "model.arch" not in message:
        return None
    key = bad.lstrip("+~").split("=", 1)[0].removeprefix("model.arch.")
    try:
        cfg = _compose([o for o in overrides if o != bad])
    except (HydraException, OmegaConfBaseException):
        return None
    fam = families().get(str(cfg.model.name))
    if fam is None:
        return None
    from dataclasses import fields

    names = [f.name for f in fields(fam.arch)]
    if key in names:  # a known key with a bad value: Hydra's message says why
        return None
    return f"model.arch.{key}: not an option of model={fam.name}; valid: {', '.join(names) or '(none)'}"


def _compose(overrides: list[str], world_size: int | None = None) -> DictConfig:
    with initialize_config_dir(CONFIG_DIR, version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    apply_launcher(cfg, world_size=world_size)
    return cfg


def _missing_key_error(overrides: list[str]) -> str | None:
    """For an override of a key the run's config does not have (``vq.disc_start`` on a GAN run,
    ``optim.g.lr`` on a tokenizer): one line naming the task and what the parent does have."""
    for o in overrides:
        key = o.lstrip("+~").split("=", 1)[0]
        if o.startswith("~") or "=" not in o or "/" in key or key.startswith("hydra."):
            continue
        try:
            cfg = _compose([x for x in overrides if x != o])
        except (HydraException, OmegaConfBaseException):
            continue
        parts = key.split(".")
        for i in range(1, len(parts) + 1):
            prefix = ".".join(parts[:i])
            if OmegaConf.select(cfg, prefix, default=_ABSENT) is _ABSENT:
                parent = cfg if i == 1 else OmegaConf.select(cfg, ".".join(parts[: i - 1]))
                if not hasattr(parent, "keys"):
                    break
                where = "the config" if i == 1 else ".".join(parts[: i - 1])
                has = ", ".join(str(k) for k in parent)
                return f"{key}: task={cfg.task} has no {prefix} ({where} has: {has})"
    return None


_ABSENT = object()


def compose_config(overrides: list[str], world_size: int | None = None) -> DictConfig:
    """The config ``bigtrain train OVERRIDES`` runs with, resolved for the launcher's process count
    (or ``world_size``); a bad override is one :class:`ConfigError` line."""
    register()
    try:
        return _compose(overrides, world_size)
    except (HydraException, OmegaConfBaseException) as exc:
        text = " ".join(str(exc).split())
        cause = exc.__cause__
        if cause is not None and str(cause).strip():  # Hydra's "Error merging override X": the why
            text += ": " + str(cause).strip().splitlines()[0]
        better = _arch_error(overrides, text) or (
            _missing_key_error(overrides) if " not in " in text else None
        )
        raise ConfigError(better or text) from None


__all__ = ["CONFIG_DIR", "compose_config", "register"]
