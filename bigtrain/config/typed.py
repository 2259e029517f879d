"""Typed option blocks that are not part of the fixed schema: a model family's ``model.arch``.

The schema types ``model.arch`` as a free mapping because its keys depend on ``model.name``. Each
family declares its options as a dataclass (each field with a ``help`` in its metadata); this
module turns the mapping into that dataclass, so a wrong key or type stops in one line that lists
the family's valid keys, and ``bigtrain train --help`` / ``bigtrain info --options`` can print them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, TypeVar

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from bigtrain.errors import ConfigError

T = TypeVar("T")


def option(default: Any, help: str) -> Any:
    """A dataclass field with a default and a one-line help text (lists get a fresh copy each time)."""
    if isinstance(default, list | dict):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata={"help": help})
    return dataclasses.field(default=default, metadata={"help": help})


def parse_options(cls: type[T], raw: Mapping[str, Any] | None, prefix: str, owner: str) -> T:
    """``raw`` as a ``cls`` instance; messages name keys as ``<prefix>.<key>`` and the options as
    ``<owner>``'s (``model.arch.sn_eps``, ``model=biggan``).

    Values are converted as the config would (``"1e-4"`` -> float, a tuple -> list); an unknown key
    or an unconvertible value is a :class:`ConfigError` naming the key and every valid one."""
    raw = dict(raw or {})
    names = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
    unknown = sorted(set(raw) - set(names))
    valid = ", ".join(names) if names else "(none)"
    if unknown:
        bad = ", ".join(f"{prefix}.{k}" for k in unknown)
        raise ConfigError(f"{bad}: not an option of {owner}; valid: {valid}")
    try:
        return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(cls), raw))  # type: ignore[return-value]
    except OmegaConfBaseException as exc:
        key = getattr(exc, "full_key", None) or "?"
        first = str(exc).splitlines()[0]
        raise ConfigError(f"{prefix}.{key}: {first} ({owner}'s options: {valid})") from None


def describe_options(cls: type) -> list[tuple[str, str, Any, str]]:
    """``(name, type, default, help)`` of each option, for help texts."""
    out = []
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = None
        kind = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
        out.append((f.name, str(kind), default, str(f.metadata.get("help", ""))))
    return out


__all__ = ["describe_options", "option", "parse_options"]
