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

What the prior is conditioned on (``prior.condition``, :mod:`bigtrain.train.prior_conditions`): a
class, a caption (text-to-image, as LlamaGen's t2i models: the caption's positions prefix the codes),
or the codes of a condition image (taming's cond-transformer: ``bigtrain tokenize`` of a paired set
writes them). ``bigtrain sample --prompt`` / ``--condition`` sample from them, and ``--size 2x``
samples a grid larger than the training one through a sliding window (taming's approach).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import nn

from bigtrain.checkpoint.io import NativeState
from bigtrain.checkpoint.manager import load_component
from bigtrain.config.schema import ModelConfig, OptimConfig, OptimizerConfig, TrainConfig
from bigtrain.data.manifest import DatasetManifest
from bigtrain.data.tokenize import read_conditions
from bigtrain.errors import ConfigError
from bigtrain.eval.source import EvalSource, Judged, Need
from bigtrain.models import build_model, parse_arch
from bigtrain.models.text_encoder import build_vocabulary
from bigtrain.models.transformer import TokenPrior
from bigtrain.train.captions import Captions, read_captions
from bigtrain.train.engines import DeepSpeedEngine, Engine, TorchEngine
from bigtrain.train.in_order import InOrder, Rows
from bigtrain.train.optim import lr_factor
from bigtrain.train.prior_conditions import (
    PriorTextConfig,
    build_condition,
    condition_kind,
    condition_problems,
    drop_mask,
)
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
    cond_tokenizer: str = ""  # the condition images' tokenizer when it moved (prior.condition=image)
    # Sampling for grids, FID and `bigtrain sample` (Esser et al. 2021; LlamaGen's CFG)
    temperature: float = 1.0
    top_k: int = 0  # 0 = off
    top_p: float = 1.0  # 1 = off
    cfg_scale: float = 1.0  # classifier-free guidance; 1 = off
    # what the prior is conditioned on: auto (condition codes when the token shards have them, else
    # the class when model.conditional) | text (the captions; text.*) | image (the condition codes)
    condition: str = "auto"


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
    text: PriorTextConfig = field(default_factory=PriorTextConfig)


@register_task
class PriorTask(Task):
    name = "prior"
    config = PriorTaskConfig
    model_kind = "prior"
    data_kind = "tokens"
    inference_components = ("prior",)
    default_metrics = ("fid", "is", "pr")
    sample_options = frozenset({"temperature", "top_k", "top_p", "cfg_scale", "size"})

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
        return problems + condition_problems(cfg, manifest)

    @classmethod
    def provides(cls, cfg: Any, manifest: DatasetManifest | None) -> frozenset[Need]:
        """Text and image priors draw for known conditions: the class each should show (and, for
        captions with measured attributes, the attribute words)."""
        kind = condition_kind(cfg, manifest) if manifest is not None else "class"
        if kind == "image":
            return cls.eval_provides | {Need.labels}
        if kind == "text":  # captions name attributes; whether the data measured them: condition_problems
            return cls.eval_provides | {Need.labels, Need.attributes}
        return cls.eval_provides

    @classmethod
    def declared_data(cls, cfg: Any) -> dict[str, Any]:
        """Captions for ``prior.condition=text``; for ``image``, condition codes shaped as the image
        codes ``model.arch.vocab`` / ``token_grid`` declare (one tokenizer for both, the default)."""
        if str(cfg.prior.condition) == "text":
            return {"captions": True}
        if str(cfg.prior.condition) == "image":
            arch = parse_arch(cfg.model.name, cfg.model.arch)
            return {"condition": {"grid": [arch.token_grid] * 2, "vocab": arch.vocab}}
        return {}

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
        self.kind = condition_kind(cfg, manifest)
        self.num_classes = manifest.num_classes if self.kind == "class" else 0
        self.condition = build_condition(cfg, manifest, self.num_classes)
        where = torch.device("meta") if device.type == "meta" else torch.device("cpu")
        with where:
            self.model: TokenPrior = build_model(
                cfg.model.name,
                arch,
                vocab=vocab,
                seq_len=seq_len,
                num_classes=self.num_classes,
                condition=self.condition,
            )
        if self.condition.own_text_encoder and manifest.splits and device.type != "meta":
            # every rank reads the same captions: the same sorted vocabulary everywhere (a checkpoint's
            # own vocabulary replaces it when one is loaded)
            self.words.set_vocabulary(build_vocabulary(read_captions(manifest, "train")))
        self.model.to(device)
        self._hf: Any = None  # the frozen Hugging Face encoder (text.encoder=hf), loaded on first use
        self._cond_vq: nn.Module | None = None
        self._captions = Captions(manifest, str(cfg.eval.ref_split)) if self.kind == "text" else None
        self._drawn: InOrder | None = None  # the conditions sample() draws, continuing
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
        task: dict[str, Any] = self.guard.state_dict()
        if self._uses_hf:  # which frozen encoder the caption projection was trained on
            task["text_encoder_digest"] = self.hf.digest
        return {"prior": self.engine.full_weights(), "task": task, **self.engine.state_dict()}

    def load_state_dict(self, states: Mapping[str, Any]) -> None:
        load_component("prior", self.model, states)
        self.engine.load_state_dict(states)
        task = states.get("task", {})
        self.guard.load_state_dict(task)
        want = task.get("text_encoder_digest")
        if want and self.hf.digest != want:
            raise ConfigError(
                f"text.hf_path={self.cfg.text.hf_path} holds another encoder than the one this prior was "
                f"trained with (weights digest {self.hf.digest[:12]}, the checkpoint records {want[:12]})"
            )

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

    # -- the condition --------------------------------------------------------------------------
    @property
    def _uses_hf(self) -> bool:
        return self.kind == "text" and not self.condition.own_text_encoder

    @property
    def words(self) -> Any:
        """The own caption encoder (its vocabulary reads prompts)."""
        prefix = self.model.prefix
        assert prefix is not None and getattr(prefix, "encoder", None) is not None
        return prefix.encoder  # type: ignore[union-attr]

    @property
    def hf(self) -> Any:
        """The frozen Hugging Face encoder (``text.encoder=hf``), loaded on first use."""
        if self._hf is None:
            from bigtrain.models.hf_text import FrozenTextEncoder

            with preserve_rng():
                self._hf = FrozenTextEncoder(
                    str(self.cfg.text.hf_path), int(self.cfg.text.max_len), self.device
                )
            if self._hf.dim != self.condition.text_features:
                raise ConfigError(
                    f"text.hf_path={self.cfg.text.hf_path}: features {self._hf.dim} wide, the prior was "
                    f"built for {self.condition.text_features}"
                )
        return self._hf

    def encode_text(self, captions: list[str]) -> torch.Tensor:
        """Captions as the prefix module reads them: word ids (own encoder) or frozen features."""
        if self._uses_hf:
            return self.hf(captions)
        return self.words.tokenize(captions, pad_to=int(self.cfg.text.max_len)).to(self.device)

    @property
    def cond_vq(self) -> nn.Module:
        """The frozen tokenizer of the condition images (``--condition``, grids), digest-checked."""
        if self._cond_vq is None:
            self._cond_vq = self._load_tokenizer(
                self.manifest.extra["condition"]["tokenizer"], "cond_tokenizer"
            )
        return self._cond_vq

    def encode_conditions(self, images: torch.Tensor) -> torch.Tensor:
        """Condition images ``[N, C, H, W]`` in [-1, 1] -> their codes ``[N, P]``."""
        with torch.no_grad():
            return self.cond_vq.encode_indices(images.to(self.device)).reshape(len(images), -1)

    def _batch_condition(self, batch: Mapping[str, Any]) -> torch.Tensor | None:
        if self.kind == "class":
            return batch["label"].to(self.device)
        if self.kind == "text":
            return self.encode_text(list(batch["text"]))
        if self.kind == "image":
            return batch["cond"].to(self.device)
        return None

    # -- one step ---------------------------------------------------------------------------------

    def train_step(self, step: int, data: Batches) -> dict[str, float]:
        factor = lr_factor(step, self.cfg.optim.schedule, self.cfg.trainer.max_steps)
        update = self.engine.update
        lr = update.schedule(factor)

        def micro() -> torch.Tensor:
            batch = next(data)
            tokens = batch["tokens"].to(self.device, non_blocking=True)
            cond = self._batch_condition(batch)
            drop = None if cond is None else drop_mask(len(tokens), self.model.cfg.label_dropout, self.device)
            with self.engine.autocast():
                logits = self.engine.forward()(tokens[:, :-1], cond, drop=drop)
                logits = logits[:, self.model.prefix_len - 1 :]
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
            self._vq = self._load_tokenizer(self.manifest.extra.get("tokenizer", {}), "tokenizer")
        return self._vq

    def _load_tokenizer(self, recorded: Mapping[str, Any], key: str) -> nn.Module:
        """The tokenizer ``dataset.json`` records (``recorded``), or the copy ``prior.<key>`` names,
        checked against the recorded weight digest."""
        from bigtrain.train.snapshot import load_tokenizer

        path = str(self.cfg.prior[key] or recorded.get("checkpoint", ""))
        if not path:
            raise ConfigError(f"no tokenizer to decode samples: set prior.{key}=CHECKPOINT")
        if not Path(path).is_dir():
            raise ConfigError(
                f"the tokenizer checkpoint {path} (recorded in {self.manifest.root}/dataset.json) "
                f"is gone: set prior.{key}=PATH to a copy of it"
            )
        with preserve_rng():  # building it draws initial weights: training's RNG must not move
            vq, ck = load_tokenizer(path, self.device)
        want, have = recorded.get("digest"), ck.meta.get("digests", {}).get("vq")
        if want and have != want:
            raise ConfigError(
                f"tokenizer {path} is not the one that made these tokens (vq digest {str(have)[:12]}, "
                f"dataset.json records {str(want)[:12]})"
            )
        return vq

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

    @property
    def condition_kind(self) -> str | None:  # type: ignore[override]
        """``text`` or ``image`` (``bigtrain sample --prompt`` / ``--condition``); None for a class."""
        return self.kind if self.kind in ("text", "image") else None

    def _condition_rows(self) -> Iterator[Rows]:
        """``eval.ref_split``'s conditions as one batch: caption indices, or condition codes with
        the labels of their images."""
        if self._captions is not None:
            yield (torch.arange(len(self._captions.all)),)
            return
        cond, labels = read_conditions(self.manifest, str(self.cfg.eval.ref_split))
        yield torch.from_numpy(cond.reshape(len(cond), -1).astype(np.int64)), torch.from_numpy(labels)

    def _condition_order(self) -> InOrder:
        return InOrder(self._condition_rows, f"conditions in the {self.cfg.eval.ref_split} split")

    def _next_conditions(self, order: InOrder, n: int) -> torch.Tensor:
        """The next ``n`` conditions ``order`` draws, as the prefix module reads them."""
        if self._captions is not None:
            return self.encode_text(self._captions.take(order, n))
        return order.take(n)[0].to(self.device)

    def _condition_labels(self, n: int) -> np.ndarray:
        """The class of each of the first ``n`` conditions' images (what class agreement checks)."""
        if self._captions is not None:
            return self._captions.labels(n)
        return self._condition_order().take(n)[1].numpy()

    def sample_conditioned(
        self, conditions: torch.Tensor | list[str], generator: torch.Generator, **options: Any
    ) -> torch.Tensor:
        """One image per prompt (``prior.condition=text``) or per condition image ``[N, C, H, W]``
        in [-1, 1] (``image``: encoded by the condition tokenizer first)."""
        if self.kind == "text" and not isinstance(conditions, torch.Tensor):
            cond = self.encode_text(list(conditions))
        elif self.kind == "image" and isinstance(conditions, torch.Tensor):
            cond = self.encode_conditions(conditions)
        else:
            raise ConfigError(
                f"this prior is conditioned on {self.kind}: give --prompt for text, --condition for images"
            )
        return self.sampling.images(cond, len(cond), generator, **options)

    def sample_grid(self, seed: int, rows: int) -> tuple[torch.Tensor, int]:
        """Class priors: one row per class. Text: one row per prompt. Image: one row per condition,
        the condition (as its tokenizer decodes it) first."""
        g = torch.Generator(self.device).manual_seed(seed)
        if self._captions is not None:
            prompts = [p for p in self._captions.grid_prompts(rows) for _ in range(rows)]
            return self.sampling.images(self.encode_text(prompts), len(prompts), g), rows
        if self.kind == "image":
            cond = self._next_conditions(self._condition_order(), rows)
            side = math.isqrt(cond.shape[1])
            with torch.no_grad():
                shown = self.cond_vq.decode_indices(cond.view(rows, side, side)).float().clamp(-1, 1).cpu()
            out = self.sampling.images(cond.repeat_interleave(rows - 1, 0), rows * (rows - 1), g)
            out = out.view(rows, rows - 1, *out.shape[1:])
            if shown.shape[1] != out.shape[2]:
                shown = shown.expand(-1, out.shape[2], -1, -1)
            return torch.cat([shown[:, None], out], dim=1).flatten(0, 1), rows
        return self.sampling.grid(seed, rows)

    def sample(
        self, n: int, generator: torch.Generator, *, classes: list[int] | None = None, **options: Any
    ) -> torch.Tensor:
        """Class priors: labels drawn from ``classes``. Text and image priors: the next ``n``
        conditions of ``eval.ref_split`` (from its first on the first call, continuing, cycling)."""
        if self.kind not in ("text", "image"):
            return self.sampling.sample(n, generator, classes=classes, **options)
        if classes:
            raise ConfigError(f"this prior samples from {self.kind} conditions: --class does not apply")
        if self._drawn is None:
            self._drawn = self._condition_order()
        return self.sampling.images(self._next_conditions(self._drawn, n), n, generator, **options)

    def sample_labels(self, labels: torch.Tensor, generator: torch.Generator, **options: Any) -> torch.Tensor:
        return self.sampling.for_labels(labels, generator, **options)

    # -- evaluation -------------------------------------------------------------------------------
    def eval_source(self) -> EvalSource:
        """Decoded samples against the token dataset's source images. A text or image prior draws
        for ``eval.ref_split``'s conditions in order (the main process alone), so class agreement
        (and, for captions with measured attributes, attribute agreement) can be judged."""
        reference = self.source_manifest()
        if self.kind in ("text", "image"):
            order = self._condition_order()
            fields: dict[str, Any] = {"labels": self._condition_labels}
            if self._captions is not None:
                fields = self._captions.eval_fields()
            return EvalSource(
                Judged.samples,
                lambda n, g: self.sampling.images(self._next_conditions(order, n), n, g),
                reference,
                reference.resolution,
                rewind=order.rewind,
                splittable=False,
                **fields,
            )
        # ZeRO-3 gathers a full copy for the main process only: it samples alone then
        return EvalSource(
            Judged.samples,
            lambda n, g: self.sample(n, g),
            reference,
            reference.resolution,
            splittable=not getattr(self.engine, "sharded", False),
        )
