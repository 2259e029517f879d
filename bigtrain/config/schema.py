"""Typed config schema, registered with Hydra's ConfigStore.

Hydra merges the YAML under ``bigtrain/configs/`` onto these dataclasses, so an unknown key
(``trainer.max_stepz=1``) or a wrong type (``trainer.max_steps=abc``) stops at start-up with a
message naming the key; enums reject unknown choices the same way. Cross-field rules that types
cannot express live in ``bigtrain.config.validate`` (and in each task's ``check_config``).

This module holds what every task shares. Each task extends :class:`TrainConfig` with its own
sections, model keys and optimizer blocks in its own module (``GANConfig`` in
``bigtrain/train/tasks/gan.py``: ``loss``, ``ema``, ``model.z_dim``, ``optim.g``, ``optim.d``), and
its config group (``bigtrain/configs/task/<name>.yaml``) puts that subclass under the run's config. So a
run's saved config holds exactly what it uses, and another task's key (``vq.disc_start`` on a GAN)
is an unknown key, not silently ignored. A family's ``model.arch`` options are typed by its own
dataclass (``bigtrain.models``) the same way.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING


class Precision(StrEnum):
    auto = "auto"  # the launcher's (accelerate launch --mixed_precision), else fp32: bigtrain.config.launcher
    no = "no"  # fp32
    bf16 = "bf16"  # bf16 autocast
    fp16 = "fp16"  # fp16 autocast with a dynamic loss scale per optimizer


class NonFinitePolicy(StrEnum):
    stop = "stop"  # stop the run, naming the last good checkpoint
    skip = "skip"  # drop the update, count it (metric train/nonfinite_skips), go on


@dataclass
class RunConfig:
    name: str = "default"
    # The run folder: checkpoints, grids, config.yaml, train.log. Deterministic by default (no
    # timestamp) so that re-running the same command resumes it (resume=auto).
    dir: str = "runs/${run.name}"


class ResizePolicy(StrEnum):
    """How the stream makes a square image of the training resolution (bigtrain.data.images.fit)."""

    center = "center"
    random = "random"
    pad = "pad"


class DecodeOn(StrEnum):
    cpu = "cpu"
    gpu = "gpu"


class ResampleFilter(StrEnum):
    lanczos = "lanczos"
    bicubic = "bicubic"
    bilinear = "bilinear"


@dataclass
class DataConfig:
    path: str = MISSING  # a folder with a dataset.json (`bigtrain prepare` or `bigtrain index`)
    split: str = "train"
    batch_size: int = 64  # per process; 0 = derived from global_batch_size
    # the recipe's batch over all processes and accumulations (0 = unset): per process it is
    # global / (processes x trainer.accumulation), fixed at start-up (bigtrain.config.launcher)
    global_batch_size: int = 0
    num_workers: int = 2
    shuffle_buffer: int = 1000
    flip: bool = False
    record_keys: bool = False  # audit: write every consumed sample key to run.dir/data-keys/rank-R.txt
    # how an image that is not resolution x resolution becomes one (shards from `bigtrain index`, or
    # `prepare --resize shorter`): center (shorter side + centre crop), random (+ a crop at a seeded
    # offset, drawn per sample), pad (longer side + black bars)
    resize: ResizePolicy = ResizePolicy.center
    # the filter of those resizes: lanczos (sharpest, as `bigtrain prepare`), bicubic (ADM's
    # ImageNet rule), bilinear (torchvision's Resize); stages.downsample=box overrides it for the
    # lower stages of a progressive run. The FID references are made with the same filter.
    resample: ResampleFilter = ResampleFilter.lanczos
    # where JPEGs are decoded and resized: cpu (PIL in the loader's workers) or gpu (torchvision's
    # decode_jpeg on the training device, nvJPEG on CUDA, then torch's antialiased resize; needs
    # data.resample bilinear or bicubic). bigtrain.data.device_decode says what differs.
    decode: DecodeOn = DecodeOn.cpu
    # remote shards (http, s3, pipe): each read is retried `retries` times with backoff
    # (retry_backoff_s, doubling), then counted and skipped; more than max_shard_errors skipped shards in
    # one epoch of one data slot stop the run, naming the last
    retries: int = 3
    retry_backoff_s: float = 1.0
    max_shard_errors: int = 10
    # passed to fsspec for URLs (e.g. {endpoint_url: http://minio:9000, anon: true} for s3://); S3
    # credentials and endpoint also come from the usual AWS_* environment variables
    storage_options: dict[str, Any] = field(default_factory=dict)
    # The data shape a preset expects, used by `bigtrain info` and benchmarks when no dataset.json
    # is at data.path; when it is, dataset.json wins (a preset trains on any prepared shards).
    resolution: int = 32
    channels: int = 3
    num_classes: int = 0


@dataclass
class ModelConfig:
    name: str = "dcgan"  # a registered family (bigtrain.models): dcgan, biggan, ..., vqgan, gpt
    conditional: bool = False
    # the family's own options, typed by its dataclass in bigtrain.models (checked at start-up);
    # `bigtrain train model=NAME --help` lists them
    arch: Any = field(default_factory=dict)


class OptimizerName(StrEnum):
    adam = "adam"
    rmsprop = "rmsprop"  # the original WGAN's critic and generator (Arjovsky et al. 2017, Alg. 1)


@dataclass
class OptimizerConfig:
    """One network's ``optim.<name>`` block."""

    name: OptimizerName = OptimizerName.adam
    lr: float = 2e-4
    betas: tuple[float, float] = (0.5, 0.999)  # Adam's moment decays
    alpha: float = 0.99  # RMSProp's squared-gradient decay (PyTorch's default, the WGAN reference's)
    eps: float = 1e-8
    weight_decay: float = 0.0
    # Adam only: PyTorch's fused kernel (one launch for every tensor's update instead of a few per
    # tensor, a GPU speed lever; the same update to float rounding, and checkpoints load either way)
    fused: bool = False


class ScheduleName(StrEnum):
    constant = "constant"
    cosine = "cosine"  # half a cosine from lr to lr * min_lr_ratio at trainer.max_steps
    linear = "linear"


@dataclass
class ScheduleConfig:
    """The learning-rate schedule of every optimizer of the run, a pure function of the step (so a
    resumed run continues it exactly, with no scheduler state in the checkpoint)."""

    name: ScheduleName = ScheduleName.constant
    warmup_steps: int = 0  # linear warm-up from lr / warmup_steps to lr over the first steps
    min_lr_ratio: float = 0.0  # where cosine / linear decay ends, as a fraction of lr
    # the step the decay starts from (constant before it): pix2pix and CycleGAN hold the rate for
    # half the run, then decay linearly to 0; 0 = right after the warm-up
    decay_start: int = 0


@dataclass
class OptimConfig:
    """The schedule every optimizer of the run follows; each task adds one block per optimizer,
    named like its checkpoint component (``optim.g`` -> ``opt_G``)."""

    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)


@dataclass
class KeepBestConfig:
    """The best checkpoints by an evaluated metric, kept outside keep_last (bigtrain.checkpoint.best)."""

    count: int = 0  # how many to keep; 0 = off
    metric: str = ""  # an evaluated key (fid/inception, is/digits, kid/...); "" = the headline (FID)
    mode: str = "min"  # min (FID, KID) or max (IS, precision, recall)


@dataclass
class TrainerConfig:
    max_steps: int = 2000  # generator steps
    precision: Precision = Precision.auto
    log_every: int = 20
    sample_every: int = 500
    ckpt_every: int = 500
    keep_last: int = 3
    keep_best: KeepBestConfig = field(default_factory=KeepBestConfig)
    channels_last: bool = False  # NHWC memory format for G, D and the images (faster convs on GPUs)
    compile: bool = False  # torch.compile G and D in place (state_dict keys unchanged)
    # torch.compile's mode: default | reduce-overhead (CUDA graphs) | max-autotune |
    # max-autotune-no-cudagraphs
    compile_mode: str = "default"
    # BigGAN self-attention: matmul (the release's ops, bit for bit) | sdpa (one fused kernel that
    # never stores the attention weights; equal to float rounding). task=gan
    attention_kernel: str = "matmul"
    # cuDNN times its convolution algorithms on each new input shape and keeps the fastest (GPU;
    # BigGAN-PyTorch's train.py sets the same). false: its heuristic pick, no timing runs
    cudnn_benchmark: bool = True
    # Read losses and metrics on the host every N steps instead of every step (GPU speed: each read
    # waits for the GPU). N > 1: non-finite checks run every N steps and before every log, evaluation
    # and checkpoint (needs on_nonfinite=stop; task=gan)
    sync_every: int = 1
    # Average gradients in buckets sent while backward still runs (as DDP does), instead of one
    # all-reduce after it: the same averages (bit for bit on 2 ranks); for several processes
    grad_overlap: bool = False
    grad_bucket_mb: float = 25.0  # bucket size (DDP's default)
    accumulation: int = 1  # micro-batches of data.batch_size per optimizer step (BigGAN: 8)
    on_nonfinite: NonFinitePolicy = NonFinitePolicy.stop
    max_nonfinite_skips: int = 20  # with on_nonfinite=skip: this many in a row still stops the run
    progress: bool = True  # a tqdm bar; without it a log line every log_every steps (batch jobs)
    # Signals that make every rank save at the next step boundary: the first kind then requeues the
    # SLURM job (sbatch --signal=B:USR2@<s>), the second only stops (scancel, node drain).
    requeue_signals: list[str] = field(default_factory=lambda: ["USR2"])
    stop_signals: list[str] = field(default_factory=lambda: ["TERM"])
    collective_timeout_s: float = 1800.0  # a rank waiting this long on a hung peer fails instead of hanging


@dataclass
class EvalConfig:
    every: int = 1000  # FID every N steps (and at the end); 0 = only at the end
    feature: str = "inception"  # inception | digits | a registered extractor
    num_samples: int = 5000
    batch_size: int = 250
    ref_split: str = "train"
    ref_max_images: int = 50000
    seed: int = 1234  # fixed z for FID, separate from training randomness
    # registered metrics (bigtrain.eval.registry): fid, is, pr, kid, psnr, ssim, l1, class_agreement, attribute_agreement,
    # codebook; empty = the task's defaults (GAN, prior: fid, is, pr; tokenizer: fid, pr, psnr, ssim,
    # codebook; pix2pix: fid, l1, psnr, ssim)
    metrics: list[str] | None = None
    # precision/recall's feature network: "" = eval.feature's; "vgg16" = Kynkaanniemi et al.'s choice
    pr_feature: str = ""
    # a user's precomputed FID reference (an .npz with mu, sigma of eval.feature's features, e.g. an
    # ADM evaluator reference batch) instead of statistics of the dataset's shards; "" = the shards'
    ref_stats: str = ""
    enabled: bool = True


@dataclass
class SampleConfig:
    grid_rows: int = 8  # the fixed-z grid: rows x rows images (one row per class when conditional)
    seed: int = 4321


class TrackingBackend(StrEnum):
    """Where a run's params, metrics, images and artifacts go (bigtrain.tracking)."""

    mlflow = "mlflow"  # tracking.uri: a SQLite file or an `mlflow server`
    tensorboard = "tensorboard"  # event files in run.dir/tensorboard/ (artifacts copied next to them)
    wandb = "wandb"  # Weights & Biases; files in run.dir/wandb/ (offline by default: `wandb sync` later)


class WandbMode(StrEnum):
    offline = "offline"  # write run.dir/wandb/offline-run-*; upload later with `wandb sync`
    online = "online"  # stream to the W&B server (needs WANDB_API_KEY or `wandb login`)


@dataclass
class WandbConfig:
    """``tracking.backend=wandb`` only: the W&B project is ``tracking.experiment``."""

    entity: str = ""  # the W&B team or user; "" = the account's default entity
    mode: WandbMode = WandbMode.offline


@dataclass
class TrackingConfig:
    enabled: bool = True
    backend: TrackingBackend = (
        TrackingBackend.mlflow
    )  # the config group tracking=mlflow|tensorboard|wandb sets it
    uri: str = "sqlite:///mlflow.db"  # MLflow only
    experiment: str = "bigtrain"  # the MLflow experiment, or the W&B project
    # At the end of a run, its last checkpoint as a `bigtrain export` folder (run.dir/model), logged
    # as the run's model (MLflow: a pyfunc model; others: the folder's files under model/).
    log_model: bool = True
    wandb: WandbConfig = field(default_factory=WandbConfig)


DOWNSAMPLE = ("lanczos", "box")  # how images are shrunk to a lower stage's resolution


@dataclass
class StagesConfig:
    """Resolution stages (``bigtrain.train.stages``): empty = train at the dataset's resolution."""

    # each: {resolution, steps | images, fade_steps | fade_images, batch_size?, micro_batch?, lr_g?, lr_d?}
    schedule: list[dict[str, Any]] = field(default_factory=list)
    reset_optimizer: bool = False  # ProGAN: fresh Adam moments when a stage starts
    # ProGAN's reset_opt_for_new_lod resets whenever the level of detail crosses an integer: at the
    # start of a fade (reset_optimizer) and again when the fade ends (this)
    reset_after_fade: bool = False
    # real images of a lower stage: "lanczos" (as `bigtrain prepare`) or "box" (ProGAN's 2x2 means,
    # dataset_tool.py); the FID references of that stage are made the same way
    downsample: str = "lanczos"
    # ProGAN's process_reals: during a fade, blend each real towards its 2x2-averaged-then-upsampled
    # self by 1 - alpha, as G's image is blended (GANs only)
    fade_reals: bool = False
    # a stage's batch above this (per process) is split into accumulated micro-batches; 0 = no cap
    max_micro_batch: int = 0


@dataclass
class InitFromConfig:
    """Fine-tuning: start a new run from another run's network weights (not its step, optimizer or
    data position, which ``resume`` restores). Ignored when the run dir already has a checkpoint:
    a requeued fine-tuning job resumes its own progress."""

    # a checkpoint folder, a run folder (its newest valid checkpoint) or a `bigtrain export` folder
    path: str = ""
    # which networks to take (GAN: G, D, G_ema; tokenizer: vq, D; prior: prior); empty = every
    # network the source has and this task trains
    modules: list[str] = field(default_factory=list)


@dataclass
class TrainConfig:
    seed: int = 0
    task: str = "gan"  # the config group task=gan|tokenizer|prior (bigtrain.train.tasks) sets it
    resume: str = "auto"  # auto | never | best (trainer.keep_best's best) | PATH to a checkpoint folder
    # keys (or fnmatch patterns) whose change since the checkpoint is accepted on resume; any other
    # change stops the run (bigtrain.config.fingerprint; the keys that may always change are there)
    allow_changes: list[str] = field(default_factory=list)
    init_from: InitFromConfig = field(default_factory=InitFromConfig)
    run: RunConfig = field(default_factory=RunConfig)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    stages: StagesConfig = field(default_factory=StagesConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)


def register() -> None:
    """Make ``train_schema`` available to ``bigtrain/configs/train.yaml``'s defaults list."""
    ConfigStore.instance().store(name="train_schema", node=TrainConfig)
