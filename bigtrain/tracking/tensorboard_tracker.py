"""TensorBoard tracking: event files in ``run.dir/tensorboard/`` written with torch's ``SummaryWriter``.

What goes where:

* params: the flattened resolved config as the HParams plugin's *session start info* (one row per run
  in the HPARAMS tab, comparable and filterable across runs under one ``--logdir``), and the same
  config as ``config.yaml`` text (TEXT tab: exact, with lists and long values the hparams table
  shortens). Only the session start info is written, not an experiment summary: TensorBoard then
  builds the experiment from every run's hparams and scalar tags, so runs with different keys or
  metrics share one table;
* metrics: scalars at their step; sample grids: images at their step;
* artifacts: TensorBoard has no artifact store, so files are copied to ``tensorboard/artifacts/``;
* tags (checkpoint paths, the last FID, the run's status): ``tensorboard/tags.json``.

Resume: the same folder. A run resumed from step S writes a restart marker at S + 1 (the
``purge_step`` of ``SummaryWriter``), and TensorBoard drops every event of step S + 1 or later
written before it: what a killed run logged after its last checkpoint never shows twice. Step S
itself is kept: the killed run logged it before saving the checkpoint, and the resumed run starts
at S + 1. A fresh run over an old folder marks step 0, which hides all of the old run.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from bigtrain.tracking.base import FileModelMixin, flatten

FLUSH_SECS = 10  # a killed job loses at most this much of its log (SummaryWriter's default: 120)


def hparam_values(params: dict[str, Any]) -> dict[str, bool | int | float | str]:
    """The nested config as flat hparams: numbers and booleans keep their type (so the HPARAMS tab
    sorts and filters them as numbers), anything else is its string."""
    out: dict[str, bool | int | float | str] = {}

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, dict) and node:
            for k, v in node.items():
                walk(v, f"{prefix}{k}.")
        elif isinstance(node, bool | int | float | str):
            out[prefix[:-1]] = node
        else:
            out[prefix[:-1]] = str(node)

    walk(params, "")
    return out


class TensorBoardTracker(FileModelMixin):
    def __init__(
        self,
        log_dir: str | Path,
        params: dict[str, Any],
        resume_step: int | None = None,
        config_text: str | None = None,
        tags: dict[str, str] | None = None,
    ):
        from torch.utils.tensorboard import SummaryWriter

        self.log_dir = Path(log_dir)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.run_id: str | None = str(self.log_dir.resolve())
        has_events = any(self.log_dir.glob("events.out.tfevents.*"))
        purge = (0 if resume_step is None else resume_step + 1) if has_events else None
        self.writer = SummaryWriter(str(self.log_dir), purge_step=purge, flush_secs=FLUSH_SECS)
        self.step = resume_step or 0
        if resume_step is None:
            self._log_params(params, config_text)
        self.set_tags(tags or {})

    def _log_params(self, params: dict[str, Any], config_text: str | None) -> None:
        from torch.utils.tensorboard.summary import hparams

        _, session_start, _ = hparams(hparam_values(params), {})
        self.writer.file_writer.add_summary(session_start, 0)
        text = config_text if config_text is not None else json.dumps(flatten(params), indent=1)
        # Markdown: indented by four spaces, the YAML shows as a code block
        self.writer.add_text("config", "\n".join("    " + line for line in text.splitlines()), 0)

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        for k, v in metrics.items():
            self.writer.add_scalar(k, float(v), step)
        self.step = max(self.step, step)

    def log_image(self, image: np.ndarray, key: str, step: int) -> None:
        """``image``: uint8 HxWxC (or HxW); shown in the IMAGES tab with a step slider."""
        self.writer.add_image(key, image, step, dataformats="HWC" if image.ndim == 3 else "HW")
        self.step = max(self.step, step)

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        src = Path(path)
        dest = self.log_dir / "artifacts" / (artifact_path or "") / src.name
        dest.parent.mkdir(parents=True, exist_ok=True)
        if src.is_dir():
            shutil.copytree(src, dest, dirs_exist_ok=True)
        else:
            shutil.copy2(src, dest)

    def set_tags(self, tags: dict[str, str]) -> None:
        if not tags:
            return
        path = self.log_dir / "tags.json"
        current = json.loads(path.read_text()) if path.exists() else {}
        current.update({k: str(v) for k, v in tags.items()})
        part = path.with_name(path.name + ".part")
        part.write_text(json.dumps(current, indent=1, sort_keys=True) + "\n")
        part.replace(path)  # readers never see half a file

    def close(self, status: str = "FINISHED") -> None:
        self.set_tags({"status": status})
        self.writer.close()


__all__ = ["TensorBoardTracker", "hparam_values"]
