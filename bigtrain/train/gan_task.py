"""The GAN task: ``k`` discriminator steps then one generator step, then the EMA update.

Gradients are averaged over ranks by ``bigtrain.distributed.all_reduce_grads`` (see that module for
why not DDP). Losses are averaged over ranks before the finiteness check, so a NaN on any rank
stops every rank at the same step, before the optimizer applies it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import torch
from omegaconf import DictConfig
from torch import nn

from bigtrain import distributed as bdist
from bigtrain.data.manifest import DatasetManifest
from bigtrain.losses import build_loss, gradient_penalty
from bigtrain.models import build_gan
from bigtrain.train.ema import EMA
from bigtrain.train.tasks import NonFiniteLossError, register_task


def _adam(params: Any, c: DictConfig) -> torch.optim.Adam:
    return torch.optim.Adam(params, lr=c.lr, betas=tuple(c.betas), eps=c.eps, weight_decay=c.weight_decay)


def _apply_hparams(opt: torch.optim.Optimizer, c: DictConfig) -> None:
    """After loading an optimizer's state, the config's hyper-parameters win over the saved ones,
    so a resumed run can lower its learning rate (PyTorch would silently restore the old one)."""
    for group in opt.param_groups:
        group.update(lr=c.lr, betas=tuple(c.betas), eps=c.eps, weight_decay=c.weight_decay)


def _grad_norm(module: nn.Module) -> torch.Tensor:
    norms = [p.grad.detach().norm() for p in module.parameters() if p.grad is not None]
    return torch.linalg.vector_norm(torch.stack(norms)) if norms else torch.zeros(())


class GANTask:
    def __init__(self, cfg: DictConfig, manifest: DatasetManifest, device: torch.device, accelerator: Any):
        self.cfg, self.device, self.accelerator = cfg, device, accelerator
        self.num_classes = manifest.num_classes if cfg.model.conditional else 0
        self.G, self.D = build_gan(
            cfg.model.name,
            resolution=manifest.resolution,
            channels=manifest.channels,
            num_classes=self.num_classes,
            z_dim=cfg.model.z_dim,
            g_width=cfg.model.g_width,
            d_width=cfg.model.d_width,
            d_norm=cfg.model.d_norm,
        )
        self.G.to(device)
        self.D.to(device)
        bdist.broadcast_module(self.G)
        bdist.broadcast_module(self.D)
        self.opt_G = _adam(self.G.parameters(), cfg.optim.g)
        self.opt_D = _adam(self.D.parameters(), cfg.optim.d)
        self.loss = build_loss(str(cfg.loss.name))
        self.ema = EMA(self.G, cfg.ema.decay, cfg.ema.start_step, cfg.ema.warmup) if cfg.ema.enabled else None
        self.z_dim = cfg.model.z_dim
        self.batch_size = cfg.data.batch_size

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
        return out

    def load_state(self, states: Mapping[str, Any]) -> None:
        self.G.load_state_dict(states["G"])
        self.D.load_state_dict(states["D"])
        self.opt_G.load_state_dict(states["opt_G"])
        self.opt_D.load_state_dict(states["opt_D"])
        _apply_hparams(self.opt_G, self.cfg.optim.g)
        _apply_hparams(self.opt_D, self.cfg.optim.d)
        if self.ema is not None:
            self.ema.load_state_dict(states["G_ema"])

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

    def _check(self, loss: torch.Tensor, name: str, step: int) -> float:
        value = float(bdist.all_reduce_mean(loss.detach().float()))
        if not math.isfinite(value):
            raise NonFiniteLossError(name, step)
        return value

    def images_per_step(self) -> int:
        return self.batch_size * self.cfg.loss.d_steps

    def train_step(self, step: int, data: Iterator[dict[str, Any]]) -> dict[str, float]:
        autocast = self.accelerator.autocast
        metrics: dict[str, float] = {}
        d_losses, real_scores, fake_scores, gps = [], [], [], []
        for _ in range(self.cfg.loss.d_steps):
            batch = next(data)
            real = batch["image"].to(self.device, non_blocking=True)
            y_real = batch["label"].to(self.device) if self.num_classes else None
            n = real.shape[0]
            z = torch.randn(n, self.z_dim, device=self.device)
            y_fake = self._labels(n)
            with torch.no_grad(), autocast():
                fake = self.G(z, y_fake)
            with autocast():
                real_logits = self.D(real, y_real)
                fake_logits = self.D(fake.detach(), y_fake)
                loss_d = self.loss.d_loss(real_logits.float(), fake_logits.float())
            if self.loss.gradient_penalty:
                gp = gradient_penalty(
                    self.D,
                    real,
                    fake.detach().to(real.dtype),
                    y_real if y_real is not None else None,
                    self.cfg.loss.gp_weight,
                )
                loss_d = loss_d + gp
                gps.append(gp.detach())
            self.opt_D.zero_grad(set_to_none=True)
            loss_d.backward()
            bdist.all_reduce_grads(self.D.parameters())
            d_losses.append(self._check(loss_d, "D", step))
            metrics["grad_norm/D"] = float(_grad_norm(self.D))
            self.opt_D.step()
            bdist.broadcast_buffers(self.D)
            real_scores.append(real_logits.detach().float().mean())
            fake_scores.append(fake_logits.detach().float().mean())

        # generator step: D's weights are frozen so its parameters collect no gradient
        self.D.requires_grad_(False)
        try:
            n = self.batch_size
            z = torch.randn(n, self.z_dim, device=self.device)
            y_fake = self._labels(n)
            with autocast():
                fake_logits_g = self.D(self.G(z, y_fake), y_fake)
                loss_g = self.loss.g_loss(fake_logits_g.float())
            self.opt_G.zero_grad(set_to_none=True)
            loss_g.backward()
            bdist.all_reduce_grads(self.G.parameters())
            metrics["loss/G"] = self._check(loss_g, "G", step)
            metrics["grad_norm/G"] = float(_grad_norm(self.G))
            self.opt_G.step()
            bdist.broadcast_buffers(self.G)
            bdist.broadcast_buffers(self.D)  # D's BatchNorm statistics also moved in G's forward
        finally:
            self.D.requires_grad_(True)
        if self.ema is not None:
            self.ema.update(self.G, step)
            metrics["ema/decay"] = self.ema.current_decay(step)
        metrics["loss/D"] = sum(d_losses) / len(d_losses)
        scores = bdist.all_reduce_mean(
            torch.stack([torch.stack(real_scores).mean(), torch.stack(fake_scores).mean()])
        )
        metrics["D/real_logit"], metrics["D/fake_logit"] = float(scores[0]), float(scores[1])
        if gps:
            metrics["loss/gp"] = float(bdist.all_reduce_mean(torch.stack(gps).mean()))
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

    def sampler(self) -> Callable[[int, torch.Generator], torch.Tensor]:
        G = self._eval_G()

        def sample(n: int, generator: torch.Generator) -> torch.Tensor:
            dev = (
                generator.device
            )  # draw on the generator's device, so FID noise is the same wherever it runs
            z = torch.randn(n, self.z_dim, generator=generator, device=dev)
            y = (
                torch.randint(0, self.num_classes, (n,), generator=generator, device=dev)
                if self.num_classes
                else None
            )
            return self._generate(G, z, y)

        return sample


@register_task("gan")
def _build(cfg: DictConfig, manifest: DatasetManifest, device: torch.device, accelerator: Any) -> GANTask:
    return GANTask(cfg, manifest, device, accelerator)
