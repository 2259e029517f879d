"""MLflow tracking: params = the flattened resolved config, metrics per step, sample grids as images,
the data as a dataset input, the run's export as a logged model.

Uses ``MlflowClient`` with an explicit run id throughout (never the fluent ``mlflow.start_run``
global or the process-wide tracking URI), so resuming a run (the id is stored in every checkpoint)
is one argument and nothing leaks between runs in one process (tests, sweeps, a notebook's own run).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from bigtrain.tracking.base import ModelInfo, flatten

log = logging.getLogger(__name__)

MAX_PARAM_LEN = 6000  # MLflow's limit on a param value
# MLflow 3's experiment kind: "custom_model_development" opens the UI's model-training view (runs,
# charts, logged models); an experiment without the tag opens in its GenAI view (traces)
KIND_TAG, KIND = "mlflow.experimentKind", "custom_model_development"


def absolute_uri(uri: str) -> str:
    """``sqlite:///mlflow.db`` is relative to the working directory; make it absolute so that
    ``bigtrain evaluate`` run from elsewhere logs to the same store."""
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri.startswith(prefix + "/"):
        return prefix + str(Path(uri[len(prefix) :]).resolve())
    return uri


def git_commit() -> str:
    """The commit of the bigtrain checkout that runs, or 'unknown' outside a git checkout."""
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(
            ["git", "-C", str(here), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        )
        return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def default_tags() -> dict[str, str]:
    tags = {"git_commit": git_commit(), "host": socket.gethostname()}
    for var, tag in (
        ("SLURM_JOB_ID", "slurm_job_id"),
        ("SLURM_ARRAY_JOB_ID", "slurm_array_job_id"),
        ("SLURM_ARRAY_TASK_ID", "slurm_array_task_id"),
    ):
        if os.environ.get(var):
            tags[tag] = os.environ[var]
    return tags


class MLflowTracker:
    def __init__(
        self,
        uri: str,
        experiment: str,
        run_name: str,
        params: dict[str, Any],
        run_id: str | None = None,
        tags: dict[str, str] | None = None,
    ):
        import mlflow
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        self._mlflow = mlflow
        self.client = MlflowClient(tracking_uri=uri)
        self.uri = uri
        if run_id is not None:
            run = self.client.get_run(run_id)
            self.run_id = run.info.run_id
            self.client.update_run(self.run_id, status="RUNNING")
            log.info("continuing MLflow run %s", self.run_id)
        else:
            exp_id = self._experiment_id(experiment)
            run = self.client.create_run(exp_id, run_name=run_name, tags={"mlflow.runName": run_name})
            self.run_id = run.info.run_id
            flat = [Param(k, v[:MAX_PARAM_LEN]) for k, v in sorted(flatten(params).items())]
            for i in range(0, len(flat), 100):  # MLflow takes at most 100 params per batch
                self.client.log_batch(self.run_id, params=flat[i : i + 100])
        self.set_tags({**default_tags(), **(tags or {})})

    def _experiment_id(self, name: str) -> str:
        """The experiment's id, creating it if needed. Jobs of a sweep start together: when another
        job creates the experiment between our lookup and our create, use theirs."""
        from mlflow.exceptions import MlflowException

        exp = self.client.get_experiment_by_name(name)
        if exp is not None:
            if KIND_TAG not in exp.tags:  # an experiment made elsewhere: say what it holds
                self.client.set_experiment_tag(exp.experiment_id, KIND_TAG, KIND)
            return exp.experiment_id
        try:
            return self.client.create_experiment(name, tags={KIND_TAG: KIND})
        except MlflowException:
            exp = self.client.get_experiment_by_name(name)
            if exp is None:
                raise
            return exp.experiment_id

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [Metric(k, float(v), now, step) for k, v in metrics.items()]
        for i in range(0, len(batch), 1000):
            self.client.log_batch(self.run_id, metrics=batch[i : i + 1000])

    def log_image(self, image: np.ndarray, key: str, step: int) -> None:
        """``image``: uint8 HxWxC; shown in the UI's image panel with a step slider."""
        self.client.log_image(self.run_id, image, key=key, step=step)

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        self.client.log_artifact(self.run_id, str(path), artifact_path)

    def set_tags(self, tags: dict[str, str]) -> None:
        for k, v in tags.items():
            self.client.set_tag(self.run_id, k, v)

    def log_dataset(self, name: str, digest: str, source: str) -> None:
        """The shards as an MLflow dataset input (the run page's "Datasets"), context ``training``."""
        from mlflow.entities import Dataset, DatasetInput, InputTag

        kind = source.split("://", 1)[0] if "://" in source else "local"
        dataset = Dataset(name=name, digest=digest[:36], source_type=kind, source=json.dumps({"uri": source}))
        self.client.log_inputs(
            self.run_id, [DatasetInput(dataset, [InputTag("mlflow.data.context", "training")])]
        )

    def log_model(self, folder: Path, info: ModelInfo) -> None:
        """The export folder as an MLflow model of this run (the run's and the experiment's "Logged
        models"): the ``python_function`` flavour through ``info.loader_module``, so
        ``mlflow.pyfunc.load_model(uri).predict({"seed": [0, 1]})`` returns images. A model that does
        not sample (a tokenizer) is logged as the folder's files only."""
        if not info.samples:
            for f in sorted(Path(folder).iterdir()):
                self.log_artifact(f, "model")
            return
        from mlflow.models import ModelSignature
        from mlflow.types import ColSpec, Schema, TensorSpec

        inputs = [ColSpec("long", "seed")] + (
            [ColSpec("long", "class", required=False)] if info.conditional else []
        )
        shape = (-1, info.channels, info.resolution, info.resolution)
        signature = ModelSignature(
            inputs=Schema(inputs), outputs=Schema([TensorSpec(np.dtype("float32"), shape)])
        )
        import tempfile

        from mlflow.entities import LoggedModelOutput

        # MLflow's client API throughout (no fluent run, no process-wide tracking URI): a notebook's
        # own active run or another store in the same process cannot be touched
        with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
            # no input example on purpose: MLflow would load the model and sample to check it
            warnings.filterwarnings("ignore", message=".*input example was not provided.*")
            local = Path(tmp) / "model"
            self._mlflow.pyfunc.save_model(
                path=str(local),
                loader_module=info.loader_module,
                data_path=str(folder),
                signature=signature,
                pip_requirements=requirements(),
                metadata={"bigtrain_kind": info.kind, "source_step": info.step},
            )
            experiment_id = self.client.get_run(self.run_id).info.experiment_id
            model = self.client.create_logged_model(experiment_id, name="model", source_run_id=self.run_id)
            self.client.log_model_artifacts(model.model_id, str(local))
            self.client.finalize_logged_model(model.model_id, "READY")
            self.client.log_outputs(self.run_id, [LoggedModelOutput(model.model_id, info.step)])

    def close(self, status: str = "FINISHED") -> None:
        self.client.set_terminated(self.run_id, status=status)


def requirements() -> list[str]:
    """What loading the logged model needs: bigtrain and torch at the versions that logged it
    (stated, not inferred: MLflow's inference imports the model in a subprocess, slowly)."""
    from importlib.metadata import PackageNotFoundError, version

    out = []
    for name in ("bigtrain", "torch", "safetensors"):
        try:
            out.append(f"{name}=={version(name).split('+')[0]}")  # not a local build tag (+cu130)
        except PackageNotFoundError:
            out.append(name)
    return out
