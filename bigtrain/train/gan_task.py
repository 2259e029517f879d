"""The GAN task: ``k`` discriminator steps then one generator step, then the EMA update.

Each optimizer step sums gradients over ``trainer.accumulation`` micro-batches, then averages them
over ranks (``bigtrain.distributed.all_reduce_grads``; see that module for why not DDP). Losses
are averaged over ranks before the finiteness check, so a NaN on any rank is seen by every rank at
the same step, before any optimizer applies it: the run stops (``trainer.on_nonfinite=stop``) or
the update is dropped and counted (``skip``). With ``trainer.precision=fp16`` each optimizer has
its own dynamic loss scale; the scaled gradients are all-reduced before the scaler looks for
overflow, so every rank skips the same steps.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from bigtrain import distributed as bdist
from bigtrain.data.manifest import DatasetManifest
from bigtrain.distributed.sync_bn import convert_cross_replica_bn
from bigtrain.losses import build_loss, gradient_penalty
from bigtrain.losses.regularizers import orthogonal_penalty
from bigtrain.models import build_gan
from bigtrain.train.augment import diff_augment, parse_policy
from bigtrain.train.ema import EMA
from bigtrain.train.optim import adam, apply_hparams, lr_factor, set_lr
from bigtrain.train.stages import StageDriver, StagedTask, build_driver
from bigtrain.train.tasks import NonFiniteGuard, register_task

log = logging.getLogger(__name__)


def _grad_norm(module: nn.Module) -> torch.Tensor:
    norms = [p.grad.detach().norm() for p in module.parameters() if p.grad is not None]
    return torch.linalg.vector_norm(torch.stack(norms)) if norms else torch.zeros(())


class GANTask(StagedTask):
    inference_components = ("G_ema",)  # what sampling needs: logged as the run's model artifact

    def __init__(self, cfg: DictConfig, manifest: DatasetManifest, device: torch.device, accelerator: Any):
        self.cfg, self.device, self.accelerator = cfg, device, accelerator
        self.num_classes = manifest.num_classes if cfg.model.conditional else 0
        arch = OmegaConf.to_container(cfg.model.arch, resolve=True) if cfg.model.get("arch") else {}
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
                **arch,  # type: ignore[arg-type]
            )
        if bdist.world_size() > 1:  # BigGAN's cross-replica BN, applied from outside the model
            for net in (self.G, self.D):
                if getattr(net, "cross_replica_bn", False):
                    convert_cross_replica_bn(net)
        self.memory_format = (
            torch.channels_last if cfg.trainer.get("channels_last") else torch.contiguous_format
        )
        self.G.to(device, memory_format=self.memory_format)
        self.D.to(device, memory_format=self.memory_format)
        bdist.broadcast_module(self.G)
        bdist.broadcast_module(self.D)
        self.opt_G = adam(self.G.parameters(), cfg.optim.g)
        self.opt_D = adam(self.D.parameters(), cfg.optim.d)
        self.loss = build_loss(str(cfg.loss.name))
        self.augment = parse_policy(str(cfg.loss.get("diffaugment", "") or ""))
        self.ema = EMA(self.G, cfg.ema.decay, cfg.ema.start_step, cfg.ema.warmup) if cfg.ema.enabled else None
        if cfg.trainer.get("compile"):
            # in place (nn.Module.compile), so state_dict keys and the EMA copy are unaffected
            self.G.compile()
            self.D.compile()
        self.z_dim = cfg.model.z_dim
        self.batch_size = cfg.data.batch_size
        self.accumulation = max(1, int(cfg.trainer.get("accumulation", 1)))
        fp16 = str(cfg.trainer.precision) == "fp16"
        dev_type = device.type if device.type in ("cuda", "cpu") else "cpu"
        self.scaler_G = torch.amp.GradScaler(dev_type, enabled=fp16)
        self.scaler_D = torch.amp.GradScaler(dev_type, enabled=fp16)
        # BigGAN's shared class embedding is exempt from the orthogonal penalty (as in the reference)
        self._g_ortho_exempt = [m for m in (getattr(self.G, "shared", None),) if isinstance(m, nn.Module)]
        self.guard = NonFiniteGuard(cfg.trainer)
        self.final_resolution = manifest.resolution
        self.staging = self._stage_driver(cfg, manifest) if cfg.stages.schedule else None
        self.follow_stage(1)

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

    def stage_optimizers(self) -> list[Any]:
        return [self.opt_G, self.opt_D]

    # -- checkpointable state ---------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        out = {
            "G": self.G.state_dict(),
            "D": self.D.state_dict(),
            "opt_G": self.opt_G.state_dict(),
            "opt_D": self.opt_D.state_dict(),
        }
        if self.ema is not None:
            out["G_ema"] = self.ema.state_dict()
        if self.scaler_G.is_enabled():
            out["scaler"] = {"G": self.scaler_G.state_dict(), "D": self.scaler_D.state_dict()}
        out["task"] = self.guard.state_dict()
        self.save_stages(out["task"])
        return out

    def load_state(self, states: Mapping[str, Any]) -> None:
        self.G.load_state_dict(states["G"])
        self.D.load_state_dict(states["D"])
        self.opt_G.load_state_dict(states["opt_G"])
        self.opt_D.load_state_dict(states["opt_D"])
        apply_hparams(self.opt_G, self.cfg.optim.g)
        apply_hparams(self.opt_D, self.cfg.optim.d)
        if self.ema is not None:
            self.ema.load_state_dict(states["G_ema"])
        if "scaler" in states and self.scaler_G.is_enabled():
            self.scaler_G.load_state_dict(states["scaler"]["G"])
            self.scaler_D.load_state_dict(states["scaler"]["D"])
        self.guard.load_state_dict(states.get("task", {}))
        self.load_stages(states.get("task", {}))

    def digest_modules(self) -> dict[str, nn.Module]:
        mods: dict[str, nn.Module] = {"G": self.G, "D": self.D}
        if self.ema is not None:
            mods["G_ema"] = self.ema.model
        return mods

    # -- one step ---------------------------------------------------------------------------------
    def _labels(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor | None:
        if not self.num_classes:
            return None
        return torch.randint(0, self.num_classes, (n,), generator=generator).to(self.device)

    def images_per_step(self) -> int:
        return self.batch_size * self.cfg.loss.d_steps * self.accumulation

    def _apply(self, module: nn.Module, opt: torch.optim.Optimizer, scaler: torch.amp.GradScaler) -> None:
        bdist.all_reduce_grads(module.parameters())
        scaler.step(opt)
        scaler.update()

    def _d_step(
        self, step: int, data: Iterator[dict[str, Any]], autocast: Callable[[], Any]
    ) -> dict[str, Any] | None:
        self.opt_D.zero_grad(set_to_none=True)
        total = torch.zeros((), device=self.device)
        real_logit = fake_logit = gp_sum = torch.zeros((), device=self.device)
        for _ in range(self.accumulation):
            batch = next(data)
            real = (
                batch["image"].to(self.device, non_blocking=True).contiguous(memory_format=self.memory_format)
            )
            y_real = batch["label"].to(self.device) if self.num_classes else None
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
            if self.cfg.loss.d_ortho > 0:
                loss = loss + orthogonal_penalty(self.D, self.cfg.loss.d_ortho) / self.accumulation
            self.scaler_D.scale(loss / self.accumulation).backward()
            total = total + loss.detach() / self.accumulation
            real_logit = real_logit + real_logits.detach().float().mean() / self.accumulation
            fake_logit = fake_logit + fake_logits.detach().float().mean() / self.accumulation
        value = self.guard.check(total, "D", step)
        if value is None:
            self.opt_D.zero_grad(set_to_none=True)
            return None
        self._apply(self.D, self.opt_D, self.scaler_D)
        bdist.broadcast_buffers(self.D)
        return {"loss": value, "real": real_logit, "fake": fake_logit, "gp": gp_sum / self.accumulation}

    def _g_step(self, step: int, autocast: Callable[[], Any]) -> float | None:
        # D's weights are frozen so its parameters collect no gradient from G's loss
        self.D.requires_grad_(False)
        try:
            self.opt_G.zero_grad(set_to_none=True)
            total = torch.zeros((), device=self.device)
            for _ in range(self.accumulation):
                z = torch.randn(self.batch_size, self.z_dim, device=self.device)
                y_fake = self._labels(self.batch_size)
                with autocast():
                    fake = self.G(z, y_fake)
                    if self.augment:
                        fake = diff_augment(fake, self.augment)
                    loss = self.loss.g_loss(self.D(fake, y_fake).float())
                if self.cfg.loss.g_ortho > 0:
                    loss = loss + orthogonal_penalty(self.G, self.cfg.loss.g_ortho, self._g_ortho_exempt)
                self.scaler_G.scale(loss / self.accumulation).backward()
                total = total + loss.detach() / self.accumulation
            value = self.guard.check(total, "G", step)
            if value is None:
                self.opt_G.zero_grad(set_to_none=True)
                return None
            self._apply(self.G, self.opt_G, self.scaler_G)
            bdist.broadcast_buffers(self.G)
            bdist.broadcast_buffers(self.D)  # D's BatchNorm statistics also moved in G's forward
            return value
        finally:
            self.D.requires_grad_(True)

    def train_step(self, step: int, data: Iterator[dict[str, Any]]) -> dict[str, float]:
        autocast = self.accelerator.autocast
        factor = lr_factor(step, self.cfg.optim.schedule, self.cfg.trainer.max_steps)
        metrics = self.follow_stage(step)
        lr_g, lr_d = self.stage_lr
        metrics["lr/G"] = set_lr(self.opt_G, self.cfg.optim.g, factor, lr_g)
        metrics["lr/D"] = set_lr(self.opt_D, self.cfg.optim.d, factor, lr_d)
        d_out = []
        for _ in range(self.cfg.loss.d_steps):
            out = self._d_step(step, data, autocast)
            if out is not None:
                d_out.append(out)
                metrics["grad_norm/D"] = float(_grad_norm(self.D))
        g_loss = self._g_step(step, autocast)
        if g_loss is not None:
            metrics["loss/G"] = g_loss
            metrics["grad_norm/G"] = float(_grad_norm(self.G))
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
            metrics["D/real_logit"], metrics["D/fake_logit"] = float(scores[0]), float(scores[1])
            if self.loss.gradient_penalty:
                metrics["loss/gp"] = float(scores[2])
        metrics["train/nonfinite_skips"] = float(self.guard.total)
        if self.scaler_G.is_enabled():
            metrics["amp/scale_G"], metrics["amp/scale_D"] = (
                self.scaler_G.get_scale(),
                self.scaler_D.get_scale(),
            )
        return metrics

    # -- sampling ---------------------------------------------------------------------------------
    def _eval_G(self) -> nn.Module:
        return self.ema.model if self.ema is not None else self.G

    @torch.no_grad()
    def _generate(self, G: nn.Module, z: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        was_training = G.training
        G.eval()
        try:
            return G(z.to(self.device), None if y is None else y.to(self.device)).float().clamp(-1, 1).cpu()
        finally:
            G.train(was_training)

    def sample_grid(self, seed: int, rows: int) -> tuple[torch.Tensor, int]:
        """Fixed z; when conditional, one row per class (up to 10 rows), the same z across rows."""
        g = torch.Generator().manual_seed(seed)
        if self.num_classes:
            nrows = min(self.num_classes, max(rows, 10))
            z = torch.randn(rows, self.z_dim, generator=g).repeat(nrows, 1)
            y = torch.arange(nrows).repeat_interleave(rows)
        else:
            z, y = torch.randn(rows * rows, self.z_dim, generator=g), None
        return self._generate(self._eval_G(), z, y), rows

    def sampler(
        self, truncation: float = 0.0, classes: list[int] | None = None
    ) -> Callable[[int, torch.Generator], torch.Tensor]:
        """Samples from the EMA generator; ``truncation > 0`` resamples |z| > t (the truncation trick,
        Brock et al. 2019 sec. 3.1); ``classes`` restricts the labels drawn."""
        G = self._eval_G()

        def sample(n: int, generator: torch.Generator) -> torch.Tensor:
            dev = (
                generator.device
            )  # draw on the generator's device, so FID noise is the same wherever it runs
            z = truncated_normal(n, self.z_dim, truncation, generator, dev)
            y = None
            if self.num_classes:
                pool = torch.tensor(classes if classes else range(self.num_classes), device=dev)
                y = pool[torch.randint(0, len(pool), (n,), generator=generator, device=dev)]
            return self._generate(G, z, y)

        return sample


def truncated_normal(
    n: int, dim: int, truncation: float, generator: torch.Generator, device: torch.device
) -> torch.Tensor:
    """N(0, I) samples; with ``truncation > 0`` every entry with |z| > truncation is redrawn."""
    z = torch.randn(n, dim, generator=generator, device=device)
    if truncation > 0:
        for _ in range(1000):
            bad = z.abs() > truncation
            if not bad.any():
                break
            z[bad] = torch.randn(int(bad.sum()), generator=generator, device=device)
    return z


@register_task("gan")
def _build(cfg: DictConfig, manifest: DatasetManifest, device: torch.device, accelerator: Any) -> GANTask:
    return GANTask(cfg, manifest, device, accelerator)
