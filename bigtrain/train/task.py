"""The task contract: everything the loop and the CLI may ask of a model family, and nothing else.

A *task* is what one training step means for a family (a GAN's k D steps and one G step, a
tokenizer's autoencoder and PatchGAN steps, a prior's next-token step), with its networks,
optimizers and sampling. The loop (``bigtrain.train.loop``) and the commands (``bigtrain.cli``) talk
to a task only through the members of :class:`Task` below, so adding a family is one model file,
one task file in ``bigtrain/train/tasks/`` (found by name, no list to edit) and one config group.

Class attributes say what a task is before it is built (the config validator, ``bigtrain info``
and ``bigtrain sample`` read them); methods are the run-time hooks, grouped as

* checkpointable state: :meth:`state_dict` / :meth:`load_state_dict` (one checkpoint file per key),
  :meth:`native_state` (an engine's own files), :meth:`digest_modules` (weights that must agree
  across ranks);
* training: :meth:`train_step`, :meth:`data_shape` (resolution stages), :meth:`units_per_step`;
* sampling: :meth:`before_sampling` (collective: ZeRO-3 gathers), :meth:`sample_grid`,
  :meth:`sample`, :meth:`sample_per_class`, :meth:`sample_conditioned`, :meth:`interpolate`,
  :meth:`latent_space` (vector arithmetic);
* evaluation: :meth:`eval_source` (what is judged, against which real images);
* the end: :meth:`close` (an engine releases its hooks and buffers before the process group ends).
"""

from __future__ import annotations

import dataclasses
import importlib
import pkgutil
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException
from torch import nn

from bigtrain.checkpoint.io import NativeState
from bigtrain.checkpoint.manager import load_component
from bigtrain.config.schema import TrainConfig
from bigtrain.config.validate import common_problems, raise_problems
from bigtrain.data.images import recipe, stream_method
from bigtrain.data.manifest import DatasetManifest
from bigtrain.data.read import ReadPolicy, configure
from bigtrain.errors import ConfigError
from bigtrain.eval.registry import check_metrics
from bigtrain.eval.source import EvalSource, Need
from bigtrain.models.registry import families, model_family, parse_arch

if TYPE_CHECKING:
    from bigtrain.train.latent_arithmetic import LatentSpace
    from bigtrain.train.stages import StageSchedule

Batches = Iterator[dict[str, Any]]


class Task(ABC):
    # -- what the task is (read before it is built) ---------------------------------------------------
    name: ClassVar[str]
    """``task=NAME``: the config group ``bigtrain/configs/task/NAME.yaml`` and the registry key."""
    config: ClassVar[type[TrainConfig]]
    """Its config schema: :class:`~bigtrain.config.schema.TrainConfig` extended with the task's own
    sections, model keys and ``optim.<name>`` blocks (the config group puts it under the run)."""
    model_kind: ClassVar[str]
    """Which model families it trains (``bigtrain.models.registry``'s ``kind``)."""
    data_kind: ClassVar[str] = "images"
    """What its shards hold: ``images`` (``bigtrain prepare``) or ``tokens`` (``bigtrain tokenize``)."""
    data_layouts: ClassVar[frozenset[str] | None] = None
    """The sample layouts its shards must have (``dataset.json``'s ``layout``: ``images``, ``pairs``,
    ``domains``); None: any (a GAN trains on a paired set's targets)."""
    inference_components: ClassVar[tuple[str, ...]] = ()
    """Checkpoint components that sampling needs (logged as the run's ``model/`` artifacts)."""
    default_metrics: ClassVar[tuple[str, ...]] = ("fid",)
    """``eval.metrics`` when the config leaves it empty."""
    eval_provides: ClassVar[frozenset[Need]] = frozenset({Need.features})
    """What its :meth:`eval_source` can feed metrics (reconstruction pairs, codebook counts)."""
    generates: ClassVar[bool] = True
    """False for a model that only reconstructs (a tokenizer): ``bigtrain sample`` refuses it."""
    sample_options: ClassVar[frozenset[str]] = frozenset()
    """Keyword options :meth:`sample` takes (GAN: ``truncation``; prior: ``temperature``, ...)."""

    condition_kind: ClassVar[str | None] = None
    """What :meth:`sample_conditioned` takes: ``image`` (``bigtrain sample --condition``: a source
    image to translate), ``text`` (``bigtrain sample --prompt``: a caption to draw, task=text_gan);
    None: the task samples without one."""

    defers_checks: ClassVar[bool] = False
    """Whether :meth:`train_step` honours ``trainer.sync_every`` > 1: it keeps losses and metrics on
    the device (0-dim tensors, read by the loop when it logs) and its non-finite checks wait for
    :meth:`settle`. Other tasks refuse the key."""

    num_classes: int = 0  # 0 = unconditional

    @classmethod
    def provides(cls, cfg: Any, manifest: DatasetManifest | None) -> frozenset[Need]:  # noqa: ARG003
        """What this run's evaluation can feed metrics: :attr:`eval_provides`, unless what the
        task judges depends on the config (a prior conditioned on captions gives labels)."""
        return cls.eval_provides

    @classmethod
    def declared_data(cls, cfg: Any) -> dict[str, Any]:  # noqa: ARG003
        """``dataset.json`` entries the config implies when its shards are not at hand (``bigtrain
        info`` of a preset): a text-conditioned model's captions, a conditioned prior's codes."""
        return {}

    @classmethod
    def own_sections(cls) -> tuple[str, ...]:
        """Top-level sections only this task has (GAN: ``loss``, ``ema``)."""
        shared = {f.name for f in dataclasses.fields(TrainConfig)}
        return tuple(f.name for f in dataclasses.fields(cls.config) if f.name not in shared)

    @classmethod
    def optimizer_blocks(cls) -> tuple[str, ...]:
        """The ``optim.<name>`` blocks it builds optimizers from (GAN: ``g``, ``d``)."""
        optim = next(f for f in dataclasses.fields(cls.config) if f.name == "optim").default_factory()  # type: ignore[misc]
        return tuple(f.name for f in dataclasses.fields(optim) if f.name != "schedule")

    @classmethod
    def check_config(cls, cfg: Any, manifest: DatasetManifest) -> list[str]:  # noqa: ARG003
        """Problems with ``cfg`` that only this task knows of, one line each (no building)."""
        return []

    @classmethod
    def weights_only(cls, cfg: Any) -> Any:
        """``cfg`` for building the task only to hold weights (``bigtrain convert``): training-only
        helpers that need files of their own (a tokenizer's LPIPS and its VGG16) left out."""
        return cfg

    @classmethod
    def describe(cls, cfg: Any) -> dict[str, Any]:  # noqa: ARG003
        """What ``bigtrain info`` prints about the objective and the step: ``{"loss": .., "step": ..}``
        plus any task-specific keys."""
        return {}

    # -- checkpointable state -------------------------------------------------------------------------
    @abstractmethod
    def state_dict(self) -> dict[str, Any]:
        """Rank-independent components by name (each one file of the checkpoint)."""

    @abstractmethod
    def load_state_dict(self, states: Mapping[str, Any]) -> None: ...

    def rank_state(self) -> Any | None:
        """State that differs between ranks and must survive a resume (an object with
        ``state_dict`` / ``load_state_dict``; CycleGAN's history of generated images): saved per
        rank as ``task_rank.rank<R>``. None for most tasks."""
        return None

    def native_state(self) -> NativeState | None:
        """An engine that writes its own files into the checkpoint (DeepSpeed), or None."""
        return None

    @abstractmethod
    def digest_modules(self) -> dict[str, nn.Module]:
        """Networks whose weights must agree across ranks (recorded per rank in ``meta.json``)."""

    def weight_modules(self) -> dict[str, nn.Module]:
        """The networks by checkpoint component name, before any engine shards them: what
        ``init_from`` loads into (fine-tuning)."""
        return self.digest_modules()

    def init_weights(self, weights: Mapping[str, Any]) -> list[str]:
        """Fine-tuning: load network weights only (``weights`` by component name, each a state
        dict); optimizers, step and data stay fresh. Returns the components loaded."""
        nets = self.weight_modules()
        for name in weights:
            load_component(name, nets[name], weights)
        return list(weights)

    # -- training -------------------------------------------------------------------------------------
    @abstractmethod
    def train_step(self, step: int, data: Batches) -> dict[str, float]:
        """One optimizer step (1-based ``step``) from ``next(data)`` batches; metrics averaged over
        ranks. Raises :class:`~bigtrain.errors.NonFiniteLossError` under ``on_nonfinite=stop``."""

    def data_shape(self, step: int) -> tuple[int, int] | None:  # noqa: ARG002
        """``(resolution, micro-batch)`` the stream must deliver for ``step``; None = unchanged."""
        return None

    @abstractmethod
    def images_per_step(self) -> int:
        """Samples (images, or token sequences) this rank consumes per step."""

    def units_per_step(self) -> dict[str, int]:
        """What a step consumes per rank, by unit: ``{"img": 64}``; a sequence model adds
        ``"tokens"``. The loop logs ``<unit>_per_s`` for each."""
        return {"img": self.images_per_step()}

    def stage_schedule(self) -> StageSchedule | None:
        """The resolution stages the run follows, if any."""
        return None

    # -- sampling -------------------------------------------------------------------------------------
    def before_sampling(self) -> None:  # noqa: B027 - optional hook, a no-op for most tasks
        """Collective, on every rank before the main process samples or evaluates (ZeRO-3 gathers
        its sharded weights here)."""

    @abstractmethod
    def sample_grid(self, seed: int, rows: int) -> tuple[torch.Tensor, int]:
        """The run's fixed grid: images in [-1, 1] and how many per row."""

    def extra_grids(self, seed: int, rows: int) -> dict[str, tuple[torch.Tensor, int]]:  # noqa: ARG002
        """More pictures written beside the samples at each ``sample_every`` step, by name: images in
        [-1, 1] and the images per row (a VAE's ``reconstructions``). None by default."""
        return {}

    def sample(
        self, n: int, generator: torch.Generator, *, classes: list[int] | None = None, **options: Any
    ) -> torch.Tensor:
        """``n`` images in [-1, 1] on the CPU from the network that evaluation judges; labels drawn
        uniformly from ``classes`` (default: all) when conditional. ``options``: see
        :attr:`sample_options`."""
        raise ConfigError(f"task={self.name} does not generate images")

    def sample_per_class(
        self, classes: list[int], per_class: int, generator: torch.Generator, **options: Any
    ) -> torch.Tensor:
        """``per_class`` images of each class in ``classes``, class by class (one grid row each)."""
        labels = torch.tensor(classes).repeat_interleave(per_class)
        return self.sample_labels(labels, generator, **options)

    def sample_labels(self, labels: torch.Tensor, generator: torch.Generator, **options: Any) -> torch.Tensor:
        """One image per label."""
        raise ConfigError(f"task={self.name} does not generate images")

    def sample_conditioned(
        self, conditions: torch.Tensor | list[str], generator: torch.Generator, **options: Any
    ) -> torch.Tensor:
        """One image per condition (``condition_kind``): ``conditions`` [N, C, H, W] in [-1, 1] for
        ``image``, a list of N prompts for ``text``. Images in [-1, 1] on the CPU."""
        raise ConfigError(f"task={self.name} does not sample from a condition")

    def interpolate(self, rows: int, steps: int, generator: torch.Generator, **options: Any) -> torch.Tensor:
        """``rows`` walks of ``steps`` images each between random latent points."""
        raise ConfigError(f"task={self.name} has no latent space to interpolate in")

    def latent_space(self) -> LatentSpace:
        """The prior's latents and their decoder, for vector arithmetic (``bigtrain sample
        --arithmetic``): a GAN's z, a VAE's z. Refused where images are not a function of z alone."""
        raise ConfigError(f"task={self.name} has no latent space for arithmetic")

    # -- evaluation -----------------------------------------------------------------------------------
    @abstractmethod
    def eval_source(self) -> EvalSource:
        """What evaluation judges now (at the current resolution), and against which real images."""

    def eval_sources(self) -> list[EvalSource]:
        """Every source an evaluation judges: one for most tasks; a translation in both directions
        gives one per direction (their metric keys carry the source's ``tag``)."""
        return [self.eval_source()]

    def settle(self) -> None:  # noqa: B027 - optional hook, a no-op unless defers_checks
        """Read every deferred non-finite check now and raise :class:`NonFiniteLossError` for the
        first bad loss; the loop calls it before logging, evaluating and saving."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """The run is over (on every rank, before the process group ends): release engines."""


TaskFactory = Callable[[Any, DatasetManifest, torch.device, Any], Task]
TASKS: dict[str, type[Task]] = {}


def register_task(cls: type[Task]) -> type[Task]:
    """Class decorator: ``task=<cls.name>`` builds ``cls(cfg, manifest, device, accelerator)``."""
    if cls.name in TASKS and TASKS[cls.name] is not cls:
        raise ValueError(f"task {cls.name!r} is already registered by {TASKS[cls.name].__qualname__}")
    TASKS[cls.name] = cls
    return cls


def _discover() -> None:
    """Import every module of ``bigtrain.train.tasks`` once: each registers its task class."""
    package = importlib.import_module("bigtrain.train.tasks")
    for info in pkgutil.iter_modules(package.__path__):
        importlib.import_module(f"{package.__name__}.{info.name}")


def task_class(name: str) -> type[Task]:
    if name not in TASKS:
        _discover()
    if name not in TASKS:
        raise ConfigError(f"unknown task '{name}'; choose one of: {', '.join(sorted(TASKS))}")
    return TASKS[name]


def all_tasks() -> dict[str, type[Task]]:
    _discover()
    return dict(sorted(TASKS.items()))


def eval_metrics(cfg: Any) -> list[str]:
    """``eval.metrics``, or the task's defaults when the config leaves it empty."""
    return list(cfg.eval.metrics or task_class(str(cfg.task)).default_metrics)


def check_config(cfg: Any, manifest: DatasetManifest | None = None) -> None:
    """Every start-up rule for a run of ``cfg`` (on ``manifest``'s data, when given), all problems
    in one :class:`ConfigError`: the shared rules, the task's sections, the model family and its
    ``model.arch`` options, the metrics, and the task's own rules."""
    cls = task_class(str(cfg.task))
    problems = common_problems(cfg)
    sync_every = int(cfg.trainer.get("sync_every", 1))
    if sync_every < 1:
        problems.append(f"trainer.sync_every must be >= 1 (got {sync_every})")
    elif sync_every > 1 and not cls.defers_checks:
        problems.append(
            f"trainer.sync_every={sync_every}: task={cls.name} reads its losses every step (keep 1)"
        )
    elif sync_every > 1 and str(cfg.trainer.on_nonfinite) != "stop":
        problems.append(
            f"trainer.sync_every={sync_every} checks losses late: it needs trainer.on_nonfinite=stop "
            "(skip must read each loss before its update)"
        )
    owned = OmegaConf.get_type(cfg) is cls.config
    if not owned:  # `task: NAME` set in a YAML without its config group: no sections of its own
        problems.append(
            f"task={cls.name} needs its config group (task={cls.name} on the command line, or "
            f"`override /task: {cls.name}` in a preset's defaults), which adds its sections "
            f"{', '.join(cls.own_sections())}"
        )
    else:  # keys added with `+` bypass the schema when composing: check them against it
        try:
            OmegaConf.merge(OmegaConf.structured(cls.config), OmegaConf.to_container(cfg, resolve=False))
        except OmegaConfBaseException as exc:
            key = getattr(exc, "full_key", "") or "?"
            problems.append(f"{key}: not a key of task={cls.name}'s config ({str(exc).splitlines()[0]})")
    if manifest is not None:
        if manifest.kind != cls.data_kind:
            problems.append(
                f"task={cls.name} cannot train on {manifest.kind} ({cfg.data.path}): "
                + (
                    "task=prior trains on token shards (bigtrain tokenize)"
                    if cls.data_kind == "tokens"
                    else "token shards are for task=prior"
                )
            )
        if cls.data_layouts is not None and manifest.layout not in cls.data_layouts:
            problems.append(
                f"task={cls.name} trains on {' or '.join(sorted(cls.data_layouts))} shards; {cfg.data.path} "
                f"holds {manifest.layout} (see bigtrain prepare --help: --pairs, --domains)"
            )
        if cfg.model.conditional and manifest.num_classes < 2:
            problems.append(f"model.conditional=true but the dataset has {manifest.num_classes} class(es)")
    try:
        family = model_family(str(cfg.model.name))
        if family.kind != cls.model_kind:
            fit = ", ".join(families(cls.model_kind))
            problems.append(
                f"model={family.name} is a {family.kind} model; task={cls.name} trains {cls.model_kind} models: {fit}"
            )
        else:
            parse_arch(family.name, cfg.model.arch)
    except ConfigError as exc:
        problems.append(str(exc))
    problems += check_metrics(eval_metrics(cfg), cls.provides(cfg, manifest), cls.name)
    if owned and manifest is not None:
        problems += cls.check_config(cfg, manifest)
    raise_problems(problems)


def build_task(cfg: Any, manifest: DatasetManifest, device: torch.device, accelerator: Any) -> Task:
    """The configured task, built on ``device`` (``meta``: shapes only, for ``bigtrain info``)."""
    cls = task_class(str(cfg.task))
    # cuDNN times its convolution algorithms on each new input shape and keeps the fastest (as
    # BigGAN-PyTorch's train.py does); process-wide, so it is set where every trainer and benchmark
    # builds its task. Off: cuDNN's heuristic pick, without the first batch's timing runs.
    torch.backends.cudnn.benchmark = bool(cfg.trainer.get("cudnn_benchmark", True))
    try:
        return cls(cfg, manifest, device, accelerator)  # type: ignore[call-arg]
    except ValueError as exc:  # a model builder rejecting an option (bad size): one line
        raise ConfigError(str(exc)) from None


__all__ = [
    "TASKS",
    "Batches",
    "Task",
    "all_tasks",
    "build_task",
    "check_config",
    "eval_metrics",
    "register_task",
    "task_class",
]


def eval_recipe(cfg: Any) -> str:
    """How this run's evaluation images are made from the shards (the stream's filter, and ``:pad``
    when it pads; see :func:`bigtrain.data.images.recipe`): FID compares like with like."""
    method = stream_method(str(cfg.stages.downsample), str(cfg.data.resample))
    return recipe(method, str(cfg.data.resize))


def configure_reads(cfg: Any) -> None:
    """Every shard read of this process without a policy of its own (FID reference images, the
    stream's replay) retries and connects as ``data.*`` says: a MinIO endpoint in
    ``data.storage_options`` must reach the references too."""
    from omegaconf import OmegaConf

    options = cfg.data.get("storage_options") or {}
    configure(
        ReadPolicy(
            int(cfg.data.get("retries", 3)),
            float(cfg.data.get("retry_backoff_s", 1.0)),
            OmegaConf.to_container(options) if not isinstance(options, dict) else options,
        )
    )


def expected_manifest(cfg: Any) -> tuple[DatasetManifest, str]:
    """The dataset's manifest when data.path holds one, else the shape the preset declares (of the
    kind its task trains on: a prior's token space then comes from ``model.arch``)."""
    try:
        return DatasetManifest.load(cfg.data.path), "dataset.json"
    except Exception:  # noqa: BLE001 - a MISSING path, an absent folder or manifest: fall back
        d = cfg.data
        classes = [str(i) for i in range(d.num_classes)]
        cls = task_class(str(cfg.task))
        extra: dict[str, Any] = {"kind": cls.data_kind}
        if cls.data_layouts:  # the shards it needs (a pix2pix preset's pairs)
            extra["layout"] = sorted(cls.data_layouts)[0]
            if extra["layout"] == "domains":
                extra["domains"] = ["A", "B"]
        extra |= cls.declared_data(cfg)
        return DatasetManifest(Path(), "declared", d.resolution, d.channels, classes, {}, extra), "preset"
