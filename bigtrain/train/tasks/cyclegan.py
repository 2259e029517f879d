"""Unpaired image-to-image translation (``task=cyclegan``; Zhu et al. 2017).

Two generators (``G_AB``: A -> B, ``G_BA``: B -> A) and two PatchGANs (``D_A`` judges images of A,
``D_B`` images of B), trained on unpaired shards (``bigtrain prepare --domains A_DIR B_DIR OUT``):
every batch holds a batch of each domain. One step, in the reference's order
(junyanz/pytorch-CycleGAN-and-pix2pix, ``cycle_gan_model.py``):

1. generators, with both D frozen: the GAN terms ``loss(D_B(G_AB(a)), real) + loss(D_A(G_BA(b)),
   real)``, the cycle terms ``cycle_weight * (|G_BA(G_AB(a)) - a| + |G_AB(G_BA(b)) - b|)`` and
   the identity terms ``identity_weight * cycle_weight * (|G_AB(b) - b| + |G_BA(a) - a|)``;
2. discriminators: each on its domain's real images against a generated image drawn from a
   history of the last ``pool_size`` (50) generated images (Shrivastava et al. 2017), so D does
   not chase G's latest outputs only; the loss is halved.

LSGAN by default, Adam 2e-4 (0.5, 0.999) and a constant rate that then decays linearly to 0
(``optim.schedule.decay_start``). The history is per process (it holds that process's outputs)
and is checkpointed per rank with the random state that picks from it, so a resume is exact.

Evaluation translates each domain's ``eval.ref_split`` images in order: FID of ``G_AB``'s outputs
against B's images (``fid_AB/<net>``) and of ``G_BA``'s against A's (``fid_BA/<net>``), and with
class labels the share of outputs classified as their source's class. The grid shows rows of
A -> B -> A triples above rows of B -> A -> B.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig
from torch import nn

from bigtrain import distributed as bdist
from bigtrain.checkpoint.manager import load_component
from bigtrain.config.schema import EvalConfig, OptimConfig, OptimizerConfig, TrainConfig
from bigtrain.data.manifest import DatasetManifest
from bigtrain.data.read import iter_labelled
from bigtrain.eval.source import EvalSource, Judged, Need
from bigtrain.losses.translation import PatchObjective
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
from bigtrain.train.tasks.pix2pix import TranslationModelConfig, translation_problems


@dataclass
class CycleLossConfig:
    """``loss.*`` of CycleGAN."""

    name: str = "lsgan"  # lsgan (the reference's default) | non_saturating
    cycle_weight: float = 10.0  # lambda_A = lambda_B
    identity_weight: float = 0.5  # times cycle_weight; 0 turns the identity terms off
    pool_size: int = 50  # generated images each D may be shown again; 0 = only the newest


@dataclass
class CycleEvalConfig(EvalConfig):
    """``eval.*`` of CycleGAN: the shared keys plus the directions class agreement is measured in."""

    # class_agreement needs a classifier that reads the target domain: the digits classifier reads
    # 99.6% of the plain validation digits (A) but 14.8% of the thick inverted ones (B)
    agreement: list[str] = field(default_factory=lambda: ["AB", "BA"])


@dataclass
class CycleOptimConfig(OptimConfig):
    g: OptimizerConfig = field(default_factory=OptimizerConfig)  # opt_G: both generators
    d: OptimizerConfig = field(default_factory=OptimizerConfig)  # opt_D: both discriminators


@dataclass
class CycleGANConfig(TrainConfig):
    """A ``task=cyclegan`` run's config: the shared sections, plus ``loss`` and two optimizers."""

    task: str = "cyclegan"
    model: TranslationModelConfig = field(default_factory=lambda: TranslationModelConfig(name="cyclegan"))
    optim: CycleOptimConfig = field(default_factory=CycleOptimConfig)
    loss: CycleLossConfig = field(default_factory=CycleLossConfig)
    eval: CycleEvalConfig = field(default_factory=CycleEvalConfig)


class ImagePool:
    """The last ``size`` generated images a discriminator may be shown again (the reference's
    ``ImagePool``): while filling, each image is stored and returned; once full, each is, with
    probability 1/2, swapped for a random stored one. Its choices come from its own generator, and
    ``state_dict`` holds both, so a resumed run draws what the uninterrupted one would."""

    def __init__(self, size: int, seed: int) -> None:
        self.size = size
        self.images: list[torch.Tensor] = []
        self.generator = torch.Generator().manual_seed(seed)

    def query(self, images: torch.Tensor) -> torch.Tensor:
        if self.size <= 0:
            return images
        out = []
        for image in images.detach():
            if len(self.images) < self.size:
                self.images.append(image.cpu().clone())
                out.append(image)
            elif float(torch.rand((), generator=self.generator)) > 0.5:
                i = int(torch.randint(0, self.size, (), generator=self.generator))
                out.append(self.images[i].to(image.device))
                self.images[i] = image.cpu().clone()
            else:
                out.append(image)
        return torch.stack(out)

    def state_dict(self) -> dict[str, Any]:
        stacked = torch.stack(self.images) if self.images else torch.zeros(0)
        return {"images": stacked, "generator": self.generator.get_state()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        images = state["images"]
        self.images = [t.clone() for t in images] if images.numel() else []
        self.generator.set_state(state["generator"])


class _Pools:
    """Both discriminators' histories as one per-rank checkpoint component."""

    def __init__(self, size: int, seed: int) -> None:
        self.A, self.B = ImagePool(size, seed), ImagePool(size, seed + 1)

    def state_dict(self) -> dict[str, Any]:
        return {"A": self.A.state_dict(), "B": self.B.state_dict()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.A.load_state_dict(state["A"])
        self.B.load_state_dict(state["B"])


def _to_unit(batch: np.ndarray) -> torch.Tensor:
    """uint8 [B, H, W, C] -> float [B, C, H, W] in [-1, 1]."""
    return torch.from_numpy(batch).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


@register_task
class CycleGANTask(Task):
    name = "cyclegan"
    config = CycleGANConfig
    model_kind = "unpaired"
    data_layouts = frozenset({"domains"})
    inference_components = ("G_AB", "G_BA")
    default_metrics = ("fid",)
    eval_provides = frozenset({Need.features, Need.labels})
    condition_kind = "image"

    @classmethod
    def check_config(cls, cfg: Any, manifest: DatasetManifest) -> list[str]:
        own: list[str] = []
        loss = cfg.loss
        if loss.cycle_weight < 0 or loss.identity_weight < 0 or loss.pool_size < 0:
            own.append("loss.cycle_weight, loss.identity_weight and loss.pool_size must be >= 0")
        if len(manifest.domains) != 2 and manifest.layout == "domains":
            own.append(
                f"task=cyclegan translates between two domains; {cfg.data.path} has {manifest.domains}"
            )
        bad = [d for d in cfg.eval.agreement if d not in ("AB", "BA")]
        if bad:
            own.append(f"eval.agreement: directions are AB and BA (got {', '.join(map(str, bad))})")
        return translation_problems(cfg, "cyclegan", "its input image", own)

    @classmethod
    def describe(cls, cfg: Any) -> dict[str, Any]:
        c = cfg.loss
        return {
            "loss": f"{c.name} + {c.cycle_weight:g} * cycle + {c.identity_weight * c.cycle_weight:g} * identity",
            "step": "1 step of both G, then 1 of both D (from a history of generated images)",
        }

    def __init__(self, cfg: DictConfig, manifest: DatasetManifest, device: torch.device, accelerator: Any):
        self.cfg, self.manifest, self.device, self.accelerator = cfg, manifest, device, accelerator
        self.domains = list(manifest.domains) or ["A", "B"]
        where = torch.device("meta") if device.type == "meta" else contextlib.nullcontext()
        with where:
            nets = build_translation(
                str(cfg.model.name),
                kind="unpaired",
                resolution=manifest.resolution,
                in_channels=int(manifest.channels),
                out_channels=int(manifest.channels),
                g_width=int(cfg.model.g_width),
                d_width=int(cfg.model.d_width),
                **cfg.model.arch,
            )
        self.G_AB, self.G_BA, self.D_A, self.D_B = nets
        self.G = nn.ModuleDict({"AB": self.G_AB, "BA": self.G_BA})  # one optimizer for both, as the reference
        self.D = nn.ModuleDict({"A": self.D_A, "B": self.D_B})
        for net in (self.G, self.D):
            net.to(device)
            bdist.broadcast_module(net)
        self.loss = PatchObjective(str(cfg.loss.name))
        self.batch_size = int(cfg.data.batch_size)
        self.accumulation = max(1, int(cfg.trainer.get("accumulation", 1)))
        self.guard = NonFiniteGuard(cfg.trainer)
        self.d_update, self.g_update = adversarial_updates(self.G, self.D, cfg, self.guard, self.accumulation)
        self.pools = _Pools(int(cfg.loss.pool_size), int(cfg.seed) * 1000 + 2 * bdist.rank())
        self.resolution = int(manifest.resolution)
        self._sampled: Callable[[int, torch.Generator], torch.Tensor] | None = None  # sample()'s draw

    # -- checkpointable state ---------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "G_AB": self.G_AB.state_dict(),
            "G_BA": self.G_BA.state_dict(),
            "D_A": self.D_A.state_dict(),
            "D_B": self.D_B.state_dict(),
            "opt_G": self.g_update.state_dict(),
            "opt_D": self.d_update.state_dict(),
            "task": self.guard.state_dict(),
        }

    def load_state_dict(self, states: Mapping[str, Any]) -> None:
        for name in ("G_AB", "G_BA", "D_A", "D_B"):
            load_component(name, getattr(self, name), states)
        load_component("opt_G", self.g_update, states)
        load_component("opt_D", self.d_update, states)
        self.guard.load_state_dict(states.get("task", {}))

    def rank_state(self) -> _Pools:
        return self.pools

    def digest_modules(self) -> dict[str, nn.Module]:
        return {"G_AB": self.G_AB, "G_BA": self.G_BA, "D_A": self.D_A, "D_B": self.D_B}

    # -- one step ---------------------------------------------------------------------------------
    def images_per_step(self) -> int:
        return 2 * self.batch_size * self.accumulation  # a batch of each domain

    def train_step(self, step: int, data: Batches) -> dict[str, float]:
        autocast, c = self.accelerator.autocast, self.cfg.loss
        factor = lr_factor(step, self.cfg.optim.schedule, self.cfg.trainer.max_steps)
        metrics: dict[str, float] = {
            "lr/G": self.g_update.schedule(factor, None),
            "lr/D": self.d_update.schedule(factor, None),
        }
        acc, second = self.accumulation, self.domains[1]
        made: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]] = []
        zero = torch.zeros((), device=self.device)
        sums = dict.fromkeys(("gan_AB", "gan_BA", "cycle_A", "cycle_B", "idt_A", "idt_B", "D_A", "D_B"), zero)

        def add(name: str, value: torch.Tensor) -> None:
            sums[name] = sums[name] + value.detach().float() / acc

        def g_micro() -> torch.Tensor:
            batch = next(data)
            a = batch["image"].to(self.device, non_blocking=True)
            b = batch[f"image_{second}"].to(self.device, non_blocking=True)
            with autocast():
                fake_b, fake_a = self.G_AB(a), self.G_BA(b)
                rec_a, rec_b = self.G_BA(fake_b), self.G_AB(fake_a)
                gan_ab = self.loss.g_loss(self.D_B(fake_b).float())
                gan_ba = self.loss.g_loss(self.D_A(fake_a).float())
            cycle_a = (rec_a.float() - a).abs().mean() * c.cycle_weight
            cycle_b = (rec_b.float() - b).abs().mean() * c.cycle_weight
            loss = gan_ab + gan_ba + cycle_a + cycle_b
            if c.identity_weight > 0:  # G_AB should leave an image of B as it is, G_BA one of A
                with autocast():
                    idt_b, idt_a = self.G_AB(b), self.G_BA(a)
                w = c.identity_weight * c.cycle_weight
                idt_terms = ((idt_b.float() - b).abs().mean() * w, (idt_a.float() - a).abs().mean() * w)
                loss = loss + idt_terms[0] + idt_terms[1]
                add("idt_B", idt_terms[0])
                add("idt_A", idt_terms[1])
            for name, v in (
                ("gan_AB", gan_ab),
                ("gan_BA", gan_ba),
                ("cycle_A", cycle_a),
                ("cycle_B", cycle_b),
            ):
                add(name, v)
            made.append((a, b, fake_a.detach(), fake_b.detach()))
            return loss

        g_value = apply_frozen(self.g_update, g_micro, step, self.D)
        pending = iter(made)

        def d_micro() -> torch.Tensor:
            a, b, fake_a, fake_b = next(pending)
            shown_b, shown_a = self.pools.B.query(fake_b), self.pools.A.query(fake_a)
            with autocast():
                d_b = self.loss.d_loss(self.D_B(b).float(), self.D_B(shown_b).float())
                d_a = self.loss.d_loss(self.D_A(a).float(), self.D_A(shown_a).float())
            add("D_B", d_b)
            add("D_A", d_a)
            return d_a + d_b

        d_value = self.d_update.apply(accumulate(self.d_update, d_micro), step)
        record_updates(metrics, self.guard, {"G": (self.g_update, g_value), "D": (self.d_update, d_value)})
        metrics |= {f"loss/{k}": v for k, v in rank_means(sums).items()}
        metrics["train/nonfinite_skips"] = float(self.guard.total)
        return metrics

    # -- sampling ---------------------------------------------------------------------------------
    @torch.no_grad()
    def translate(self, images: torch.Tensor, direction: str = "AB") -> torch.Tensor:
        """``images`` of domain ``direction[0]`` through its generator, in eval mode; [-1, 1] on the CPU."""
        net = self.G_AB if direction == "AB" else self.G_BA
        was = net.training
        net.eval()
        try:
            return net(images.to(self.device)).float().clamp(-1, 1).cpu()
        finally:
            net.train(was)

    def _domain_images(self, domain: str, n: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(images, labels) of ``domain``'s ``eval.ref_split`` in shard order, as floats in [-1, 1]."""
        view = self.manifest.domain_view(domain)
        for batch, labels in iter_labelled(
            view, str(self.cfg.eval.ref_split), int(self.cfg.eval.batch_size), n, method=eval_recipe(self.cfg)
        ):
            yield _to_unit(batch), torch.from_numpy(labels)

    def _first(self, domain: str, n: int) -> tuple[torch.Tensor, ...]:
        """The first ``n`` images of ``domain``'s evaluation split (cycling) and their labels."""
        return first(lambda: self._domain_images(domain, 10**9), n, f"images of domain {domain}")

    def sample_grid(self, seed: int, rows: int) -> tuple[torch.Tensor, int]:  # noqa: ARG002 - no noise
        """``rows // 2`` rows of A -> B -> A triples, then as many of B -> A -> B."""
        per_row, half = max(1, rows // 2), max(1, rows // 2)
        cells = []
        for domain, there, back in ((self.domains[0], "AB", "BA"), (self.domains[1], "BA", "AB")):
            x = self._first(domain, half * per_row)[0]
            y = self.translate(x, there)
            cells.append(torch.stack([x, y, self.translate(y, back)], dim=1).flatten(0, 1))
        return torch.cat(cells), 3 * per_row

    def sample(
        self, n: int, generator: torch.Generator, *, classes: list[int] | None = None, **options: Any
    ) -> torch.Tensor:
        """``G_AB``'s translations of the next ``n`` evaluation images of domain A (from the start on
        the first call, cycling)."""
        if classes:
            raise ValueError("task=cyclegan translates given images: --class does not apply")
        if (
            self._sampled is None
        ):  # continuing from the last call: `bigtrain sample --npz` asks batch by batch
            self._sampled = self._translations("AB")
        return self._sampled(n, generator)

    def sample_conditioned(
        self, conditions: torch.Tensor, generator: torch.Generator, **options: Any
    ) -> torch.Tensor:  # noqa: ARG002
        """``G_AB``'s translations (domain A -> B) of the given images."""
        return self.translate(conditions, "AB")

    def _translations(self, direction: str) -> Callable[[int, torch.Generator], torch.Tensor]:
        """``f(n, generator)``: translations of the source domain's evaluation images in order,
        continuing where the last call stopped and cycling past the end (no noise: the generator
        is not used)."""
        domain = self.domains[0] if direction == "AB" else self.domains[1]
        images = InOrder(lambda: self._domain_images(domain, 10**9), f"images of domain {domain}")
        return lambda n, generator: self.translate(images.take(n)[0], direction)

    # -- evaluation -------------------------------------------------------------------------------
    def eval_source(self) -> EvalSource:
        return self.eval_sources()[0]

    def eval_sources(self) -> list[EvalSource]:
        """A -> B judged against B's images (``fid_AB``), B -> A against A's (``fid_BA``)."""
        out = []
        for direction, source, target in (("AB", *self.domains), ("BA", *reversed(self.domains))):
            labelled = self.manifest.num_classes > 0 and direction in self.cfg.eval.agreement
            out.append(
                EvalSource(
                    Judged.samples,
                    self._translations(direction),
                    self.manifest.domain_view(target),
                    self.resolution,
                    labels=(lambda n, d=source: self._first(d, n)[1].numpy()) if labelled else None,
                    downsample=eval_recipe(self.cfg),
                    splittable=False,  # the sources are read in order: the main process alone
                    tag=direction,
                )
            )
        return out
