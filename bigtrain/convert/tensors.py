"""What the formats share: reading a reference's ``torch.save`` file for tensors only, and checking
renamed tensors against bigtrain's network before :func:`~bigtrain.convert.base.convert` loads them,
so that a file that does not fit is one line naming the reference's tensor."""

from __future__ import annotations

import logging
import pickle
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bigtrain.errors import CheckpointError

log = logging.getLogger(__name__)


class Placeholder:
    """Stands in for a class or function a checkpoint names beside its tensors (a Lightning
    callback, ``argparse.Namespace``, ...): it takes any arguments and state and runs nothing."""

    def __new__(cls, *args: Any, **kwargs: Any) -> Placeholder:  # noqa: ARG004
        return object.__new__(cls)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.args, self.kwargs = args, kwargs

    def __setstate__(self, state: Any) -> None:
        self.state = state


def _placeholder(full_name: str) -> type:
    module, _, name = full_name.rpartition(".")
    return type(name, (Placeholder,), {"__module__": module, "__qualname__": name})


def load_tensors(path: Path) -> tuple[Any, list[str]]:
    """``(the object torch.save wrote, the names read as placeholders)``, with the tensors-only
    unpickler (``weights_only=True``). Whatever else the file names (training bookkeeping such as a
    Lightning ``ModelCheckpoint`` class or the ``argparse.Namespace`` of its command line) becomes an
    inert :class:`Placeholder`: no code from the file runs; the names are logged and returned."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True), []
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        try:
            names = sorted(torch.serialization.get_unsafe_globals_in_checkpoint(str(path)))
        except Exception as inner:  # not a zip checkpoint (torch < 1.6's format), unreadable...
            raise CheckpointError(
                f"{path}: not readable as tensors only ({first}); the objects it names cannot be "
                f"listed either ({inner}): load it with the reference's code and torch.save the state dict"
            ) from None
    log.warning("%s names %s besides its tensors: read as inert placeholders", path, ", ".join(names))
    with torch.serialization.safe_globals([(_placeholder(n), n) for n in names]):
        try:
            return torch.load(path, map_location="cpu", weights_only=True), names
        except pickle.UnpicklingError as exc:
            raise CheckpointError(
                f"{path}: not readable as tensors only: {str(exc).splitlines()[0]}"
            ) from None


def state_dict_in(obj: Any, path: Path, keys: Iterable[str]) -> dict[str, torch.Tensor]:
    """The state dict under the first of ``keys`` that ``obj`` has (``obj`` itself when it is a
    flat dict of tensors); one ``CheckpointError`` line otherwise."""
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path}: holds a {type(obj).__name__}, not a dict with a state dict")
    for key in keys:
        if isinstance(obj.get(key), Mapping):
            return dict(obj[key])
    if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return dict(obj)
    raise CheckpointError(
        f"{path}: no state dict under {' / '.join(repr(k) for k in keys)} (it has: {', '.join(map(str, obj))})"
    )


def fit(
    src: Path,
    component: str,
    weights: Mapping[str, torch.Tensor],
    net: nn.Module,
    reference_name: Callable[[str], str],
    bookkeeping: Iterable[str] = (),
    hint: Callable[[str], str] = lambda _name: "",
) -> dict[str, torch.Tensor]:
    """``weights`` (bigtrain's names) checked against ``net``: every tensor of ``net`` present with
    its shape, nothing left over. bigtrain's own buffers whose names end with one of ``bookkeeping``
    (code-usage counters the reference has not) keep ``net``'s values. Errors name the reference's
    tensor (``reference_name`` of bigtrain's), with ``hint(bigtrain name)`` appended."""
    own = net.state_dict()
    extra = sorted(set(weights) - set(own))
    if extra:
        raise CheckpointError(
            f"{src}: tensor {reference_name(extra[0])} has no place in bigtrain's {component}"
            f"{f' (and {len(extra) - 1} more)' if len(extra) > 1 else ''}; the preset's "
            f"model.arch does not match the checkpoint{hint(extra[0])}"
        )
    out: dict[str, torch.Tensor] = {}
    for name, mine in own.items():
        if name not in weights:
            if name.endswith(tuple(bookkeeping)):
                out[name] = mine
                continue
            raise CheckpointError(
                f"{src}: no tensor {reference_name(name)} (bigtrain's {component}.{name}); the preset's "
                f"model.arch does not match the checkpoint{hint(name)}"
            )
        theirs = weights[name]
        if tuple(theirs.shape) != tuple(mine.shape):
            raise CheckpointError(
                f"{src}: tensor {reference_name(name)} is {list(theirs.shape)}, bigtrain's "
                f"{component}.{name} is {list(mine.shape)}{hint(name)}"
            )
        out[name] = theirs.to(mine.dtype) if theirs.is_floating_point() else theirs
    return out


__all__ = ["Placeholder", "fit", "load_tensors", "state_dict_in"]
