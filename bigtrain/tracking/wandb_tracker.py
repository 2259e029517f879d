"""Weights & Biases tracking, offline by default: ``run.dir/wandb/offline-run-*``, uploaded with ``wandb sync``.

* params: the resolved config as the run's W&B config (nested; the UI shows dotted keys);
* metrics: ``run.log(metrics, step=step)``; sample grids: ``wandb.Image`` at their step;
* artifacts: copied into the run's files folder (``files/artifacts/<artifact_path>/``, as TensorBoard's
  ``tensorboard/artifacts/``) and saved with ``run.save`` (the Files tab), offline and online alike;
* tags (checkpoint paths, the last FID, host, commit): the run summary as ``tags/<key>``.

Resume: the W&B run id is kept in every checkpoint's ``meta.json`` (``tracker_run_id``), and the
resumed job calls ``wandb.init(id=..., resume="allow")``. Offline, each job writes its own
``offline-run-<time>-<id>`` folder with the same id; ``wandb sync`` puts them into one run. Online,
W&B ignores steps below the run's last step, so what a killed run logged after its checkpoint is
kept once (not twice) and the resumed job's repeat of those steps is dropped with a warning.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from bigtrain.tracking.base import FileModelMixin

log = logging.getLogger(__name__)


class WandbTracker(FileModelMixin):
    def __init__(
        self,
        run_dir: str | Path,
        project: str,
        run_name: str,
        params: dict[str, Any],
        run_id: str | None = None,
        entity: str = "",
        mode: str = "offline",
        tags: dict[str, str] | None = None,
    ):
        import wandb

        self._wandb = wandb
        root = Path(run_dir)
        root.mkdir(parents=True, exist_ok=True)  # wandb puts its folder "wandb/" under dir
        self.run = wandb.init(
            project=project,
            entity=entity or None,
            name=run_name,
            id=run_id,  # None: a new run with a new id
            resume="allow",
            dir=str(root),
            mode=mode,
            config=params if run_id is None else None,  # as MLflow: params once, when the run starts
            settings=wandb.Settings(console="off", x_disable_stats=True, silent=True),
        )
        self.run_id: str | None = self.run.id
        if run_id is not None:
            log.info("continuing W&B run %s", self.run_id)
        self.set_tags(tags or {})

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        self.run.log({k: float(v) for k, v in metrics.items()}, step=step)

    def log_image(self, image: np.ndarray, key: str, step: int) -> None:
        """``image``: uint8 HxWxC; the Media panel with a step slider."""
        self.run.log({key: self._wandb.Image(image)}, step=step)

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        src = Path(path)
        files = Path(self.run.dir)
        dest = files / "artifacts" / (artifact_path or "") / src.name  # not over W&B's own config.yaml
        dest.parent.mkdir(parents=True, exist_ok=True)
        if src.is_dir():
            shutil.copytree(src, dest, dirs_exist_ok=True)
            pattern = str(dest / "**" / "*")
        else:
            shutil.copy2(src, dest)
            pattern = str(dest)
        self.run.save(pattern, base_path=str(files), policy="now")

    def set_tags(self, tags: dict[str, str]) -> None:
        if tags:
            self.run.summary.update({f"tags/{k}": str(v) for k, v in tags.items()})

    def close(self, status: str = "FINISHED") -> None:
        self.set_tags({"status": status})
        self.run.finish(exit_code=0 if status == "FINISHED" else 1)


__all__ = ["WandbTracker"]
