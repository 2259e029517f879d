"""The training loop: build, resume, step, log, sample, evaluate, checkpoint, close.

It is family-agnostic: it talks to the task only through the contract in
``bigtrain.train.task``. Everything with state is a component of the checkpoint manager
(``bigtrain.checkpoint.manager``), so resuming is running the same command again.

One step's data flow::

    DataStream ──batches──► task.train_step ──metrics──► tracker (every log_every)
        ▲                       │ (per network: accumulate ─► NonFiniteGuard ─► all-reduce ─► step)
        └─ task.data_shape      ├─► sample_grid (every sample_every) ─► samples/ + MLflow image
                                ├─► Evaluator(task.eval_sources()) (every eval.every) ─► MLflow
                                └─► CheckpointManager.save (every ckpt_every; once per step)
"""

from __future__ import annotations

import hashlib
import json
import logging
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from PIL import Image
from tqdm import tqdm

from bigtrain import distributed as bdist
from bigtrain.checkpoint.best import BestCheckpoints
from bigtrain.checkpoint.digest import digest
from bigtrain.checkpoint.io import prune
from bigtrain.checkpoint.manager import CheckpointManager
from bigtrain.config.launcher import batch_over
from bigtrain.config.validate import missing_values, raise_problems
from bigtrain.data.images import stream_method
from bigtrain.data.manifest import DatasetManifest
from bigtrain.data.stream import DataStream, DomainStreams, StreamSpec
from bigtrain.distributed import slurm
from bigtrain.distributed.preemption import Preemption, Request
from bigtrain.errors import ConfigError, NonFiniteLossError
from bigtrain.eval.registry import Evaluator
from bigtrain.tracking import NullTracker, Tracker
from bigtrain.tracking.mlflow_tracker import absolute_uri, default_tags
from bigtrain.train.config_guard import ConfigGuard
from bigtrain.train.describe import KINDS as EXPORT_KINDS
from bigtrain.train.init_from import init_weights
from bigtrain.train.model_export import export, model_info
from bigtrain.train.task import build_task, check_config, configure_reads, eval_metrics
from bigtrain.utils.console import bar_disable
from bigtrain.utils.images import grid_uint8
from bigtrain.utils.rng import capture_rng, restore_rng, seed_everything

log = logging.getLogger("bigtrain")


@dataclass
class TrainResult:
    run_dir: Path
    step: int
    last_checkpoint: Path | None
    grid: Path | None
    fid: dict[int, float] = field(default_factory=dict)  # the headline metric (FID, rFID) by step
    headline: str | None = None  # its key (fid/digits, nll/bits_per_dim), None before any evaluation
    mlflow_run_id: str | None = None
    tracking_uri: str | None = None
    tracker: str | None = None  # tracking.backend, None when tracking is off
    tracker_run_id: str | None = None  # MLflow or W&B run id, TensorBoard log dir
    seconds: float = 0.0
    img_per_s: float = 0.0
    stopped_by: str | None = None  # "requeue" or "stop" when a signal ended the run early
    requeued: bool = False


def setup_logging(run_dir: Path | None, main: bool) -> None:
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    root.setLevel(logging.INFO if main else logging.WARNING)
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S")
    console = logging.StreamHandler(sys.stderr)
    console.setFormatter(fmt)
    root.addHandler(console)
    if run_dir is not None and main:
        fh = logging.FileHandler(run_dir / "train.log")
        fh.setFormatter(fmt)
        root.addHandler(fh)
    for noisy in ("alembic", "mlflow", "urllib3", "PIL", "matplotlib"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def check_global_batch(cfg: DictConfig, world: int) -> None:
    """The per-process batch was derived from the launcher's environment; the process group that
    actually formed must agree, or the global batch is not the recipe's."""
    global_batch = int(cfg.data.global_batch_size)
    actual = batch_over(cfg, world)
    if global_batch and actual != global_batch:
        raise ConfigError(
            f"data.global_batch_size={global_batch} was split for another process count: "
            f"{cfg.data.batch_size} per process x {world} processes x {cfg.trainer.accumulation} "
            f"accumulation(s) = {actual}; launch with torchrun / accelerate launch / srun so WORLD_SIZE is set"
        )


def _build_tracker(cfg: DictConfig, run_id: str | None, resume_step: int | None, config_yaml: str) -> Tracker:
    """The main process's tracker of ``tracking.backend`` (``run_id``: the run to continue, from the
    resumed checkpoint; ``resume_step``: its step), or ``NullTracker``."""
    if not (cfg.tracking.enabled and bdist.is_main()):
        return NullTracker()
    backend = str(cfg.tracking.backend)
    params: dict[str, Any] = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)  # type: ignore[assignment]
    run_dir = Path(cfg.run.dir).resolve()
    if backend == "mlflow":
        from bigtrain.tracking.mlflow_tracker import MLflowTracker

        return MLflowTracker(
            cfg.tracking.uri,
            cfg.tracking.experiment,
            cfg.run.name,
            params,
            run_id=run_id,
            tags={"run_dir": str(run_dir)},
        )
    tags = {**default_tags(), "run_dir": str(run_dir)}
    if backend == "tensorboard":
        from bigtrain.tracking.tensorboard_tracker import TensorBoardTracker

        return TensorBoardTracker(run_dir / "tensorboard", params, resume_step, config_yaml, tags)
    if backend == "wandb":
        from bigtrain.tracking.wandb_tracker import WandbTracker

        return WandbTracker(
            run_dir,
            str(cfg.tracking.experiment),
            str(cfg.run.name),
            params,
            run_id=run_id,
            entity=str(cfg.tracking.wandb.entity),
            mode=str(cfg.tracking.wandb.mode),
            tags=tags,
        )
    raise ConfigError(f"tracking.backend={backend}: unknown; choose mlflow, tensorboard or wandb")


def _tracked_run_id(cfg: DictConfig, meta: dict[str, Any]) -> str | None:
    """The tracker run a checkpoint belongs to, if it was logged with this run's backend."""
    backend = str(cfg.tracking.backend)
    if backend == "mlflow":
        return meta.get("mlflow_run_id")
    return meta.get("tracker_run_id") if meta.get("tracker") == backend else None


def _brief(metrics: dict[str, float]) -> str:
    """The losses and img/s of a metrics dict, short enough for one log line."""
    keys = [k for k in metrics if k.startswith("loss/")] + ["img_per_s"]
    return ", ".join(f"{k.removeprefix('loss/')} {metrics[k]:.4g}" for k in keys if k in metrics)


def dataset_meta(m: DatasetManifest) -> dict[str, Any]:
    """What sampling from a checkpoint needs to know about the data, without the shards (for token
    data also the token space, the tokenizer that decodes it and the source images)."""
    return {
        "path": str(m.root),
        "name": m.name,
        "resolution": m.resolution,
        "channels": m.channels,
        "classes": m.classes,
        "dataset_id": m.dataset_id,
        "extra": {k: m.extra[k] for k in ("kind", "tokens", "tokenizer", "source") if k in m.extra},
    }


class Counters:
    """The loop's own checkpoint component (``trainer``): step, samples seen, headline metric history."""

    def __init__(self) -> None:
        self.step = 0
        self.images_seen = 0
        self.history: dict[int, float] = {}

    def state_dict(self) -> dict[str, Any]:
        return {"step": self.step, "images_seen": self.images_seen, "fid": dict(self.history)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step, self.images_seen = int(state["step"]), int(state["images_seen"])
        self.history = {int(k): float(v) for k, v in state.get("fid", {}).items()}


class RNGState:
    """Every global RNG of this process (python, numpy, torch, CUDA), per rank."""

    def state_dict(self) -> dict[str, Any]:
        return capture_rng()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        restore_rng(state)


def last_eval_tags(headline: str, value: float) -> dict[str, str]:
    """The run's tags after an evaluation: its headline metric's name and value (``eval_metric``,
    ``eval_last``, on every run's overview whatever the task judges by), and ``fid_last`` when the
    headline is an FID (a GAN's ``fid/...``, a tokenizer's ``rfid/...``), the tag earlier runs have."""
    tags = {"eval_metric": headline, "eval_last": f"{value:.4f}"}
    if headline.split("/")[0] in ("fid", "rfid"):
        tags["fid_last"] = tags["eval_last"]
    return tags


class Trainer:
    def __init__(self, cfg: DictConfig):
        raise_problems(missing_values(cfg))  # a sweep's jobs come here without the CLI's pre-check
        self.cfg = cfg
        self.accelerator = bdist.build_accelerator(
            str(cfg.trainer.precision), timeout_s=float(cfg.trainer.collective_timeout_s)
        )
        self.device = self.accelerator.device
        self.rank, self.world = bdist.rank(), bdist.world_size()
        check_global_batch(cfg, self.world)
        self.main = bdist.is_main()
        self.run_dir = Path(cfg.run.dir)
        if self.main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        bdist.barrier()
        setup_logging(self.run_dir, self.main)
        configure_reads(cfg)
        self.manifest = DatasetManifest.load(cfg.data.path)
        shards = self.manifest.shard_paths(cfg.data.split)
        check_config(cfg, self.manifest)
        self.config_yaml = OmegaConf.to_yaml(cfg, resolve=True)
        self.guard = ConfigGuard(cfg)

        seed_everything(cfg.seed)  # identical initial weights on every rank
        self.task = build_task(cfg, self.manifest, self.device, self.accelerator)
        seed_everything(cfg.seed + 100_003 * self.rank)  # per-rank noise for z and labels
        spec = StreamSpec(
            shards=tuple(shards),
            batch_size=cfg.data.batch_size,
            resolution=self.manifest.resolution,
            channels=self.manifest.channels,
            seed=cfg.seed,
            rank=self.rank,
            world_size=self.world,
            num_workers=cfg.data.num_workers,
            shuffle_buffer=cfg.data.shuffle_buffer,
            flip=cfg.data.flip,
            kind=self.manifest.kind,
            downsample=stream_method(str(cfg.stages.downsample), str(cfg.data.resample)),
            resize=str(cfg.data.resize),
            label_key=self.manifest.label_key,
            classes=self.manifest.label_names,
            text=self.manifest.has_text,
            meta=self.manifest.has_meta,
            layout="images" if self.manifest.layout == "domains" else self.manifest.layout,
            source_channels=self.manifest.source_channels,
            cond_tokens=self.manifest.kind == "tokens" and "condition" in self.manifest.extra,
            retries=int(cfg.data.retries),
            backoff_s=float(cfg.data.retry_backoff_s),
            max_shard_errors=int(cfg.data.max_shard_errors),
            storage_options=tuple(sorted(OmegaConf.to_container(cfg.data.storage_options).items())),
            shard_counts=tuple(s.count for s in self.manifest.splits[cfg.data.split]),
            decode=str(cfg.data.decode),
        )
        self.stream = self._stream(spec)
        self.counters = Counters()
        self.evaluated_step = -1
        self.headline: str | None = None  # the key standing for an evaluation (fid/digits, nll/bits_per_dim)
        self.grid_step = -1
        self.checkpoints = CheckpointManager(
            self.run_dir,
            every=cfg.trainer.ckpt_every,
            keep_last=cfg.trainer.keep_last,
            resume=str(cfg.resume),
            config_yaml=self.config_yaml,
        )
        kb = cfg.trainer.keep_best
        self.best = (
            BestCheckpoints(self.run_dir, int(kb.count), str(kb.metric), str(kb.mode))
            if kb.count > 0
            else None
        )
        self.checkpoints.add_group(self.task)
        native = self.task.native_state()
        if native is not None:
            self.checkpoints.add_native(native)
        self.checkpoints.add("trainer", self.counters)
        self.checkpoints.add("rng", RNGState(), per_rank=True)
        self.checkpoints.add("data", self.stream, per_rank=True)
        rank_state = self.task.rank_state()
        if rank_state is not None:  # a task's per-rank state (CycleGAN's history of generated images)
            self.checkpoints.add("task_rank", rank_state, per_rank=True)
        ck = self.checkpoints.resume(before_load=self.guard.check)
        run_id = resume_step = None
        # fine-tuning's source (meta.json keeps it across resumes); loaded only into a fresh run
        self.init_info: dict[str, Any] | None = None
        if ck is not None:
            run_id, resume_step = _tracked_run_id(cfg, ck.meta), self.step
            log.info("resumed from %s (step %d)", ck.path, self.step)
            self.init_info = ck.meta.get("init_from")
            if cfg.init_from.path:
                log.info("init_from.path not used: this run resumes its own checkpoint")
        elif cfg.init_from.path:
            self.init_info = init_weights(self.task, str(cfg.init_from.path), list(cfg.init_from.modules))
        self.evaluator: Evaluator | None = None
        if cfg.eval.enabled:
            self.evaluator = Evaluator(cfg.eval, eval_metrics(cfg), self.device)
            # every rank: a missing reference fails everywhere. Absent weights fail now on every
            # rank, not after an hour of training; the main process also computes the reference
            # statistics (the others only run feature networks)
            for source in self.task.eval_sources():
                self.evaluator.prepare(source, stats=self.main)
        self.tracker = _build_tracker(cfg, run_id, resume_step, self.config_yaml)
        if self.main:
            previous = self.guard.keep_previous(self.run_dir)
            if previous is not None:
                self.tracker.log_artifact(previous)
                self.tracker.set_tags(self.guard.tags())
            if ck is None:  # the data this run trains on, once per run
                manifest_file = Path(cfg.data.path) / "dataset.json"
                digest = (
                    hashlib.sha256(manifest_file.read_bytes()).hexdigest()[:16]
                    if manifest_file.is_file()
                    else ""
                )
                self.tracker.log_dataset(
                    self.manifest.name, digest or self.manifest.dataset_id, str(cfg.data.path)
                )
            if self.init_info is not None and ck is None:
                info = self.init_info
                self.tracker.set_tags({"init_from": info["path"], "init_from.modules": ",".join(info["modules"]),
                                       "init_from.step": str(info["step"])})  # fmt: skip
            (self.run_dir / "config.yaml").write_text(self.config_yaml)
            self.tracker.log_artifact(self.run_dir / "config.yaml")
            log.info(
                "run dir %s; data %s (%d train images, %dpx, %d channels, %d classes); world size %d",
                self.run_dir,
                cfg.data.path,
                self.manifest.count(cfg.data.split),
                self.manifest.resolution,
                self.manifest.channels,
                self.manifest.num_classes,
                self.world,
            )
        self.keys_file = None
        if cfg.data.record_keys:
            kd = self.run_dir / "data-keys"
            kd.mkdir(parents=True, exist_ok=True)
            self.keys_file = open(kd / f"rank-{self.rank}.txt", "a")  # noqa: SIM115 - closed in close()

    @property
    def _backend(self) -> str | None:
        return str(self.cfg.tracking.backend) if self.cfg.tracking.enabled else None

    @property
    def step(self) -> int:
        return self.counters.step

    @property
    def last_checkpoint(self) -> Path | None:
        return self.checkpoints.last

    # -- checkpoint ---------------------------------------------------------------------------------
    def settle(self) -> None:
        """Read the task's deferred finite checks (``trainer.sync_every``) before anything is
        logged, evaluated or saved, so no checkpoint holds weights a non-finite update reached."""
        try:
            self.task.settle()
        except NonFiniteLossError as exc:
            exc.last_checkpoint = self.last_checkpoint
            raise

    def save(self) -> Path:
        """Collective: the checkpoint of this step (nothing new if this step is already saved)."""
        self.settle()
        if self.checkpoints.saved(self.step) and self.last_checkpoint is not None:
            return self.last_checkpoint
        weights = {k: digest(m.state_dict()) for k, m in self.task.digest_modules().items()}
        meta = {
            "mlflow_run_id": self.tracker.run_id if self._backend == "mlflow" else None,
            "tracking_uri": absolute_uri(self.cfg.tracking.uri),
            # the run a resumed job continues (every backend; mlflow_run_id for `bigtrain evaluate`)
            "tracker": self._backend,
            "tracker_run_id": self.tracker.run_id,
            "rank_weight_digests": bdist.all_gather_objects(weights),
            "dataset": dataset_meta(self.manifest),
            "init_from": self.init_info,
            **self.guard.meta(),
        }
        path = self.checkpoints.save(self.step, meta)
        if self.main:
            self.tracker.set_tags(
                {"last_checkpoint": str(path.resolve()), "checkpoint_dir": str(path.parent.resolve())}
            )
        return path

    # -- periodic work ------------------------------------------------------------------------------
    def _reshape_data(self) -> None:
        """A resolution stage starts: the stream delivers its resolution and batch size from now on."""
        shape = self.task.data_shape(self.step)
        if shape is not None and self.stream.reshape(*shape):
            log.info("step %d: data at %dpx, batch %d per process", self.step, *shape)

    def write_grid(self) -> Path | None:
        self.grid_step = self.step
        self.task.before_sampling()
        if not self.main:
            return None
        images, nrow = self.task.sample_grid(self.cfg.sample.seed, self.cfg.sample.grid_rows)
        out = self.run_dir / "samples" / f"step-{self.step:08d}.png"
        out.parent.mkdir(parents=True, exist_ok=True)
        grid = grid_uint8(images, nrow)  # the same pixels in the PNG and in MLflow
        Image.fromarray(grid).save(out)
        self.tracker.log_image(grid, "samples", self.step)
        for name, (extra, rows) in self.task.extra_grids(
            self.cfg.sample.seed, self.cfg.sample.grid_rows
        ).items():
            picture = grid_uint8(extra, rows)
            path = self.run_dir / name / f"step-{self.step:08d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(picture).save(path)
            self.tracker.log_image(picture, name, self.step)
        return out

    def evaluate(self) -> float | None:
        """Collective: the metrics of ``eval.metrics`` on the main process, logged at this step."""
        self.settle()
        value = score = None
        self.task.before_sampling()
        t = time.time()
        # collective: the ranks share the sampling when the source allows; the main process gets the metrics
        results: dict[str, float] = {}
        for source in self.task.eval_sources() if self.evaluator is not None else []:
            assert self.evaluator is not None
            results |= self.evaluator(source)
        if self.main and self.evaluator is not None:
            headline = self.headline = self.evaluator.headline(results)
            value = results[headline]
            score = results.get(self.best.metric or headline) if self.best is not None else None
            self.counters.history[self.step] = value
            self.tracker.log_metrics(results, self.step)
            self.tracker.set_tags(last_eval_tags(headline, value))
            shown = ", ".join(f"{k} = {v:.3f}" for k, v in results.items())
            log.info(
                "step %d: %s (%d samples, %.1f s)",
                self.step,
                shown,
                self.cfg.eval.num_samples,
                time.time() - t,
            )
        self.evaluated_step = self.step
        bdist.barrier()
        self._keep_if_best(score)
        return value

    def _keep_if_best(self, score: float | None) -> None:
        """Collective: when this evaluation (``score``: the main process's value of
        ``trainer.keep_best.metric``) is among the best, save this step (if not saved yet) and record
        it in ``checkpoints/best.json``, safe from keep_last pruning."""
        if self.best is None:
            return
        if self.main and score is None:
            log.warning(
                "trainer.keep_best.metric %s was not evaluated at step %d", self.best.metric, self.step
            )
        # the main process keeps the list; its verdict decides, since saving is collective
        keep = bdist.all_gather_objects(
            self.main and score is not None and self.best.qualifies(float(score))
        )[0]
        if not keep:
            return
        path = self.save()
        if not self.main:
            return
        is_best = self.best.record(self.step, float(score), path)
        prune(self.run_dir, int(self.cfg.trainer.keep_last))  # a checkpoint that left the best may go now
        if is_best:
            log.info(
                "step %d: best %s so far (%.4f): %s", self.step, self.best.metric or "headline", score, path
            )
            self.tracker.set_tags({"best_checkpoint": str(path.resolve()), "best_value": f"{score:.4f}"})

    def _stream(self, spec: StreamSpec) -> DataStream | DomainStreams:
        """The training stream: one over the split's shards, or for unpaired domains one per
        domain, stepped together (each batch holds a batch of every domain)."""
        if self.manifest.layout != "domains":
            return DataStream(spec, device=self.device)
        split = str(self.cfg.data.split)
        names = self.manifest.domains
        shards = {d: tuple(self.manifest.shard_paths(split, d)) for d in names}
        counts = {d: tuple(s.count for s in self.manifest.shards(split, d)) for d in names}
        return DomainStreams.build(spec, shards, counts, self.device)

    # -- the loop -----------------------------------------------------------------------------------
    def _batches(self) -> Iterator[dict[str, Any]]:
        for batch in self.stream:
            if self.keys_file is not None:
                self.keys_file.write("\n".join(batch["keys"]) + "\n")
            yield batch

    def fit(self) -> TrainResult:
        cfg = self.cfg.trainer
        start_images, t0 = self.counters.images_seen, time.time()
        grid = None
        status = "FAILED"
        bar = tqdm(
            total=cfg.max_steps,
            initial=self.step,
            desc="train",
            unit="step",
            disable=bar_disable(self.main and cfg.progress),
            dynamic_ncols=True,
            file=sys.stderr,
        )
        data = self._batches()
        window_t, window = time.time(), dict.fromkeys(self.task.units_per_step(), 0)
        preemption = Preemption(cfg.requeue_signals, cfg.stop_signals).install()
        request = Request.NONE
        try:
            while self.step < cfg.max_steps:
                self.counters.step += 1
                self._reshape_data()
                try:
                    metrics = self.task.train_step(self.step, data)
                except NonFiniteLossError as exc:
                    exc.last_checkpoint = self.last_checkpoint
                    raise
                units = self.task.units_per_step()
                self.counters.images_seen += units["img"] * self.world
                for unit, n in units.items():
                    window[unit] = window.get(unit, 0) + n * self.world
                bar.update(1)
                if self.step % cfg.log_every == 0 or self.step == cfg.max_steps:
                    self.settle()
                    metrics = {k: float(v) for k, v in metrics.items()}  # device scalars read here
                    now = time.time()
                    for unit, n in window.items():  # img_per_s, and tokens_per_s for sequence models
                        metrics[f"{unit}_per_s"] = n / max(now - window_t, 1e-9)
                    metrics["data/skipped"] = float(self.stream.state.skipped)
                    metrics["data/shard_errors"] = float(self.stream.state.shard_errors)
                    metrics["images_seen"] = float(self.counters.images_seen)
                    window_t, window = now, dict.fromkeys(window, 0)
                    self.tracker.log_metrics(metrics, self.step)
                    if bar.disable and self.main:  # batch jobs: a line in the log instead of a bar
                        log.info("step %d/%d: %s", self.step, cfg.max_steps, _brief(metrics))
                    bar.set_postfix(
                        {
                            k.split("/")[-1] if k.startswith("loss/") else k: f"{v:.3g}"
                            for k, v in metrics.items()
                            if k.startswith("loss/") or k == "img_per_s"
                        }
                    )
                if self.step % cfg.sample_every == 0:
                    grid = self.write_grid() or grid
                if self.cfg.eval.enabled and self.cfg.eval.every > 0 and self.step % self.cfg.eval.every == 0:
                    self.evaluate()
                if self.checkpoints.due(self.step):
                    self.save()
                request = preemption.poll()  # every rank, every step: they must agree
                if request is not Request.NONE:
                    self._save_on_request(request, preemption.received)
                    break
            if request is not Request.NONE:
                status = "KILLED"  # MLflow's word for a run ended from outside; a requeue reopens it
            else:
                grid = self._finish(grid)
                status = "FINISHED"
        finally:
            preemption.uninstall()
            bar.close()
            self.close(status)
        return self._result(start_images, t0, grid, request)

    def _finish(self, grid: Path | None) -> Path | None:
        """The end of a completed run: a checkpoint, a grid and an evaluation at the last step."""
        self.save()
        if self.grid_step != self.step:  # the same decision on every rank (writing may be collective)
            grid = self.write_grid() or grid
        if self.cfg.eval.enabled and self.evaluated_step != self.step:
            self.evaluate()
        self.log_model()
        return grid

    def log_model(self) -> None:
        """The last checkpoint as a ``bigtrain export`` folder (``run.dir/model``: config.json,
        model.safetensors, model card), logged as the run's model: in MLflow a ``python_function``
        model under "Logged models", elsewhere the folder's files under ``model/``."""
        if not (self.main and self.cfg.tracking.enabled and self.cfg.tracking.log_model):
            return
        ckpt = self.last_checkpoint
        assert ckpt is not None
        if str(self.cfg.task) not in EXPORT_KINDS:
            log.info(
                "task=%s has no export format yet: its checkpoint is the model (%s)", self.cfg.task, ckpt
            )
            return
        try:
            folder = export(ckpt, self.run_dir / "model")
            self.tracker.log_model(folder, model_info(folder))
        except Exception as exc:  # noqa: BLE001 - the run itself is done: say so, and finish it
            log.warning("could not log the model of %s: %s: %s", ckpt, type(exc).__name__, exc)
            return
        self.tracker.set_tags(
            {"model_export": str(folder.resolve()), "model_checkpoint": str(ckpt.resolve())}
        )

    def _save_on_request(self, request: Request, received: list[str]) -> None:
        """Every rank saves together (unless this step was just saved), then the loop ends."""
        self.save()
        log.warning(
            "signal %s: saved %s at step %d; %s",
            "/".join(received) or "on another rank",
            self.last_checkpoint,
            self.step,
            "requeueing the job" if request is Request.REQUEUE else "stopping (no requeue)",
        )

    def _result(self, start_images: int, t0: float, grid: Path | None, request: Request) -> TrainResult:
        requeued = False
        if request is Request.REQUEUE and self.main:
            # After the tracker is closed: the requeued job reopens the same MLflow run.
            requeued = slurm.requeue() if slurm.in_slurm_job() else False
        seconds = time.time() - t0
        return TrainResult(
            run_dir=self.run_dir,
            step=self.step,
            last_checkpoint=self.last_checkpoint,
            grid=grid,
            fid=dict(self.counters.history),
            headline=self.headline,
            mlflow_run_id=self.tracker.run_id if self._backend == "mlflow" else None,
            tracking_uri=self.cfg.tracking.uri if self._backend == "mlflow" else None,
            tracker=self._backend,
            tracker_run_id=self.tracker.run_id,
            seconds=seconds,
            img_per_s=(self.counters.images_seen - start_images)
            / max(seconds, 1e-9),  # stages change the batch
            stopped_by={Request.REQUEUE: "requeue", Request.STOP: "stop"}.get(request),
            requeued=requeued,
        )

    def close(self, status: str) -> None:
        self.task.close()
        self.stream.close()
        if self.keys_file is not None:
            self.keys_file.close()
        if self.main:
            # status.json first: it is local and instant, and a job killed while the tracker closes
            # (SLURM's KillWait after a time limit) still leaves it
            try:  # a full or read-only disk must not hide the error that ended the run
                part = self.run_dir / "status.json.part"
                part.write_text(json.dumps({"status": status, "step": self.step}) + "\n")
                part.replace(self.run_dir / "status.json")  # readers never see half a file
            except OSError as exc:
                log.error("could not write %s: %s", self.run_dir / "status.json", exc)
            self.tracker.close(status)


def train(cfg: DictConfig) -> TrainResult:
    clean = False
    try:
        result = Trainer(cfg).fit()
        clean = True
        return result
    finally:
        bdist.shutdown(clean)


__all__ = ["Trainer", "TrainResult", "train"]
