"""Paired image-to-image translation (``task=pix2pix``; Isola et al. 2017).

One step, as the reference (junyanz/pytorch-CycleGAN-and-pix2pix, ``pix2pix_model.py``) takes it:

1. ``fake = G(source)``, once;
2. discriminator: the conditional PatchGAN sees ``(source, target)`` as real and ``(source, fake)``
   as generated; its loss is halved so D learns more slowly than G;
3. generator: the GAN term on ``D(source, fake)`` with D frozen (after D's update, as the
   reference does) plus ``loss.l1_weight`` (100) times the L1 distance to the target.

``loss.name`` is ``non_saturating`` (the reference's ``vanilla``: BCE with target 1 for G) or
``lsgan``, both scaled as the reference scales them (:mod:`bigtrain.losses.translation`). There is no latent input: G's dropout is its noise (``eval.dropout`` keeps it on when
sampling, as the reference's test script does without ``--eval``; BatchNorm then uses its running
statistics, so an output does not depend on the other images of its batch).

Evaluation translates the sources of ``eval.ref_split`` in order: FID of the outputs against that
split's targets, L1 / PSNR / SSIM of (target, output) pairs, and with class labels the share of
outputs the feature network classifies as their source's class. The grid shows source | output |
target triples.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig
from torch import nn

from bigtrain import distributed as bdist
from bigtrain.checkpoint.manager import load_component
from bigtrain.config.schema import EvalConfig, ModelConfig, OptimConfig, OptimizerConfig, TrainConfig
from bigtrain.data.manifest import DatasetManifest
from bigtrain.data.read import iter_pairs
from bigtrain.eval.source import EvalSource, Judged, Need
from bigtrain.losses.translation import TRANSLATION_LOSSES, PatchObjective
from bigtrain.models.registry import build_translation
from bigtrain.train.in_order import InOrder, first
from bigtrain.train.optim import lr_factor
from bigtrain.train.step import (
    NonFiniteGuard,
    accumulate,
    adversarial_updates,
    apply_frozen,
    rank_means,
    record_updates,
)
from bigtrain.train.task import Batches, Task, eval_recipe, register_task


@dataclass
class Pix2PixLossConfig:
    """``loss.*`` of pix2pix: the conditional GAN objective plus L1 to the target."""

    name: str = "non_saturating"  # non_saturating (the reference's "vanilla" BCE) | lsgan
    l1_weight: float = 100.0  # lambda of the L1 term (the paper's 100)


@dataclass
class TranslationModelConfig(ModelConfig):
    g_width: int = 64  # ngf: the generator's base width
    d_width: int = 64  # ndf: the PatchGAN's base width


@dataclass
class Pix2PixOptimConfig(OptimConfig):
    g: OptimizerConfig = field(default_factory=OptimizerConfig)  # opt_G
    d: OptimizerConfig = field(default_factory=OptimizerConfig)  # opt_D


@dataclass
class Pix2PixEvalConfig(EvalConfig):
    """``eval.*`` of pix2pix: the shared keys plus whether sampling keeps G's dropout on."""

    dropout: bool = True  # the reference samples with dropout active (its only noise)


@dataclass
class Pix2PixConfig(TrainConfig):
    """A ``task=pix2pix`` run's config: the shared sections, plus ``loss`` and the G and D optimizers."""

    task: str = "pix2pix"
    model: TranslationModelConfig = field(default_factory=lambda: TranslationModelConfig(name="pix2pix"))
    optim: Pix2PixOptimConfig = field(default_factory=Pix2PixOptimConfig)
    loss: Pix2PixLossConfig = field(default_factory=Pix2PixLossConfig)
    eval: Pix2PixEvalConfig = field(default_factory=Pix2PixEvalConfig)


def translation_problems(cfg: Any, task: str, condition: str, own: Sequence[str]) -> list[str]:
    """The start-up rules every image-translation task (pix2pix, CycleGAN) shares, with the task's
    ``own`` problems after the loss check and before the rest, the order its messages always came
    in. They share them because both reuse the reference's training recipe: a patch objective of
    :data:`TRANSLATION_LOSSES`, one resolution, no fp16 loss scaling, and an image (``condition``,
    as the message words it) rather than a class as the condition."""
    problems: list[str] = []
    if str(cfg.loss.name) not in TRANSLATION_LOSSES:
        problems.append(f"loss.name must be one of {', '.join(TRANSLATION_LOSSES)} for task={task}")
    problems += own
    if cfg.stages.schedule:
        problems.append(f"task={task} trains at one resolution: leave stages.schedule empty")
    if str(cfg.trainer.precision) == "fp16":
        problems.append(f"task={task} trains in fp32 or bf16: set trainer.precision=bf16")
    if cfg.model.conditional:
        problems.append(f"task={task} is conditioned on {condition}, not a class: model.conditional=false")
    return problems


def _to_unit(batch: np.ndarray, device: torch.device) -> torch.Tensor:
    """uint8 [B, H, W, C] -> float [B, C, H, W] in [-1, 1]."""
    return torch.from_numpy(batch).to(device).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def sample_dropout(net: nn.Module, on: bool) -> contextlib.AbstractContextManager[None]:
    """``net`` in eval mode (BatchNorm's running statistics), its dropout layers on if ``on``;
    restored afterwards."""

    @contextlib.contextmanager
    def ctx() -> Iterator[None]:
        modes = {m: m.training for m in net.modules()}
        net.eval()
        if on:
            for m in net.modules():
                if isinstance(m, nn.Dropout | nn.Dropout2d):
                    m.train()
        try:
            yield
        finally:
            for m, mode in modes.items():
                m.training = mode

    return ctx()


@register_task
class Pix2PixTask(Task):
    name = "pix2pix"
    config = Pix2PixConfig
    model_kind = "paired"
    data_layouts = frozenset({"pairs"})
    inference_components = ("G",)
    default_metrics = ("fid", "l1", "psnr", "ssim")
    eval_provides = frozenset({Need.features, Need.pairs, Need.labels})
    condition_kind = "image"

    @classmethod
    def check_config(cls, cfg: Any, manifest: DatasetManifest) -> list[str]:  # noqa: ARG003
        own = ["loss.l1_weight must be >= 0"] if cfg.loss.l1_weight < 0 else []
        return translation_problems(cfg, "pix2pix", "its source image", own)

    @classmethod
    def describe(cls, cfg: Any) -> dict[str, Any]:
        return {
            "loss": f"{cfg.loss.name} + {cfg.loss.l1_weight:g} * L1",
            "step": "1 D step, then 1 G step, on one G forward",
        }

    def __init__(self, cfg: DictConfig, manifest: DatasetManifest, device: torch.device, accelerator: Any):
        self.cfg, self.manifest, self.device, self.accelerator = cfg, manifest, device, accelerator
        channels = int(manifest.channels)
        where = torch.device("meta") if device.type == "meta" else contextlib.nullcontext()
        with where:
            self.G, self.D = build_translation(
                str(cfg.model.name),
                kind="paired",
                resolution=manifest.resolution,
                in_channels=int(manifest.source_channels),
                out_channels=channels,
                g_width=int(cfg.model.g_width),
                d_width=int(cfg.model.d_width),
                **cfg.model.arch,
            )
        self.G.to(device)
        self.D.to(device)
        bdist.broadcast_module(self.G)
        bdist.broadcast_module(self.D)
        self.loss = PatchObjective(str(cfg.loss.name))
        self.batch_size = int(cfg.data.batch_size)
        self.accumulation = max(1, int(cfg.trainer.get("accumulation", 1)))
        self.guard = NonFiniteGuard(cfg.trainer)
        self.d_update, self.g_update = adversarial_updates(self.G, self.D, cfg, self.guard, self.accumulation)
        self.resolution = int(manifest.resolution)
        self._sampled: Callable[[int, torch.Generator], torch.Tensor] | None = None  # sample()'s draw

    # -- checkpointable state ---------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "G": self.G.state_dict(),
            "D": self.D.state_dict(),
            "opt_G": self.g_update.state_dict(),
            "opt_D": self.d_update.state_dict(),
            "task": self.guard.state_dict(),
        }

    def load_state_dict(self, states: Mapping[str, Any]) -> None:
        load_component("G", self.G, states)
        load_component("D", self.D, states)
        load_component("opt_G", self.g_update, states)
        load_component("opt_D", self.d_update, states)
        self.guard.load_state_dict(states.get("task", {}))

    def digest_modules(self) -> dict[str, nn.Module]:
        return {"G": self.G, "D": self.D}

    # -- one step ---------------------------------------------------------------------------------
    def images_per_step(self) -> int:
        return self.batch_size * self.accumulation

    def train_step(self, step: int, data: Batches) -> dict[str, float]:
        autocast = self.accelerator.autocast
        factor = lr_factor(step, self.cfg.optim.schedule, self.cfg.trainer.max_steps)
        metrics: dict[str, float] = {
            "lr/G": self.g_update.schedule(factor, None),
            "lr/D": self.d_update.schedule(factor, None),
        }
        made: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []  # (source, target, fake)
        acc = self.accumulation
        zero = torch.zeros((), device=self.device)
        sums = {"real": zero, "fake": zero, "gan_G": zero, "l1": zero}

        def d_micro() -> torch.Tensor:
            batch = next(data)
            src = batch["source"].to(self.device, non_blocking=True)
            tgt = batch["image"].to(self.device, non_blocking=True)
            with autocast():
                fake = self.G(src)  # kept with its graph: G's step below reuses it
            made.append((src, tgt, fake))
            with autocast():
                real_logits = self.D(src, tgt).float()
                fake_logits = self.D(src, fake.detach()).float()
            sums["real"] = sums["real"] + real_logits.detach().mean() / acc
            sums["fake"] = sums["fake"] + fake_logits.detach().mean() / acc
            return self.loss.d_loss(real_logits, fake_logits)

        d_value = self.d_update.apply(accumulate(self.d_update, d_micro), step)
        pending = iter(made)

        def g_micro() -> torch.Tensor:
            src, tgt, fake = next(pending)
            with autocast():
                gan = self.loss.g_loss(self.D(src, fake).float())
            l1 = (fake.float() - tgt.float()).abs().mean()
            sums["gan_G"] = sums["gan_G"] + gan.detach() / acc
            sums["l1"] = sums["l1"] + l1.detach() / acc
            return gan + self.cfg.loss.l1_weight * l1

        g_value = apply_frozen(self.g_update, g_micro, step, self.D)
        record_updates(metrics, self.guard, {"D": (self.d_update, d_value), "G": (self.g_update, g_value)})
        parts = rank_means(sums)
        metrics |= {
            "D/real_logit": parts["real"],
            "D/fake_logit": parts["fake"],
            "loss/gan_G": parts["gan_G"],
            "loss/l1": parts["l1"],
            "train/nonfinite_skips": float(self.guard.total),
        }
        return metrics

    # -- sampling ---------------------------------------------------------------------------------
    @torch.no_grad()
    def translate(self, source: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """G's outputs for ``source`` in [-1, 1] (on the CPU); dropout noise (``eval.dropout``) is
        drawn from ``generator``, so the same seed gives the same images."""
        seed = int(torch.randint(0, 2**62, (1,), generator=generator))
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices), sample_dropout(self.G, bool(self.cfg.eval.dropout)):
            torch.manual_seed(seed)
            out = self.G(source.to(self.device))
        return out.float().clamp(-1, 1).cpu()

    def _eval_pairs(self, n: int) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """(source, target, label) batches of ``eval.ref_split``, in shard order, as floats in [-1, 1]."""
        for src, tgt, labels in iter_pairs(
            self.manifest, str(self.cfg.eval.ref_split), int(self.cfg.eval.batch_size), n,
            method=eval_recipe(self.cfg),
        ):  # fmt: skip
            yield (
                _to_unit(src, torch.device("cpu")),
                _to_unit(tgt, torch.device("cpu")),
                torch.from_numpy(labels),
            )

    def _first(self, n: int) -> tuple[torch.Tensor, ...]:
        """The first ``n`` evaluation pairs (source, target, label), cycling through the split if it has fewer."""
        return first(lambda: self._eval_pairs(10**9), n, f"pairs in the {self.cfg.eval.ref_split} split")

    def sample_grid(self, seed: int, rows: int) -> tuple[torch.Tensor, int]:
        """``rows`` rows of source | output | target triples of the evaluation split's first pairs."""
        per_row = max(1, rows // 2)
        src, tgt, _ = self._first(rows * per_row)
        out = self.translate(src, torch.Generator().manual_seed(seed))
        triples = torch.stack([src, out, tgt], dim=1).flatten(0, 1)  # s0 o0 t0 s1 o1 t1 ...
        return triples, 3 * per_row

    def sample(
        self, n: int, generator: torch.Generator, *, classes: list[int] | None = None, **options: Any
    ) -> torch.Tensor:
        """Translations of the next ``n`` sources of ``eval.ref_split`` (from its start on the first
        call, cycling): what FID judges."""
        if classes:
            raise ValueError("task=pix2pix translates given sources: --class does not apply")
        if (
            self._sampled is None
        ):  # continuing from the last call: `bigtrain sample --npz` asks batch by batch
            self._sampled = self._translations()
        return self._sampled(n, generator)

    def sample_conditioned(
        self, conditions: torch.Tensor, generator: torch.Generator, **options: Any
    ) -> torch.Tensor:  # noqa: ARG002
        return self.translate(conditions, generator)

    def _translations(self) -> Callable[[int, torch.Generator], torch.Tensor]:
        """``f(n, generator)``: translations of the split's sources in order, continuing where the
        last call stopped (FID asks batch by batch) and cycling past its end."""
        sources = InOrder(lambda: self._eval_pairs(10**9), f"pairs in the {self.cfg.eval.ref_split} split")
        return lambda n, generator: self.translate(sources.take(n)[0], generator)

    # -- evaluation -------------------------------------------------------------------------------
    def _pairs(self, n: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        g = torch.Generator().manual_seed(int(self.cfg.eval.seed))
        for src, tgt, _ in self._eval_pairs(n):
            yield tgt, self.translate(src, g)

    def _labels(self, n: int) -> np.ndarray:
        return self._first(n)[2].numpy()

    def eval_source(self) -> EvalSource:
        """Translations of ``eval.ref_split``'s sources against the same split's targets."""
        return EvalSource(
            Judged.samples,
            self._translations(),
            self.manifest,
            self.resolution,
            pairs=self._pairs,
            labels=self._labels if self.manifest.num_classes else None,
            downsample=eval_recipe(self.cfg),
            splittable=False,  # the sources are read in order: the main process alone
        )
