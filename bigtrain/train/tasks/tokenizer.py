"""Stage 1 of the VQ-GAN pipeline: train the image tokenizer (task=tokenizer).

One step (Esser et al. 2021, section 3.2, as released in taming-transformers):

1. autoencoder: ``L = rec + perceptual + codebook + lambda * GAN`` where ``rec`` is the per-pixel L1
   (or L2) distance, ``perceptual`` LPIPS, ``codebook`` the quantiser's loss and ``GAN = -D(x_rec)``
   with the adaptive weight ``lambda = ||grad_L(rec+perc)|| / (||grad_L(GAN)|| + 1e-4) * disc_weight``
   taken at the decoder's last layer (eq. 7), on from ``vq.disc_start``;
2. discriminator (PatchGAN): hinge loss on real images and the detached reconstructions.

VQ-VAE is the same step with ``vq.perceptual_weight=0`` and ``vq.disc_weight=0`` (no D at all).
Evaluation reconstructs ``eval.ref_split`` images: rFID (and precision/recall) on the FID path,
PSNR and SSIM, codebook usage and perplexity over the window since the last evaluation; the grid
shows originals above their reconstructions.

Resolution stages (``stages.schedule``) train the fully convolutional tokenizer on smaller images
first, without growing (there is nothing to fade in): any multiple of the downsampling factor up to
the dataset's resolution, with the stage's batch (split into micro-batches if asked) and learning
rates (``lr_g`` the autoencoder's, ``lr_d`` the PatchGAN's); evaluation and grids use the stage's
resolution.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import nn

from bigtrain import distributed as bdist
from bigtrain.checkpoint.manager import load_component
from bigtrain.config.schema import ModelConfig, OptimConfig, OptimizerConfig, TrainConfig
from bigtrain.data.manifest import DatasetManifest
from bigtrain.data.read import iter_images
from bigtrain.eval.source import EvalSource, Judged, Need
from bigtrain.models import build_model
from bigtrain.models.patchgan import PatchDiscriminator
from bigtrain.models.vqgan import VQModel
from bigtrain.train.optim import lr_factor
from bigtrain.train.stages import StagedTask, build_driver
from bigtrain.train.step import NonFiniteGuard, OptimizerStep, accumulate, grad_overlap
from bigtrain.train.task import Batches, eval_recipe, register_task


def _to_unit(batch: np.ndarray, device: torch.device) -> torch.Tensor:
    """uint8 [B, H, W, C] -> float [B, C, H, W] in [-1, 1]."""
    return torch.from_numpy(batch).to(device).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def adaptive_weight(
    nll: torch.Tensor, g_loss: torch.Tensor, last_layer: nn.Parameter, scale: float
) -> torch.Tensor:
    """Esser et al. 2021, eq. 7: balance the GAN gradient against the reconstruction gradient at the
    decoder's last layer (clamped to [0, 1e4] as in the release), times ``scale`` (disc_weight)."""
    g_rec = torch.autograd.grad(nll, last_layer, retain_graph=True)[0]
    g_gan = torch.autograd.grad(g_loss, last_layer, retain_graph=True)[0]
    return (g_rec.norm() / (g_gan.norm() + 1e-4)).clamp(0.0, 1e4).detach() * scale


@dataclass
class VQLossConfig:
    """``vq.*``: the tokenizer's objective (Esser et al. 2021, eq. 4-7). VQ-VAE (van den Oord et al.
    2017) is ``perceptual_weight=0, disc_weight=0``."""

    rec_loss: str = "l1"  # l1 | l2 (per pixel)
    rec_weight: float = 1.0
    perceptual_weight: float = 1.0  # LPIPS (VGG16 from the cache)
    codebook_weight: float = 1.0  # the quantiser's codebook + beta * commitment loss
    disc_weight: float = 0.8  # scales the adaptive weight of the PatchGAN term; 0 = no discriminator
    disc_start: int = 0  # step from which the GAN term and D's updates are on
    disc_layers: int = 3
    disc_width: int = 64


@dataclass
class TokenizerOptimConfig(OptimConfig):
    vq: OptimizerConfig = field(default_factory=OptimizerConfig)  # opt_vq: the autoencoder
    d: OptimizerConfig = field(default_factory=OptimizerConfig)  # opt_D: the PatchGAN


@dataclass
class TokenizerConfig(TrainConfig):
    """A ``task=tokenizer`` run's config: the shared sections, plus ``vq`` and its two optimizers."""

    task: str = "tokenizer"
    model: ModelConfig = field(default_factory=lambda: ModelConfig(name="vqgan"))
    optim: TokenizerOptimConfig = field(default_factory=TokenizerOptimConfig)
    vq: VQLossConfig = field(default_factory=VQLossConfig)


@register_task
class TokenizerTask(StagedTask):
    name = "tokenizer"
    config = TokenizerConfig
    model_kind = "tokenizer"
    inference_components = ("vq",)
    default_metrics = ("fid", "pr", "psnr", "ssim", "codebook")
    eval_provides = frozenset({Need.features, Need.pairs, Need.codebook})
    generates = False

    @classmethod
    def check_config(cls, cfg: Any, manifest: DatasetManifest) -> list[str]:  # noqa: ARG003
        problems = []
        v = cfg.vq
        if v.rec_loss not in ("l1", "l2"):
            problems.append(f"vq.rec_loss must be l1 or l2 (got '{v.rec_loss}')")
        if str(cfg.trainer.precision) == "fp16":
            problems.append("task=tokenizer trains in fp32 or bf16: set trainer.precision=bf16")
        if min(v.rec_weight, v.perceptual_weight, v.codebook_weight, v.disc_weight) < 0:
            problems.append("vq.*_weight must be >= 0")
        return problems

    @classmethod
    def weights_only(cls, cfg: Any) -> Any:
        out = cfg.copy()
        out.vq.perceptual_weight = 0.0  # no LPIPS: it holds no weights of the tokenizer's own
        return out

    @classmethod
    def describe(cls, cfg: Any) -> dict[str, Any]:
        v = cfg.vq
        terms = [str(v.rec_loss)] + (["lpips"] if v.perceptual_weight > 0 else []) + ["codebook"]
        return {
            "loss": "+".join(terms + (["patchgan"] if v.disc_weight > 0 else [])),
            "step": "1 update per step",
        }

    def __init__(self, cfg: DictConfig, manifest: DatasetManifest, device: torch.device, accelerator: Any):
        self.cfg, self.manifest, self.device, self.accelerator = cfg, manifest, device, accelerator
        where = torch.device("meta") if device.type == "meta" else torch.device("cpu")
        with where:
            self.vq: VQModel = build_model(
                cfg.model.name, cfg.model.arch, resolution=manifest.resolution, channels=manifest.channels
            )
            v = cfg.vq
            self.D = (
                PatchDiscriminator(manifest.channels, v.disc_width, v.disc_layers)
                if v.disc_weight > 0
                else None
            )
        self.vq.to(device)
        self.vq.quantize.reduce = bdist.all_reduce_sum
        self.vq.quantize.broadcast = bdist.broadcast_tensor
        bdist.broadcast_module(self.vq)
        self.batch_size = cfg.data.batch_size
        self.accumulation = max(1, int(cfg.trainer.get("accumulation", 1)))
        self.guard = NonFiniteGuard(cfg.trainer)
        self.vq_update = OptimizerStep.build(
            "tokenizer",
            self.vq,
            cfg.optim.vq,
            self.guard,
            accumulation=self.accumulation,
            **grad_overlap(cfg.trainer),
        )
        self.d_update: OptimizerStep | None = None
        if self.D is not None:
            self.D.to(device)
            bdist.broadcast_module(self.D)
            self.d_update = OptimizerStep.build(
                "D",
                self.D,
                cfg.optim.d,
                self.guard,
                accumulation=self.accumulation,  # one pass over the autoencoder step's micro-batches
                **grad_overlap(cfg.trainer),
                broadcast=(self.D,),
            )
        self.lpips: nn.Module | None = None
        if v.perceptual_weight > 0 and device.type != "meta":
            from bigtrain.losses.perceptual import LPIPS

            self.lpips = LPIPS().to(device)
        f, self.final_resolution = self.vq.factor, manifest.resolution
        self.staging = (
            build_driver(
                cfg,
                images_per_micro_step=self.accumulation,
                growing=(),
                allowed=list(range(f, manifest.resolution + 1, f)),
                final_resolution=manifest.resolution,
                world_size=bdist.world_size(),
            )
            if cfg.stages.schedule
            else None
        )
        self.follow_stage(1)

    def stage_updates(self) -> list[OptimizerStep]:  # resolution stages: no growing, fully convolutional
        return [u for u in (self.vq_update, self.d_update) if u is not None]

    # -- checkpointable state ---------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"vq": self.vq.state_dict(), "opt_vq": self.vq_update.state_dict()}
        if self.D is not None and self.d_update is not None:
            out["D"], out["opt_D"] = self.D.state_dict(), self.d_update.state_dict()
        out["task"] = self.guard.state_dict()
        self.save_stages(out["task"])
        return out

    def load_state_dict(self, states: Mapping[str, Any]) -> None:
        load_component("vq", self.vq, states)
        load_component("opt_vq", self.vq_update, states)
        if self.D is not None and self.d_update is not None:
            load_component("D", self.D, states)
            load_component("opt_D", self.d_update, states)
        self.guard.load_state_dict(states.get("task", {}))
        self.load_stages(states.get("task", {}))

    def digest_modules(self) -> dict[str, nn.Module]:
        mods: dict[str, nn.Module] = {"vq": self.vq}
        if self.D is not None:
            mods["D"] = self.D
        return mods

    def images_per_step(self) -> int:
        return self.batch_size * self.accumulation

    # -- one step ---------------------------------------------------------------------------------

    def _rec(self, x: torch.Tensor, x_rec: torch.Tensor) -> torch.Tensor:
        if self.cfg.vq.rec_loss == "l2":
            return F.mse_loss(x_rec.float(), x.float())
        return (x_rec.float() - x.float()).abs().mean()

    def train_step(self, step: int, data: Batches) -> dict[str, float]:
        v, autocast = self.cfg.vq, self.accelerator.autocast
        gan_on = self.D is not None and step >= v.disc_start
        factor = lr_factor(step, self.cfg.optim.schedule, self.cfg.trainer.max_steps)
        stage_metrics = self.follow_stage(step)
        lr = self.vq_update.schedule(factor, self.stage_lr[0])
        if self.d_update is not None:
            self.d_update.schedule(factor, self.stage_lr[1])
        sums: dict[str, torch.Tensor] = {}
        batches = []

        def micro() -> torch.Tensor:
            x = next(data)["image"].to(self.device, non_blocking=True)
            with autocast():
                x_rec, q = self.vq(x)
            batches.append((x, x_rec.detach()))  # D trains on these: no second (stateful) VQ pass
            rec = self._rec(x, x_rec)
            perc = (
                self.lpips(x, x_rec).mean() if self.lpips is not None else torch.zeros((), device=self.device)
            )
            nll = v.rec_weight * rec + v.perceptual_weight * perc
            loss = nll + v.codebook_weight * q.loss
            parts = {"rec": rec, "perceptual": perc, "codebook": q.loss, "perplexity": q.perplexity}
            if gan_on:
                assert self.D is not None
                self.D.requires_grad_(False)
                with autocast():
                    g_loss = -self.D(x_rec).float().mean()
                lam = adaptive_weight(nll, g_loss, self.vq.last_layer(), v.disc_weight)
                loss = loss + lam * g_loss
                parts |= {"gan_G": g_loss, "adaptive_weight": lam}
                self.D.requires_grad_(True)
            for k, t in {"total": loss, **parts}.items():
                sums[k] = (
                    sums.get(k, torch.zeros((), device=self.device)) + t.detach().float() / self.accumulation
                )
            return loss

        accumulate(self.vq_update, micro)
        metrics: dict[str, float] = {"lr/vq": lr, **stage_metrics}
        value = self.vq_update.apply(sums["total"], step)
        if value is not None:
            reduced = bdist.all_reduce_mean(torch.stack([sums[k] for k in sorted(sums)]))
            metrics |= {
                f"loss/{k}" if k not in ("perplexity", "adaptive_weight") else f"vq/{k}": float(t)
                for k, t in zip(sorted(sums), reduced, strict=True)
            }
        if gan_on:
            d_value = self._d_step(step, batches)
            if d_value is not None:
                metrics["loss/D"] = d_value
        if value is not None and (not gan_on or "loss/D" in metrics):
            self.guard.good_step()
        metrics["vq/gan_on"] = float(gan_on)
        metrics["train/nonfinite_skips"] = float(self.guard.total)
        return metrics

    def _d_step(self, step: int, batches: list[tuple[torch.Tensor, torch.Tensor]]) -> float | None:
        """Hinge loss on the real images and the autoencoder step's (detached) reconstructions."""
        assert self.D is not None and self.d_update is not None
        pairs = iter(batches)

        def micro() -> torch.Tensor:
            x, x_rec = next(pairs)
            with self.accelerator.autocast():
                real, fake = self.D(x).float(), self.D(x_rec).float()
            return 0.5 * (F.relu(1.0 - real).mean() + F.relu(1.0 + fake).mean())  # hinge, as the release

        return self.d_update.apply(accumulate(self.d_update, micro), step)

    # -- evaluation -------------------------------------------------------------------------------
    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        was = self.vq.training
        self.vq.eval()
        try:
            return self.vq(x.to(self.device))[0].float().clamp(-1, 1)
        finally:
            self.vq.train(was)

    def _eval_images(self, n: int) -> Iterator[torch.Tensor]:
        split = self.cfg.eval.ref_split
        res = self.current_resolution()
        method = eval_recipe(self.cfg)
        for batch in iter_images(
            self.manifest, split, self.cfg.eval.batch_size, n, resolution=res, method=method
        ):
            yield _to_unit(batch, self.device)

    def sample_grid(self, seed: int, rows: int) -> tuple[torch.Tensor, int]:  # noqa: ARG002 - fixed images
        """Pairs of rows: ``rows`` evaluation images, then their reconstructions below them."""
        n = rows * max(1, rows // 2)
        x = torch.cat(list(self._eval_images(n)))[:n]
        rec = self.reconstruct(x).cpu()
        pairs = [t for i in range(0, len(x), rows) for t in (x[i : i + rows].cpu(), rec[i : i + rows])]
        return torch.cat(pairs), rows

    def _reconstructions(self) -> Any:
        """For rFID: reconstructions of the evaluation split, in order, cycling if asked for more."""
        source = self._eval_images(10**9)
        stock: list[torch.Tensor] = []

        def sample(n: int, generator: torch.Generator) -> torch.Tensor:  # noqa: ARG001 - deterministic
            nonlocal source
            have = sum(len(t) for t in stock)
            while have < n:
                try:
                    stock.append(next(source))
                except StopIteration:
                    source = self._eval_images(10**9)
                    continue
                have += len(stock[-1])
            x = torch.cat(stock)
            stock.clear()
            if len(x) > n:
                stock.append(x[n:])
            return self.reconstruct(x[:n]).cpu()

        return sample

    def _pairs(self, n: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for x in self._eval_images(n):
            yield x, self.reconstruct(x)

    def eval_source(self) -> EvalSource:
        """Reconstructions of ``eval.ref_split`` against the same split's statistics, the pairs
        for PSNR/SSIM, and the codebook's usage since the last evaluation."""
        return EvalSource(
            Judged.reconstructions,
            self._reconstructions(),
            self.manifest,
            self.current_resolution(),
            pairs=self._pairs,
            codebook=lambda: self.vq.quantize.usage(reset=True),
            downsample=eval_recipe(self.cfg),
            splittable=False,  # the evaluation images are read in order: the main process alone
        )
