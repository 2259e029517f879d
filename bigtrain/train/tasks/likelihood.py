"""Explicit-density models trained by maximum likelihood (``task=likelihood``): PixelCNN, PixelRNN
and the VAE (``bigtrain.models.density``).

One step minimises the model's objective in nats per sub-pixel: the exact negative
log-likelihood of an autoregressive model, or a VAE's negative ELBO ``rec + w * KL`` where the
KL weight ``w`` ramps linearly from 0 to ``density.beta`` over ``density.kl_warmup_steps`` (KL
warm-up; Bowman et al. 2016, Sønderby et al. 2016) and ``beta`` > 1 is the beta-VAE (Higgins et al.
2017). Pixels are levels (``density.pixels``: ``8bit`` = 256 values, ``binary`` = 2, thresholded
at 127.5), the same in training, evaluation and sampling.

Evaluation scores every image of ``eval.ref_split`` (metric ``nll``): ``nll/bits_per_dim`` (exact),
or a VAE's ``nll/elbo_bpd`` and, with ``density.iw_samples`` K > 1, ``nll/iw_bpd_k<K>`` (Burda et al.
2016), each also in nats per image (``nll/nats``, ...), the unit binarised-MNIST papers report.
FID and precision / recall judge samples, as for any generator. An EMA copy of the network
(``ema.enabled``, off by default) is then what evaluation and sampling use.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from omegaconf import DictConfig
from torch import nn

from bigtrain import distributed as bdist
from bigtrain.checkpoint.manager import load_component
from bigtrain.config.schema import ModelConfig, OptimConfig, OptimizerConfig, TrainConfig
from bigtrain.data.manifest import DatasetManifest
from bigtrain.data.read import iter_labelled
from bigtrain.errors import ConfigError
from bigtrain.eval.source import EvalSource, Judged, Need
from bigtrain.models import build_model
from bigtrain.models.density import (
    LN2,
    PIXEL_LEVELS,
    DensityModel,
    DensityShape,
    LatentDensityModel,
    levels_from_uint8,
    quantize,
    to_unit,
)
from bigtrain.train.density_sampling import draw_images, draw_labels
from bigtrain.train.ema import EMA, EMA_BUFFERS, EMAConfig
from bigtrain.train.latent_arithmetic import LatentSpace
from bigtrain.train.optim import lr_factor
from bigtrain.train.step import (
    NonFiniteGuard,
    OptimizerStep,
    accumulate,
    grad_overlap,
    rank_means,
    record_updates,
)
from bigtrain.train.task import Batches, Task, eval_recipe, register_task

PIXELS = PIXEL_LEVELS


@dataclass
class DensityConfig:
    """``density.*``: what the pixels are, the VAE's KL schedule, and what evaluation scores."""

    pixels: str = "8bit"  # 8bit (256 levels) | binary (2 levels: pixel > 127.5)
    beta: float = 1.0  # the KL term's final weight (a VAE; beta-VAE when > 1)
    kl_warmup_steps: int = 0  # the KL weight ramps linearly from 0 to beta over these steps
    iw_samples: int = 0  # K of the importance-weighted bound at evaluation (a VAE; 0 or 1: off)
    eval_images: int = 0  # images of eval.ref_split scored by the nll metric (0: all of them)
    vae_samples: str = "mean"  # a VAE's images: the decoder's "mean", or a "draw" from p(x|z)


@dataclass
class LikelihoodOptimConfig(OptimConfig):
    net: OptimizerConfig = field(
        default_factory=lambda: OptimizerConfig(lr=1e-3, betas=(0.9, 0.999))
    )  # opt_net: the model's Adam


@dataclass
class LikelihoodConfig(TrainConfig):
    """A ``task=likelihood`` run's config: the shared sections, plus ``density``, ``ema`` (off by
    default) and the model's optimizer."""

    task: str = "likelihood"
    model: ModelConfig = field(default_factory=lambda: ModelConfig(name="pixelcnn"))
    optim: LikelihoodOptimConfig = field(default_factory=LikelihoodOptimConfig)
    density: DensityConfig = field(default_factory=DensityConfig)
    ema: EMAConfig = field(default_factory=lambda: EMAConfig(enabled=False))


def kl_weight(step: int, d: Any) -> float:
    """The KL weight at ``step`` (1-based): ``beta * min(1, step / kl_warmup_steps)``."""
    warm = int(d.kl_warmup_steps)
    return float(d.beta) * (1.0 if warm <= 0 else min(1.0, step / warm))


@register_task
class LikelihoodTask(Task):
    name = "likelihood"
    config = LikelihoodConfig
    model_kind = "density"
    inference_components = ("net",)
    default_metrics = ("nll", "fid")
    eval_provides = frozenset({Need.features, Need.likelihood})
    sample_options = frozenset()

    @classmethod
    def check_config(cls, cfg: Any, manifest: DatasetManifest) -> list[str]:  # noqa: ARG003
        d, problems = cfg.density, []
        if str(d.pixels) not in PIXELS:
            problems.append(f"density.pixels must be one of {', '.join(PIXELS)} (got '{d.pixels}')")
        if d.beta < 0 or d.kl_warmup_steps < 0 or d.iw_samples < 0 or d.eval_images < 0:
            problems.append("density.beta, kl_warmup_steps, iw_samples and eval_images must be >= 0")
        if str(d.vae_samples) not in ("mean", "draw"):
            problems.append(f"density.vae_samples must be mean or draw (got '{d.vae_samples}')")
        if cfg.stages.schedule:
            problems.append("task=likelihood trains at one resolution: leave stages.schedule empty")
        if str(cfg.trainer.precision) == "fp16":
            problems.append("task=likelihood trains in fp32 or bf16: set trainer.precision=bf16")
        if not 0.0 <= cfg.ema.decay < 1.0 or cfg.ema.buffers not in EMA_BUFFERS:
            problems.append(f"ema.decay must be in [0, 1) and ema.buffers one of {', '.join(EMA_BUFFERS)}")
        return problems

    @classmethod
    def describe(cls, cfg: Any) -> dict[str, Any]:
        d = cfg.density
        latent = str(cfg.model.name) == "vae"
        loss = (
            f"negative ELBO (KL weight {d.beta:g}"
            + (f", warmed up over {d.kl_warmup_steps} steps)" if d.kl_warmup_steps else ")")
            if latent
            else "exact negative log-likelihood"
        )
        return {"loss": f"{loss}, {d.pixels} pixels", "step": "1 update per step"}

    def __init__(self, cfg: DictConfig, manifest: DatasetManifest, device: torch.device, accelerator: Any):
        self.cfg, self.manifest, self.device, self.accelerator = cfg, manifest, device, accelerator
        self.num_classes = int(manifest.num_classes) if cfg.model.conditional else 0
        self.shape = DensityShape(
            int(manifest.resolution),
            int(manifest.channels),
            self.num_classes,
            PIXELS[str(cfg.density.pixels)],
        )
        where = torch.device("meta") if device.type == "meta" else contextlib.nullcontext()
        with where:
            self.net: DensityModel = build_model(str(cfg.model.name), cfg.model.arch, shape=self.shape)
        self.net.to(device)
        bdist.broadcast_module(self.net)
        self.batch_size = int(cfg.data.batch_size)
        self.accumulation = max(1, int(cfg.trainer.get("accumulation", 1)))
        self.guard = NonFiniteGuard(cfg.trainer)
        self.update = OptimizerStep.build(
            "net",
            self.net,
            cfg.optim.net,
            self.guard,
            accumulation=self.accumulation,
            **grad_overlap(cfg.trainer),
            broadcast=(self.net,),
        )
        e = cfg.ema
        self.ema = EMA(self.net, e.decay, e.start_step, e.warmup, str(e.buffers)) if e.enabled else None

    # -- checkpointable state ---------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        out = {
            "net": self.net.state_dict(),
            "opt_net": self.update.state_dict(),
            "task": self.guard.state_dict(),
        }
        if self.ema is not None:
            out["net_ema"] = self.ema.state_dict()
        return out

    def load_state_dict(self, states: Mapping[str, Any]) -> None:
        load_component("net", self.net, states)
        load_component("opt_net", self.update, states)
        if self.ema is not None:
            load_component("net_ema", self.ema, states)
        self.guard.load_state_dict(states.get("task", {}))

    def digest_modules(self) -> dict[str, nn.Module]:
        mods: dict[str, nn.Module] = {"net": self.net}
        if self.ema is not None:
            mods["net_ema"] = self.ema.model
        return mods

    def weight_modules(self) -> dict[str, nn.Module]:
        return {"net": self.net}

    def init_weights(self, weights: Mapping[str, Any]) -> list[str]:
        loaded = super().init_weights(weights)
        if self.ema is not None:  # a fine-tuned EMA starts from the loaded weights
            self.ema.model.load_state_dict(self.net.state_dict())
        return loaded

    # -- one step ---------------------------------------------------------------------------------
    def images_per_step(self) -> int:
        return self.batch_size * self.accumulation

    def _levels(self, batch: Mapping[str, Any]) -> tuple[torch.Tensor, torch.Tensor | None]:
        x = quantize(batch["image"].to(self.device, non_blocking=True), self.shape.levels)
        y = batch["label"].to(self.device) if self.num_classes else None
        return x, y

    def train_step(self, step: int, data: Batches) -> dict[str, float]:
        factor = lr_factor(step, self.cfg.optim.schedule, self.cfg.trainer.max_steps)
        metrics: dict[str, float] = {"lr/net": self.update.schedule(factor, None)}
        w = kl_weight(step, self.cfg.density)
        per_dim = 1.0 / (self.shape.dims * LN2)  # nats per image -> bits per sub-pixel
        acc, sums = self.accumulation, {}

        def micro() -> torch.Tensor:
            x, y = self._levels(next(data))
            with self.accelerator.autocast():
                loss, parts = self.net.objective(x, y, kl_weight=w)
            for k, t in {"bits_per_dim": loss, **parts}.items():
                value = t.detach().float().mean() * per_dim / acc
                sums[k] = sums.get(k, torch.zeros((), device=self.device)) + value
            return loss.float().mean() * per_dim  # bits per sub-pixel: the same scale at any size

        value = self.update.apply(accumulate(self.update, micro), step)
        # the loss is loss/bits_per_dim below (the same value, averaged over ranks)
        record_updates(metrics, self.guard, {"net": (self.update, value)}, losses=False)
        metrics |= {
            f"loss/{k}" if k == "bits_per_dim" else f"loss/{k}_bpd": v for k, v in rank_means(sums).items()
        }
        if self.net.exact is False:
            metrics["density/kl_weight"] = w
        if self.ema is not None:
            self.ema.update(self.net, step)
            metrics["ema/decay"] = self.ema.current_decay(step)
        metrics["train/nonfinite_skips"] = float(self.guard.total)
        return metrics

    # -- sampling ---------------------------------------------------------------------------------
    @property
    def judged(self) -> DensityModel:
        """The network evaluation and sampling use: the EMA copy when there is one."""
        return self.ema.model if self.ema is not None else self.net  # type: ignore[return-value]

    @contextlib.contextmanager
    def _eval_mode(self) -> Iterator[DensityModel]:
        net = self.judged
        was = net.training
        net.eval()
        try:
            yield net
        finally:
            net.train(was)

    @torch.no_grad()
    def sample_labels(self, labels: torch.Tensor, generator: torch.Generator, **options: Any) -> torch.Tensor:  # noqa: ARG002
        """One image per label, in [-1, 1] on the CPU."""
        return self._draw(len(labels), labels, generator)

    @torch.no_grad()
    def _draw(self, n: int, labels: torch.Tensor | None, generator: torch.Generator) -> torch.Tensor:
        """``n`` images (one per label when the model is conditional), in [-1, 1] on the CPU
        (:func:`~bigtrain.train.density_sampling.draw_images`)."""
        with self._eval_mode() as net:
            return draw_images(
                net, n, labels if self.num_classes else None, generator, levels=self.shape.levels,
                vae_samples=str(self.cfg.density.vae_samples), device=self.device,
            )  # fmt: skip

    def sample(
        self, n: int, generator: torch.Generator, *, classes: list[int] | None = None, **options: Any
    ) -> torch.Tensor:
        return self._draw(n, draw_labels(n, self.num_classes, classes, generator), generator)

    def sample_grid(self, seed: int, rows: int) -> tuple[torch.Tensor, int]:
        """``rows`` x ``rows`` samples; a conditional model's row ``r`` shows class ``r mod K``."""
        g = torch.Generator(device=self.device).manual_seed(seed)
        if self.num_classes:
            labels = (torch.arange(rows) % self.num_classes).repeat_interleave(rows)
            return self.sample_labels(labels, g), rows
        return self.sample(rows * rows, g), rows

    @torch.no_grad()
    def extra_grids(self, seed: int, rows: int) -> dict[str, tuple[torch.Tensor, int]]:  # noqa: ARG002
        """A latent model's ``reconstructions``: rows of evaluation images (as the model sees them:
        binarised for binary pixels), each followed by a row of the decoder's mean at the
        posterior mean of their z (the same fixed images at every step)."""
        if not isinstance(self.judged, LatentDensityModel):
            return {}
        n = rows * max(1, rows // 2)
        xs, ys = [], []
        for x, y in self._real():
            xs.append(x)
            ys.append(y)
            if sum(len(t) for t in xs) >= n:
                break
        if not xs:
            return {}
        x = torch.cat(xs)[:n]
        y = torch.cat(ys)[:n] if self.num_classes else None  # type: ignore[arg-type]
        with self._eval_mode() as net:
            assert isinstance(net, LatentDensityModel)
            mu, _ = net.encode(x, y)
            rec = net.mean_image(mu, y).float().clamp(-1, 1).cpu()
        real = to_unit(x, self.shape.levels).cpu()
        pairs = [t for i in range(0, len(x), rows) for t in (real[i : i + rows], rec[i : i + rows])]
        return {"reconstructions": (torch.cat(pairs), rows)}

    def interpolate(self, rows: int, steps: int, generator: torch.Generator, **options: Any) -> torch.Tensor:  # noqa: ARG002
        """A latent model's walks between two prior draws (the decoder's mean along each line)."""
        with self._eval_mode() as net:
            if not isinstance(net, LatentDensityModel):
                raise ConfigError(f"model={self.cfg.model.name} has no latent space to interpolate in")
            z = torch.randn(2, rows, net.latent_dim, generator=generator, device=generator.device).to(
                self.device
            )
            t = torch.linspace(0, 1, steps, device=self.device)[None, :, None]
            path = (z[0][:, None] * (1 - t) + z[1][:, None] * t).flatten(0, 1)
            y = None
            if self.num_classes:
                y = torch.randint(0, self.num_classes, (rows,), generator=generator, device=generator.device)
                y = y.to(self.device).repeat_interleave(steps)
            with torch.no_grad():
                return net.mean_image(path, y).float().clamp(-1, 1).cpu()

    def latent_space(self) -> LatentSpace:
        """A VAE's z ~ N(0, I) through the decoder's mean (unconditional models only)."""
        net = self.judged
        if not isinstance(net, LatentDensityModel):
            raise ConfigError(f"model={self.cfg.model.name} has no latent space for arithmetic")
        if self.num_classes:
            raise ConfigError("--arithmetic needs an unconditional VAE: this one takes its class beside z")
        dim = int(net.latent_dim)

        @torch.no_grad()
        def decode(z: torch.Tensor) -> torch.Tensor:
            with self._eval_mode() as model:
                return model.mean_image(z.to(self.device), None).float().clamp(-1, 1).cpu()

        return LatentSpace(dim, lambda n, g: torch.randn(n, dim, generator=g, device=g.device), decode)

    # -- evaluation -------------------------------------------------------------------------------
    def _real(self) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
        """``eval.ref_split`` as levels and labels, in shard order (``density.eval_images`` of them)."""
        limit = int(self.cfg.density.eval_images) or None
        for images, labels in iter_labelled(
            self.manifest, str(self.cfg.eval.ref_split), int(self.cfg.eval.batch_size), limit,
            method=eval_recipe(self.cfg),
        ):  # fmt: skip
            x = levels_from_uint8(
                torch.from_numpy(images).to(self.device).permute(0, 3, 1, 2), self.shape.levels
            )
            y = torch.from_numpy(labels).to(self.device).clamp(min=0) if self.num_classes else None
            yield x, y

    @torch.no_grad()
    def likelihood(self) -> dict[str, float]:
        """Mean negative log-likelihood (or bounds) of the evaluation split, in bits per sub-pixel
        and nats per image; latent noise from a generator seeded with ``eval.seed``."""
        k = int(self.cfg.density.iw_samples)
        g = torch.Generator(device=self.device).manual_seed(int(self.cfg.eval.seed))
        totals: dict[str, float] = {}
        count = 0
        with self._eval_mode() as net:
            for x, y in self._real():
                for name, nats in net.bounds(x, y, generator=g, iw_samples=k).items():
                    totals[name] = totals.get(name, 0.0) + float(nats.double().sum())
                count += len(x)
        if not count:
            raise ConfigError(f"the {self.cfg.eval.ref_split} split has no images to score")
        out: dict[str, float] = {}
        suffix = {
            "nll": ("bits_per_dim", "nats"),
            "elbo": ("elbo_bpd", "elbo_nats"),
            "iw": (f"iw_bpd_k{k}", f"iw_nats_k{k}"),
        }
        for name, total in totals.items():
            bpd_key, nats_key = suffix[name]
            mean = total / count
            out[f"nll/{bpd_key}"] = mean / (self.shape.dims * LN2)
            out[f"nll/{nats_key}"] = mean
        out["nll/images"] = float(count)
        return out

    def eval_source(self) -> EvalSource:
        """Samples (FID, precision / recall) and the evaluation split's likelihood."""
        return EvalSource(
            Judged.samples,
            lambda n, generator: self.sample(n, generator),
            self.manifest,
            self.shape.resolution,
            likelihood=self.likelihood,
            downsample=eval_recipe(self.cfg),
        )
