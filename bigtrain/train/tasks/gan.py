"""The GAN task (``task=gan``): ``k`` discriminator steps then one generator step, then the EMA update.

Each network's optimizer step is a :class:`~bigtrain.train.step.OptimizerStep`: gradients summed
over ``trainer.accumulation`` micro-batches, the loss checked for NaN/inf on every rank at once,
gradients averaged over ranks (not DDP: see ``bigtrain.distributed``), the step (through a
per-network fp16 loss scale with ``trainer.precision=fp16``), BatchNorm statistics broadcast.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import torch
from omegaconf import DictConfig
from torch import nn

from bigtrain import distributed as bdist
from bigtrain.checkpoint.manager import load_component
from bigtrain.config.schema import EvalConfig, ModelConfig, OptimConfig, OptimizerConfig, TrainConfig
from bigtrain.data.manifest import DatasetManifest
from bigtrain.distributed.sync_bn import convert_cross_replica_bn
from bigtrain.errors import ConfigError
from bigtrain.eval.source import EvalSource, Judged
from bigtrain.losses import build_loss, gradient_penalty
from bigtrain.losses.regularizers import orthogonal_penalty
from bigtrain.models import D_NORMS, build_gan
from bigtrain.models.biggan_layers import use_attention_kernel
from bigtrain.train.augment import diff_augment, parse_policy
from bigtrain.train.bn_modes import G_BN_MODES
from bigtrain.train.ema import EMA, EMA_BUFFERS, EMAConfig
from bigtrain.train.gan_sampling import GeneratorSampling
from bigtrain.train.latent_arithmetic import LatentSpace
from bigtrain.train.optim import lr_factor
from bigtrain.train.stages import StageDriver, StagedTask, build_driver, fade_reals
from bigtrain.train.step import NonFiniteGuard, OptimizerStep, accumulate, apply_frozen, grad_overlap
from bigtrain.train.task import Batches, eval_recipe, register_task

log = logging.getLogger(__name__)


class LossName(StrEnum):
    minimax = "minimax"
    non_saturating = "non_saturating"
    lsgan = "lsgan"
    wgan = "wgan"
    wgan_gp = "wgan_gp"
    hinge = "hinge"


@dataclass
class LossConfig:
    """``loss.*``: the GAN objective and its regularisers."""

    name: LossName = LossName.non_saturating
    d_steps: int = 1  # k discriminator steps per generator step (Goodfellow et al. 2014, Alg. 1)
    gp_weight: float = 10.0  # WGAN-GP lambda
    clip: float = 0.01  # loss=wgan: the critic's weights are clipped to [-clip, clip] after each step
    # D on real and fake as two batches (DCGAN: batchnorm statistics per kind) or, False, as one
    # concatenated batch (BigGAN's split_D=False: one forward, one spectral-norm power iteration)
    split_d: bool = True
    diffaugment: str = ""  # DiffAugment policy for small datasets, e.g. "color,translation,cutout"
    # BigGAN's off-diagonal orthogonal regularisation of G's / D's weights (Brock et al. 2019, 3.1)
    g_ortho: float = 0.0
    d_ortho: float = 0.0
    # ProGAN's drift term eps * E[D(x)^2] on real logits, keeping a WGAN critic's output near 0
    drift: float = 0.0


@dataclass
class GANModelConfig(ModelConfig):
    z_dim: int = 100  # the latent size
    g_width: int = 64  # G's base width (BigGAN's G_ch)
    d_width: int = 64  # D's base width (BigGAN's D_ch)
    d_norm: str = "batch"  # D's normalisation: batch | layer | none (families without norms ignore it)


@dataclass
class GANOptimConfig(OptimConfig):
    g: OptimizerConfig = field(default_factory=OptimizerConfig)  # opt_G
    d: OptimizerConfig = field(default_factory=OptimizerConfig)  # opt_D


@dataclass
class GANEvalConfig(EvalConfig):
    """``eval.*`` of a GAN: the shared keys plus the BatchNorm statistics G samples with."""

    # running: eval mode, stored statistics | batch: train mode, each batch its own (the BigGAN
    # reference's CIFAR protocol) | standing: re-estimated over standing_passes batches, then eval
    g_bn: str = "running"
    standing_passes: int = 16  # the reference's --num_standing_accumulations
    standing_batch: int = 0  # samples per standing pass; 0 = data.batch_size


@dataclass
class GANConfig(TrainConfig):
    """A ``task=gan`` run's config: the shared sections, plus ``loss``, ``ema``, the GAN's model keys
    and the G and D optimizers."""

    task: str = "gan"
    model: GANModelConfig = field(default_factory=GANModelConfig)
    optim: GANOptimConfig = field(default_factory=GANOptimConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    ema: EMAConfig = field(default_factory=EMAConfig)
    eval: GANEvalConfig = field(default_factory=GANEvalConfig)


@register_task
class GANTask(StagedTask):
    name = "gan"
    config = GANConfig
    model_kind = "gan"
    inference_components = ("G_ema",)
    default_metrics = ("fid", "is", "pr")
    sample_options = frozenset({"truncation"})
    defers_checks = True  # trainer.sync_every: losses and metrics stay on the device between reads

    @classmethod
    def check_config(cls, cfg: Any, manifest: DatasetManifest) -> list[str]:  # noqa: ARG003
        problems = []
        loss = cfg.loss
        if loss.d_steps < 1:
            problems.append("loss.d_steps must be >= 1")
        if str(loss.name) == "wgan" and not loss.clip > 0:
            problems.append("loss.clip (the WGAN critic's weight bound) must be > 0")
        if loss.g_ortho < 0 or loss.d_ortho < 0:
            problems.append("loss.g_ortho and loss.d_ortho must be >= 0")
        if cfg.model.d_norm not in D_NORMS:
            problems.append(f"model.d_norm must be one of {', '.join(D_NORMS)} (got '{cfg.model.d_norm}')")
        if str(loss.name) == "wgan_gp" and cfg.model.d_norm == "batch":
            problems.append(
                "loss=wgan_gp needs a critic without batchnorm (its penalty is per sample): set model.d_norm=layer"
            )
        if not 0.0 <= cfg.ema.decay < 1.0:
            problems.append("ema.decay must be in [0, 1)")
        if cfg.eval.g_bn not in G_BN_MODES:
            problems.append(f"eval.g_bn must be one of {', '.join(G_BN_MODES)} (got '{cfg.eval.g_bn}')")
        if cfg.eval.standing_passes < 1 or cfg.eval.standing_batch < 0:
            problems.append("eval.standing_passes must be >= 1 and eval.standing_batch >= 0")
        if cfg.ema.buffers not in EMA_BUFFERS:
            problems.append(f"ema.buffers must be one of {', '.join(EMA_BUFFERS)} (got '{cfg.ema.buffers}')")
        try:
            parse_policy(str(loss.diffaugment or ""))
        except ValueError as exc:
            problems.append(f"loss.diffaugment: {exc}")
        return problems

    @classmethod
    def describe(cls, cfg: Any) -> dict[str, Any]:
        d = int(cfg.loss.d_steps)
        return {"loss": str(cfg.loss.name), "step": f"{d} D step(s) per G step", "d_steps": d}

    def __init__(self, cfg: DictConfig, manifest: DatasetManifest, device: torch.device, accelerator: Any):
        self.cfg, self.device, self.accelerator = cfg, device, accelerator
        self.num_classes = manifest.num_classes if cfg.model.conditional else 0
        # Networks are initialised on the CPU (the same weights for a seed on every device type);
        # `bigtrain info` asks for the meta device, where building there skips the init entirely.
        where = torch.device("meta") if device.type == "meta" else contextlib.nullcontext()
        with where:
            self.G, self.D = build_gan(
                cfg.model.name,
                resolution=manifest.resolution,
                channels=manifest.channels,
                num_classes=self.num_classes,
                z_dim=cfg.model.z_dim,
                g_width=cfg.model.g_width,
                d_width=cfg.model.d_width,
                d_norm=cfg.model.d_norm,
                **cfg.model.arch,
            )
        if bdist.world_size() > 1:  # BigGAN's cross-replica BN, applied from outside the model
            for net in (self.G, self.D):
                if getattr(net, "cross_replica_bn", False):
                    convert_cross_replica_bn(net)
        kernel = str(cfg.trainer.get("attention_kernel", "matmul"))
        if sum(use_attention_kernel(net, kernel) for net in (self.G, self.D)) == 0 and kernel != "matmul":
            raise ConfigError(
                f"trainer.attention_kernel={kernel}: model '{cfg.model.name}' has no self-attention"
            )
        self.memory_format = (
            torch.channels_last if cfg.trainer.get("channels_last") else torch.contiguous_format
        )
        self.G.to(device, memory_format=self.memory_format)
        self.D.to(device, memory_format=self.memory_format)
        bdist.broadcast_module(self.G)
        bdist.broadcast_module(self.D)
        self.loss = build_loss(str(cfg.loss.name))
        self.augment = parse_policy(str(cfg.loss.get("diffaugment", "") or ""))
        self.ema = (
            EMA(self.G, cfg.ema.decay, cfg.ema.start_step, cfg.ema.warmup, str(cfg.ema.buffers))
            if cfg.ema.enabled
            else None
        )
        if cfg.trainer.get("compile"):
            # in place (nn.Module.compile), so state_dict keys and the EMA copy are unaffected
            mode = str(cfg.trainer.get("compile_mode", "default"))
            self.G.compile(mode=None if mode == "default" else mode)
            self.D.compile(mode=None if mode == "default" else mode)
        self.z_dim = cfg.model.z_dim
        self.batch_size = cfg.data.batch_size
        self.accumulation = max(1, int(cfg.trainer.get("accumulation", 1)))
        fp16 = str(cfg.trainer.precision) == "fp16"
        dev_type = device.type if device.type in ("cuda", "cpu") else "cpu"
        self.guard = NonFiniteGuard(cfg.trainer, deferred=True)
        self.d_update = OptimizerStep.build(
            "D",
            self.D,
            cfg.optim.d,
            self.guard,
            scaler=torch.amp.GradScaler(dev_type, enabled=fp16),
            accumulation=self.accumulation,
            **grad_overlap(cfg.trainer),
            broadcast=(self.D,),
        )
        self.g_update = OptimizerStep.build(
            "G",
            self.G,
            cfg.optim.g,
            self.guard,
            scaler=torch.amp.GradScaler(dev_type, enabled=fp16),
            accumulation=self.accumulation,
            **grad_overlap(cfg.trainer),
            broadcast=(self.G, self.D),  # D's BatchNorm statistics also moved in G's forward
        )
        # BigGAN's shared class embedding is exempt from the orthogonal penalty (as in the reference)
        self._g_ortho_exempt = [m for m in (getattr(self.G, "shared", None),) if isinstance(m, nn.Module)]
        self.final_resolution = manifest.resolution
        self.manifest = manifest
        e = cfg.eval
        self.sampling = GeneratorSampling(
            self._eval_G,
            z_dim=int(cfg.model.z_dim),
            num_classes=self.num_classes,
            device=device,
            g_bn=str(e.g_bn),
            standing_passes=int(e.standing_passes),
            standing_batch=int(e.standing_batch) or self.batch_size,
            seed=int(e.seed),
            version=lambda: self._version,
        )
        self._version = 0  # changes with G's weights: standing statistics are re-estimated then
        self.staging = self._stage_driver(cfg, manifest) if cfg.stages.schedule else None
        self.follow_stage(1)

    # the optimizers and loss scalers under their checkpoint names
    @property
    def opt_G(self) -> torch.optim.Optimizer:
        return self.g_update.optimizer

    @property
    def opt_D(self) -> torch.optim.Optimizer:
        return self.d_update.optimizer

    @property
    def scaler_G(self) -> torch.amp.GradScaler:
        assert self.g_update.scaler is not None
        return self.g_update.scaler

    @property
    def scaler_D(self) -> torch.amp.GradScaler:
        assert self.d_update.scaler is not None
        return self.d_update.scaler

    # -- resolution stages (progressive growing) ---------------------------------------------------
    def _stage_driver(self, cfg: DictConfig, manifest: DatasetManifest) -> StageDriver:
        """A GAN's generator makes images of one size, so its stages need networks that grow:
        ProGAN, or DCGAN / BigGAN / BigGAN-deep built with ``model.arch.grow=true``."""
        if not (getattr(self.G, "growing", False) and getattr(self.D, "growing", False)):
            raise ValueError(
                f"stages.schedule needs a growing model (model=progan, or model.arch.grow=true with "
                f"model=dcgan, biggan or biggan_deep); {cfg.model.name} as configured trains at one resolution"
            )
        allowed = sorted(set(self.G.stage_resolutions) & set(self.D.stage_resolutions))  # type: ignore[arg-type]
        nets = [self.G, self.D] + ([self.ema.model] if self.ema is not None else [])
        return build_driver(
            cfg,
            images_per_micro_step=int(cfg.loss.d_steps) * self.accumulation,
            growing=nets,
            allowed=allowed,
            final_resolution=manifest.resolution,
            world_size=bdist.world_size(),
        )

    def stage_updates(self) -> list[OptimizerStep]:
        return [self.g_update, self.d_update]

    # -- checkpointable state ---------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        out = {
            "G": self.G.state_dict(),
            "D": self.D.state_dict(),
            "opt_G": self.g_update.state_dict(),
            "opt_D": self.d_update.state_dict(),
        }
        if self.ema is not None:
            out["G_ema"] = self.ema.state_dict()
        if self.scaler_G.is_enabled():
            out["scaler"] = {"G": self.scaler_G.state_dict(), "D": self.scaler_D.state_dict()}
        out["task"] = self.guard.state_dict()
        self.save_stages(out["task"])
        return out

    def load_state_dict(self, states: Mapping[str, Any]) -> None:
        load_component("G", self.G, states)
        load_component("D", self.D, states)
        load_component("opt_G", self.g_update, states)
        load_component("opt_D", self.d_update, states)
        if self.ema is not None:
            load_component("G_ema", self.ema, states)
        if "scaler" in states and self.scaler_G.is_enabled():
            self.scaler_G.load_state_dict(states["scaler"]["G"])
            self.scaler_D.load_state_dict(states["scaler"]["D"])
        self.guard.load_state_dict(states.get("task", {}))
        self.load_stages(states.get("task", {}))
        self._version += 1

    def digest_modules(self) -> dict[str, nn.Module]:
        mods: dict[str, nn.Module] = {"G": self.G, "D": self.D}
        if self.ema is not None:
            mods["G_ema"] = self.ema.model
        return mods

    def init_weights(self, weights: Mapping[str, Any]) -> list[str]:
        """As the base; and the generator the source lacks starts from the one it has: the EMA
        generator from G, or G from the EMA generator (a release with ``G_ema`` only; an export's
        generator counts as both)."""
        loaded = super().init_weights(weights)
        if self.ema is not None and "G" in loaded and "G_ema" not in loaded:
            self.ema.model.load_state_dict(self.G.state_dict())
        elif self.ema is not None and "G_ema" in loaded and "G" not in loaded:
            self.G.load_state_dict(self.ema.model.state_dict())
        self._version += 1  # standing statistics are re-estimated for the new weights
        return loaded

    # -- one step ---------------------------------------------------------------------------------
    def _labels(self, n: int) -> torch.Tensor | None:
        """Classes for ``n`` fakes, drawn on the CPU (the same for a seed on every device). On a GPU
        through pinned memory without blocking: a copy from ordinary memory would wait for the GPU."""
        if not self.num_classes:
            return None
        y = torch.randint(0, self.num_classes, (n,))
        if self.device.type == "cuda":
            return y.pin_memory().to(self.device, non_blocking=True)
        return y.to(self.device)

    def images_per_step(self) -> int:
        return self.batch_size * self.cfg.loss.d_steps * self.accumulation

    def _d_step(self, step: int, data: Batches, autocast: Callable[[], Any]) -> dict[str, Any] | None:
        acc = self.accumulation
        fade = 1.0
        if self.staging is not None and self.cfg.stages.fade_reals:
            fade = self.staging.at(step).alpha
        real_logit = fake_logit = gp_sum = torch.zeros((), device=self.device)
        calls = 0

        def micro() -> torch.Tensor:
            nonlocal real_logit, fake_logit, gp_sum, calls
            calls += 1
            batch = next(data)
            real = (
                batch["image"].to(self.device, non_blocking=True).contiguous(memory_format=self.memory_format)
            )
            if fade < 1.0:  # ProGAN: the reals blend towards their coarser level like G's image
                real = fade_reals(real, fade)
            y_real = batch["label"].to(self.device, non_blocking=True) if self.num_classes else None
            n = real.shape[0]
            z = torch.randn(n, self.z_dim, device=self.device)
            y_fake = self._labels(n)
            with torch.no_grad(), autocast():
                fake = self.G(z, y_fake)
            if self.augment:  # DiffAugment: D only ever sees augmented images, real and fake alike
                real, fake = diff_augment(real, self.augment), diff_augment(fake.detach(), self.augment)
            with autocast():
                if self.cfg.loss.split_d:
                    real_logits = self.D(real, y_real)
                    fake_logits = self.D(fake.detach(), y_fake)
                else:
                    y_both = None if y_real is None else torch.cat([y_real, y_fake])
                    both = self.D(torch.cat([real, fake.detach().to(real.dtype)]), y_both)
                    real_logits, fake_logits = both[:n], both[n:]
                loss = self.loss.d_loss(real_logits.float(), fake_logits.float())
            if self.loss.gradient_penalty:
                gp = gradient_penalty(
                    self.D, real, fake.detach().to(real.dtype), y_real, self.cfg.loss.gp_weight
                )
                loss = loss + gp
                gp_sum = gp_sum + gp.detach()
            if self.cfg.loss.drift > 0:  # ProGAN: keep the critic's output near 0
                loss = loss + self.cfg.loss.drift * real_logits.float().square().mean()
            if self.cfg.loss.d_ortho > 0 and calls == acc:
                loss = loss + acc * orthogonal_penalty(self.D, self.cfg.loss.d_ortho)  # see _g_step
            real_logit = real_logit + real_logits.detach().float().mean() / acc
            fake_logit = fake_logit + fake_logits.detach().float().mean() / acc
            return loss

        total = accumulate(self.d_update, micro)
        value = self.d_update.apply(total, step)
        if value is None:
            return None
        if self.loss.weight_clip:  # the original WGAN: a compact weight space keeps D Lipschitz
            with torch.no_grad():
                for p in self.D.parameters():
                    p.clamp_(-self.cfg.loss.clip, self.cfg.loss.clip)
        return {"loss": value, "real": real_logit, "fake": fake_logit, "gp": gp_sum / acc}

    def _g_step(self, step: int, autocast: Callable[[], Any]) -> float | None:
        acc, calls = self.accumulation, 0

        def micro() -> torch.Tensor:
            nonlocal calls
            calls += 1
            z = torch.randn(self.batch_size, self.z_dim, device=self.device)
            y_fake = self._labels(self.batch_size)
            with autocast():
                fake = self.G(z, y_fake)
                if self.augment:
                    fake = diff_augment(fake, self.augment)
                loss = self.loss.g_loss(self.D(fake, y_fake).float())
            if self.cfg.loss.g_ortho > 0 and calls == acc:
                # once per update, on the last micro-batch, times the accumulation count (the
                # update divides every micro-batch's loss by it): the reference's utils.ortho, once
                # after its accumulation loop. It depends on the weights only, so computing it on
                # every micro-batch would repeat the same Gram matrices (0.59 TFLOP in fp32 for
                # BigGAN-128's G) accumulation times over
                penalty = orthogonal_penalty(self.G, self.cfg.loss.g_ortho, self._g_ortho_exempt)
                loss = loss + acc * penalty
            return loss

        return apply_frozen(self.g_update, micro, step, self.D)

    def train_step(self, step: int, data: Batches) -> dict[str, float]:
        autocast = self.accelerator.autocast
        self._version += 1
        factor = lr_factor(step, self.cfg.optim.schedule, self.cfg.trainer.max_steps)
        metrics = self.follow_stage(step)
        lr_g, lr_d = self.stage_lr
        metrics["lr/G"] = self.g_update.schedule(factor, lr_g)
        metrics["lr/D"] = self.d_update.schedule(factor, lr_d)
        d_out = []
        for _ in range(self.cfg.loss.d_steps):
            out = self._d_step(step, data, autocast)
            if out is not None:
                d_out.append(out)
                metrics["grad_norm/D"] = self.d_update.gradient_norm()
        g_loss = self._g_step(step, autocast)
        if g_loss is not None:
            metrics["loss/G"] = g_loss
            metrics["grad_norm/G"] = self.g_update.gradient_norm()
        if d_out and g_loss is not None:
            self.guard.good_step()
        if self.ema is not None:
            self.ema.update(self.G, step)
            metrics["ema/decay"] = self.ema.current_decay(step)
        if d_out:
            metrics["loss/D"] = sum(o["loss"] for o in d_out) / len(d_out)
            scores = bdist.all_reduce_mean(
                torch.stack(
                    [
                        torch.stack([o["real"] for o in d_out]).mean(),
                        torch.stack([o["fake"] for o in d_out]).mean(),
                        torch.stack([o["gp"] for o in d_out]).mean(),
                    ]
                )
            )
            read = (lambda v: v) if self.guard.deferred else float  # deferred: the loop reads them
            metrics["D/real_logit"], metrics["D/fake_logit"] = read(scores[0]), read(scores[1])
            if self.loss.gradient_penalty:
                metrics["loss/gp"] = read(scores[2])
        metrics["train/nonfinite_skips"] = float(self.guard.total)
        if self.scaler_G.is_enabled():
            metrics["amp/scale_G"], metrics["amp/scale_D"] = (
                self.scaler_G.get_scale(),
                self.scaler_D.get_scale(),
            )
        return metrics

    def settle(self) -> None:
        self.guard.settle()

    # -- sampling ---------------------------------------------------------------------------------
    def _eval_G(self) -> nn.Module:
        return self.ema.model if self.ema is not None else self.G

    def _generate(self, z: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        return self.sampling.generate(z, y)

    def sample_grid(self, seed: int, rows: int) -> tuple[torch.Tensor, int]:
        return self.sampling.grid(seed, rows)

    def sample(
        self, n: int, generator: torch.Generator, *, classes: list[int] | None = None, **options: Any
    ) -> torch.Tensor:
        """From the EMA generator (see :class:`~bigtrain.train.gan_sampling.GeneratorSampling`)."""
        return self.sampling.sample(n, generator, classes=classes, **options)

    def sample_per_class(
        self, classes: list[int], per_class: int, generator: torch.Generator, **options: Any
    ) -> torch.Tensor:
        return self.sampling.per_class(classes, per_class, generator, **options)

    def sample_labels(self, labels: torch.Tensor, generator: torch.Generator, **options: Any) -> torch.Tensor:
        return self.sampling.for_labels(labels, generator, **options)

    def interpolate(self, rows: int, steps: int, generator: torch.Generator, **options: Any) -> torch.Tensor:  # noqa: ARG002
        return self.sampling.interpolate(rows, steps, generator)

    def latent_space(self) -> LatentSpace:
        """z ~ N(0, I) through the EMA generator (unconditional models: a class given beside z
        is not in z, so arithmetic on z cannot move it)."""
        if self.num_classes:
            raise ConfigError(
                "--arithmetic needs an unconditional generator: this one takes its class beside z"
            )
        z_dim = self.sampling.z_dim
        return LatentSpace(
            z_dim,
            lambda n, generator: torch.randn(n, z_dim, generator=generator, device=generator.device),
            lambda z: self.sampling.generate(z, None),
        )

    # -- evaluation -------------------------------------------------------------------------------
    def eval_source(self) -> EvalSource:
        return EvalSource(
            Judged.samples,
            lambda n, generator: self.sample(n, generator),
            self.manifest,
            self.current_resolution(),
            downsample=eval_recipe(self.cfg),
        )
