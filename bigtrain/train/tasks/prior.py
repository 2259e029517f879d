"""Stage 2 of the VQ-GAN pipeline: the autoregressive prior over tokenizer codes (task=prior).

It trains from token shards (``bigtrain tokenize``), so the tokenizer never runs during training;
only sampling decodes codes back to images, through the frozen tokenizer recorded in the token
dataset's ``dataset.json`` (its weight digest is checked, so a prior never decodes with the wrong
tokenizer).

Two engines (``prior.engine``, ``bigtrain.train.engines``) behind one interface: ``deepspeed``
(DeepSpeed's own engine with ZeRO stage 1, 2 or 3, its optimizer partitions as DeepSpeed checkpoint
files inside bigtrain's checkpoint folder, the consolidated weights as the ``prior`` component that
sampling reads without DeepSpeed), or ``torch`` (plain PyTorch, one all-reduce of the gradients
per step, no DeepSpeed needed).

The learning rate follows ``optim.schedule`` (warm-up + cosine in the presets), AdamW with weight
decay on matrices and embeddings only (GPT-2 / LlamaGen practice). Label dropout (for classifier-free
guidance) draws from the per-rank torch RNG, which the checkpoint restores, so resuming is exact.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import nn

from bigtrain.checkpoint.io import NativeState
from bigtrain.checkpoint.manager import load_component
from bigtrain.config.schema import ModelConfig, OptimConfig, OptimizerConfig, TrainConfig
from bigtrain.data.manifest import DatasetManifest
from bigtrain.errors import ConfigError
from bigtrain.eval.source import EvalSource, Judged
from bigtrain.models import build_model, parse_arch
from bigtrain.models.transformer import TokenPrior
from bigtrain.train.engines import DeepSpeedEngine, Engine, TorchEngine
from bigtrain.train.optim import lr_factor
from bigtrain.train.prior_sampling import PriorSampling
from bigtrain.train.step import NonFiniteGuard, accumulate
from bigtrain.train.task import Batches, Task, register_task
from bigtrain.utils.rng import preserve_rng

log = logging.getLogger(__name__)


def token_space(manifest: DatasetManifest, arch: Any) -> tuple[int, int]:
    """``(vocab, seq_len)`` from the token dataset, or from ``model.arch.vocab/token_grid``."""
    tokens = manifest.extra.get("tokens") if manifest.extra.get("kind") == "tokens" else None
    if tokens is not None:
        h, w = (int(v) for v in tokens["grid"])
        return int(tokens["vocab"]), h * w
    vocab, grid = int(arch.vocab), int(arch.token_grid)
    if vocab <= 0 or grid <= 0:
        raise ConfigError(
            f"task=prior trains on token shards: {manifest.root} holds images; make token shards "
            "with `bigtrain tokenize TOKENIZER_CKPT IMAGES OUT` and set data.path=OUT"
        )
    return vocab, grid * grid


class EngineName(StrEnum):
    torch = "torch"  # plain PyTorch: one all-reduce of the gradients per step
    deepspeed = "deepspeed"  # DeepSpeed's engine with ZeRO (prior.zero_stage)


@dataclass
class PriorTrainConfig:
    """``prior.*``: how the transformer trains and samples."""

    engine: EngineName = EngineName.deepspeed
    zero_stage: int = 2  # DeepSpeed ZeRO stage: 1 optimizer states, 2 + gradients, 3 + parameters
    grad_clip: float = 1.0  # global gradient-norm clipping (0 = off)
    # The frozen tokenizer that decodes samples; empty = the checkpoint recorded by `bigtrain tokenize`
    # in the token dataset's dataset.json
    tokenizer: str = ""
    # Sampling for grids, FID and `bigtrain sample` (Esser et al. 2021; LlamaGen's CFG)
    temperature: float = 1.0
    top_k: int = 0  # 0 = off
    top_p: float = 1.0  # 1 = off
    cfg_scale: float = 1.0  # classifier-free guidance; 1 = off


@dataclass
class PriorOptimConfig(OptimConfig):
    prior: OptimizerConfig = field(default_factory=OptimizerConfig)  # opt_prior (AdamW)


@dataclass
class PriorTaskConfig(TrainConfig):
    """A ``task=prior`` run's config: the shared sections, plus ``prior`` and its AdamW."""

    task: str = "prior"
    model: ModelConfig = field(default_factory=lambda: ModelConfig(name="gpt", conditional=True))
    optim: PriorOptimConfig = field(default_factory=PriorOptimConfig)
    prior: PriorTrainConfig = field(default_factory=PriorTrainConfig)


@register_task
class PriorTask(Task):
    name = "prior"
    config = PriorTaskConfig
    model_kind = "prior"
    data_kind = "tokens"
    inference_components = ("prior",)
    default_metrics = ("fid", "is", "pr")
    sample_options = frozenset({"temperature", "top_k", "top_p", "cfg_scale"})

    @classmethod
    def check_config(cls, cfg: Any, manifest: DatasetManifest) -> list[str]:  # noqa: ARG003
        problems = []
        p = cfg.prior
        if int(p.zero_stage) not in (0, 1, 2, 3):
            problems.append(f"prior.zero_stage must be 0, 1, 2 or 3 (got {p.zero_stage})")
        if p.grad_clip < 0 or p.temperature <= 0 or not 0 < p.top_p <= 1:
            problems.append("prior: grad_clip >= 0, temperature > 0 and 0 < top_p <= 1 are required")
        if str(cfg.optim.prior.name) != "adam":
            problems.append("optim.prior.name: the prior trains with AdamW (optim.prior.name=adam)")
        if str(p.engine) == "torch" and str(cfg.trainer.precision) == "fp16":
            problems.append("prior.engine=torch trains in fp32 or bf16 (fp16 needs prior.engine=deepspeed)")
        if cfg.stages.schedule:
            problems.append(
                "stages.schedule is for images (task=gan with a growing model, task=tokenizer); "
                "task=prior trains on token sequences of one length"
            )
        if cfg.data.flip:
            problems.append("data.flip must be false for task=prior (a flipped image has other codes)")
        return problems

    @classmethod
    def describe(cls, cfg: Any) -> dict[str, Any]:
        engine, zero = str(cfg.prior.engine), int(cfg.prior.zero_stage)
        return {
            "loss": "next-token cross-entropy",
            "step": f"engine {engine} (ZeRO-{zero})",
            "engine": engine,
            "zero_stage": zero,
        }

    def __init__(self, cfg: DictConfig, manifest: DatasetManifest, device: torch.device, accelerator: Any):
        self.cfg, self.manifest, self.device, self.accelerator = cfg, manifest, device, accelerator
        arch = parse_arch(cfg.model.name, cfg.model.arch)
        vocab, seq_len = token_space(manifest, arch)
        self.num_classes = manifest.num_classes if cfg.model.conditional else 0
        where = torch.device("meta") if device.type == "meta" else torch.device("cpu")
        with where:
            self.model: TokenPrior = build_model(
                cfg.model.name, arch, vocab=vocab, seq_len=seq_len, num_classes=self.num_classes
            )
        self.model.to(device)
        self.batch_size = int(cfg.data.batch_size)
        self.accumulation = max(1, int(cfg.trainer.accumulation))
        self.guard = NonFiniteGuard(cfg.trainer)
        self.engine: Engine = self._engine(cfg, device, accelerator)
        self._vq: nn.Module | None = None
        self._sampling: PriorSampling | None = None
        self.seq_len = seq_len

    def _engine(self, cfg: DictConfig, device: torch.device, accelerator: Any) -> Engine:
        p = cfg.prior
        if str(p.engine) == "torch":
            return TorchEngine(
                "prior",
                self.model,
                cfg.optim.prior,
                self.guard,
                accumulation=self.accumulation,
                clip=float(p.grad_clip),
                device=device,
                accelerator=accelerator,
            )
        return DeepSpeedEngine(
            "prior",
            self.model,
            cfg.optim.prior,
            self.guard,
            accumulation=self.accumulation,
            micro_batch=self.batch_size,
            precision=str(cfg.trainer.precision),
            zero_stage=int(p.zero_stage),
            grad_clip=float(p.grad_clip),
            device=device,
        )

    def source_manifest(self) -> DatasetManifest:
        """The images the tokens were made from: what FID compares decoded samples with."""
        source = self.manifest.extra.get("source", {}).get("path")
        try:
            return DatasetManifest.load(source or "")
        except Exception as exc:
            raise ConfigError(
                f"FID needs the token dataset's source images ({source or 'not recorded'}): {exc}; "
                "or set eval.enabled=false"
            ) from None

    # -- checkpointable state -------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "prior": self.engine.full_weights(),
            "task": self.guard.state_dict(),
            **self.engine.state_dict(),
        }

    def load_state_dict(self, states: Mapping[str, Any]) -> None:
        load_component("prior", self.model, states)
        self.engine.load_state_dict(states)
        self.guard.load_state_dict(states.get("task", {}))

    def native_state(self) -> NativeState | None:
        return self.engine.native_state()

    def digest_modules(self) -> dict[str, nn.Module]:
        return self.engine.digest_modules()

    def weight_modules(self) -> dict[str, nn.Module]:
        return {"prior": self.model}  # the engine (DeepSpeed) is built later, from these weights

    def images_per_step(self) -> int:
        return self.batch_size * self.accumulation

    def units_per_step(self) -> dict[str, int]:
        n = self.images_per_step()
        return {"img": n, "tokens": n * self.seq_len}

    # -- one step ---------------------------------------------------------------------------------
    def _drop_labels(self, labels: torch.Tensor | None) -> torch.Tensor | None:
        """Label dropout for classifier-free guidance, drawn from the (checkpointed) torch RNG."""
        p = self.model.cfg.label_dropout
        if labels is None or p <= 0:
            return labels
        drop = torch.rand(labels.shape).to(labels.device) < p
        return torch.where(drop, torch.full_like(labels, self.model.null_class), labels)

    def train_step(self, step: int, data: Batches) -> dict[str, float]:
        factor = lr_factor(step, self.cfg.optim.schedule, self.cfg.trainer.max_steps)
        update = self.engine.update
        lr = update.schedule(factor)

        def micro() -> torch.Tensor:
            batch = next(data)
            tokens = batch["tokens"].to(self.device, non_blocking=True)
            labels = batch["label"].to(self.device) if self.num_classes else None
            labels = self._drop_labels(labels)
            with self.engine.autocast():
                logits = self.engine.forward()(tokens[:, :-1], labels)
                return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), tokens.reshape(-1))

        value = update.apply(accumulate(update, micro), step)
        metrics = {"lr/prior": lr, "train/nonfinite_skips": float(self.guard.total)}
        if value is not None:
            self.guard.good_step()
            metrics |= {"loss/prior": value, "grad_norm/prior": update.grad_norm}
        return metrics

    def close(self) -> None:
        self.engine.close()

    # -- sampling ---------------------------------------------------------------------------------
    def before_sampling(self) -> None:
        self.engine.before_sampling()

    @property
    def vq(self) -> nn.Module:
        """The frozen tokenizer that decodes samples (loaded on first use, checked against the
        digest that ``bigtrain tokenize`` recorded)."""
        if self._vq is None:
            from bigtrain.train.snapshot import load_tokenizer

            recorded = self.manifest.extra.get("tokenizer", {})
            path = str(self.cfg.prior.tokenizer or recorded.get("checkpoint", ""))
            if not path:
                raise ConfigError("no tokenizer to decode samples: set prior.tokenizer=CHECKPOINT")
            if not Path(path).is_dir():
                raise ConfigError(
                    f"the tokenizer checkpoint {path} (recorded in {self.manifest.root}/dataset.json) "
                    "is gone: set prior.tokenizer=PATH to a copy of it"
                )
            with preserve_rng():  # building it draws initial weights: training's RNG must not move
                vq, ck = load_tokenizer(path, self.device)
            want, have = recorded.get("digest"), ck.meta.get("digests", {}).get("vq")
            if want and have != want:
                raise ConfigError(
                    f"tokenizer {path} is not the one that made these tokens (vq digest {str(have)[:12]}, "
                    f"dataset.json records {str(want)[:12]})"
                )
            self._vq = vq
        return self._vq

    @property
    def sampling(self) -> PriorSampling:
        if self._sampling is None:
            self._sampling = PriorSampling(
                self.engine.sampling_model,
                lambda: self.vq,
                num_classes=self.num_classes,
                seq_len=self.seq_len,
                device=self.device,
                defaults=self.cfg.prior,
            )
        return self._sampling

    def sample_tokens(
        self, labels: torch.Tensor | None, n: int, generator: torch.Generator, **overrides: Any
    ) -> torch.Tensor:
        """``[n, seq_len]`` codes from the prior with the config's sampling settings (or overrides)."""
        return self.sampling.tokens(labels, n, generator, **overrides)

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        return self.sampling.decode(codes)

    def generate_images(
        self, labels: torch.Tensor | None, n: int, generator: torch.Generator, **overrides: Any
    ) -> torch.Tensor:
        return self.sampling.images(labels, n, generator, **overrides)

    def sample_grid(self, seed: int, rows: int) -> tuple[torch.Tensor, int]:
        return self.sampling.grid(seed, rows)

    def sample(
        self, n: int, generator: torch.Generator, *, classes: list[int] | None = None, **options: Any
    ) -> torch.Tensor:
        return self.sampling.sample(n, generator, classes=classes, **options)

    def sample_labels(self, labels: torch.Tensor, generator: torch.Generator, **options: Any) -> torch.Tensor:
        return self.sampling.for_labels(labels, generator, **options)

    # -- evaluation -------------------------------------------------------------------------------
    def eval_source(self) -> EvalSource:
        """Decoded samples against the token dataset's source images."""
        reference = self.source_manifest()
        # ZeRO-3 gathers a full copy for the main process only: it samples alone then
        return EvalSource(
            Judged.samples,
            lambda n, g: self.sample(n, g),
            reference,
            reference.resolution,
            splittable=not getattr(self.engine, "sharded", False),
        )
