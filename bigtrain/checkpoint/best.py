"""The best checkpoints by an evaluated metric, kept outside keep-last pruning.

GAN runs can collapse late (BigGAN-PyTorch issues #75 and #91); ``trainer.keep_last`` alone then
prunes every checkpoint from before the collapse. The reference keeps copies of the best weights
(``--which_best``, ``--num_best_copies``); here ``trainer.keep_best`` keeps the ``count`` best
checkpoints by ``metric`` (``min`` or ``max``). ``checkpoints/best.json`` lists them, best first;
``checkpoints/best`` is a symlink to the best one (``resume=best``, ``bigtrain inspect``).
Only the main process writes these files.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

BEST_FILE = "best.json"
BEST_LINK = "best"
MODES = ("min", "max")


def _root(run_dir: str | Path) -> Path:
    return Path(run_dir) / "checkpoints"


def read_best(run_dir: str | Path) -> dict[str, Any]:
    """``{"metric", "mode", "best": [{"step", "value", "path"}, ...]}`` (best first), or empty."""
    path = _root(run_dir) / BEST_FILE
    if not path.is_file():
        return {"metric": "", "mode": "min", "best": []}
    return json.loads(path.read_text())


def protected_names(run_dir: str | Path) -> set[str]:
    """Checkpoint folder names that pruning must keep."""
    return {Path(e["path"]).name for e in read_best(run_dir).get("best", [])}


class BestCheckpoints:
    def __init__(self, run_dir: str | Path, count: int, metric: str, mode: str):
        if mode not in MODES:
            raise ValueError(f"trainer.keep_best.mode must be min or max, got {mode!r}")
        self.run_dir, self.count, self.metric, self.mode = Path(run_dir), count, metric, mode
        self.entries: list[dict[str, Any]] = [
            e for e in read_best(run_dir).get("best", []) if Path(e["path"]).is_dir()
        ]

    def _better(self, a: float, b: float) -> bool:
        return a < b if self.mode == "min" else a > b

    def qualifies(self, value: float) -> bool:
        """Whether a checkpoint scoring ``value`` is among the ``count`` best so far."""
        if self.count <= 0 or not math.isfinite(value):
            return False
        if len(self.entries) < self.count:
            return True
        return self._better(value, self.entries[-1]["value"])

    def record(self, step: int, value: float, path: str | Path) -> bool:
        """Add checkpoint ``path`` (step ``step``, score ``value``); write ``best.json`` and the
        ``best`` link. Returns whether it is now the best. A dropped entry's folder is left to the
        next pruning (kept while it is among the last ``keep_last``)."""
        entries = [e for e in self.entries if e["step"] != step]
        entries.append({"step": step, "value": float(value), "path": str(Path(path).resolve())})
        entries.sort(key=lambda e: (e["value"] if self.mode == "min" else -e["value"], e["step"]))
        self.entries = entries[: self.count]
        root = _root(self.run_dir)
        tmp = root / f".{BEST_FILE}.part"
        tmp.write_text(json.dumps({"metric": self.metric, "mode": self.mode, "best": self.entries}, indent=2))
        tmp.replace(root / BEST_FILE)
        link, tmp_link = root / BEST_LINK, root / f".{BEST_LINK}.part"
        if tmp_link.is_symlink() or tmp_link.exists():
            tmp_link.unlink()
        os.symlink(Path(self.entries[0]["path"]).name, tmp_link)  # relative: the run folder may move
        tmp_link.replace(link)
        return self.entries[0]["step"] == step


def best_checkpoint(run_dir: str | Path) -> Path | None:
    """The folder ``checkpoints/best`` points to, or None."""
    link = _root(run_dir) / BEST_LINK
    return link.resolve() if link.exists() else None


__all__ = ["BEST_FILE", "BestCheckpoints", "best_checkpoint", "protected_names", "read_best"]
