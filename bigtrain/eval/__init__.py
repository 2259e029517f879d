"""Evaluation: FID through clean-fid's pieces, with named feature networks and cached reference stats.

``from bigtrain.eval import NAME`` works for every public name of ``bigtrain.eval.features`` and
``bigtrain.eval.fid``, loaded on first use (PEP 562): importing ``bigtrain.eval.features`` for its
error type must not pull in clean-fid and torchvision (about 2 s), which every CLI error exit and
``--help`` would otherwise pay.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_MODULES = ("bigtrain.eval.features", "bigtrain.eval.fid")  # the light one first


def __getattr__(name: str) -> Any:
    for path in _MODULES:
        module = import_module(path)
        if name in module.__all__:
            return getattr(module, name)
    raise AttributeError(f"module 'bigtrain.eval' has no attribute {name!r}")
