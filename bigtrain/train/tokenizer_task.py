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

from collections.abc import Callable, Iterator, Mapping
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from torch import nn

from bigtrain import distributed as bdist
from bigtrain.data.manifest import DatasetManifest
from bigtrain.data.prepare import iter_images
from bigtrain.models.patchgan import PatchDiscriminator
from bigtrain.models.vqgan import VQModel, build_vqgan
from bigtrain.train.optim import adam, apply_hparams, lr_factor, set_lr
from bigtrain.train.stages import StagedTask, build_driver
from bigtrain.train.tasks import NonFiniteGuard, register_task

EVAL_IMAGES_FOR_PSNR = 256


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


class TokenizerTask(StagedTask):
    inference_components = ("vq",)

    def __init__(self, cfg: DictConfig, manifest: DatasetManifest, device: torch.device, accelerator: Any):
        self.cfg, self.manifest, self.device, self.accelerator = cfg, manifest, device, accelerator
        arch = OmegaConf.to_container(cfg.model.arch, resolve=True) if cfg.model.get("arch") else {}
        where = torch.device("meta") if device.type == "meta" else torch.device("cpu")
        with where:
            self.vq: VQModel = build_vqgan(resolution=manifest.resolution, channels=manifest.channels, **arch)  # type: ignore[arg-type]
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
        self.opt_G = adam(self.vq.parameters(), cfg.optim.g)
        self.opt_D = None
        if self.D is not None:
            self.D.to(device)
            bdist.broadcast_module(self.D)
            self.opt_D = adam(self.D.parameters(), cfg.optim.d)
        self.lpips: nn.Module | None = None
        if v.perceptual_weight > 0 and device.type != "meta":
            from bigtrain.losses.perceptual import LPIPS

            self.lpips = LPIPS().to(device)
        self.batch_size = cfg.data.batch_size
        self.accumulation = max(1, int(cfg.trainer.get("accumulation", 1)))
        self.guard = NonFiniteGuard(cfg.trainer)
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

    def stage_optimizers(self) -> list[Any]:  # resolution stages: no growing, fully convolutional
        return [o for o in (self.opt_G, self.opt_D) if o is not None]

    # -- checkpointable state ---------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        out: dict[str, Any] = {"vq": self.vq.state_dict(), "opt_vq": self.opt_G.state_dict()}
        if self.D is not None and self.opt_D is not None:
            out["D"], out["opt_D"] = self.D.state_dict(), self.opt_D.state_dict()
        out["task"] = self.guard.state_dict()
        self.save_stages(out["task"])
        return out

    def load_state(self, states: Mapping[str, Any]) -> None:
        self.vq.load_state_dict(states["vq"])
        self.opt_G.load_state_dict(states["opt_vq"])
        apply_hparams(self.opt_G, self.cfg.optim.g)
        if self.D is not None and self.opt_D is not None:
            self.D.load_state_dict(states["D"])
            self.opt_D.load_state_dict(states["opt_D"])
            apply_hparams(self.opt_D, self.cfg.optim.d)
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

    def train_step(self, step: int, data: Iterator[dict[str, Any]]) -> dict[str, float]:
        v, autocast = self.cfg.vq, self.accelerator.autocast
        gan_on = self.D is not None and step >= v.disc_start
        factor = lr_factor(step, self.cfg.optim.schedule, self.cfg.trainer.max_steps)
        stage_metrics = self.follow_stage(step)
        lr = set_lr(self.opt_G, self.cfg.optim.g, factor, self.stage_lr[0])
        if self.opt_D is not None:
            set_lr(self.opt_D, self.cfg.optim.d, factor, self.stage_lr[1])
        self.opt_G.zero_grad(set_to_none=True)
        sums: dict[str, torch.Tensor] = {}
        batches = []
        for _ in range(self.accumulation):
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
            (loss / self.accumulation).backward()
            for k, t in {"total": loss, **parts}.items():
                sums[k] = (
                    sums.get(k, torch.zeros((), device=self.device)) + t.detach().float() / self.accumulation
                )
        metrics: dict[str, float] = {"lr/vq": lr, **stage_metrics}
        value = self.guard.check(sums["total"], "tokenizer", step)
        if value is None:
            self.opt_G.zero_grad(set_to_none=True)
        else:
            bdist.all_reduce_grads(self.vq.parameters())
            self.opt_G.step()
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
        assert self.D is not None and self.opt_D is not None
        self.opt_D.zero_grad(set_to_none=True)
        total = torch.zeros((), device=self.device)
        for x, x_rec in batches:
            with self.accelerator.autocast():
                real, fake = self.D(x).float(), self.D(x_rec).float()
            loss = 0.5 * (F.relu(1.0 - real).mean() + F.relu(1.0 + fake).mean())  # hinge, as the release
            (loss / len(batches)).backward()
            total = total + loss.detach() / len(batches)
        value = self.guard.check(total, "D", step)
        if value is None:
            self.opt_D.zero_grad(set_to_none=True)
            return None
        bdist.all_reduce_grads(self.D.parameters())
        self.opt_D.step()
        bdist.broadcast_buffers(self.D)
        return value

    # -- evaluation ---------------------------------------------------------------------------------
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
        for batch in iter_images(self.manifest, split, self.cfg.eval.batch_size, n, resolution=res):
            yield _to_unit(batch, self.device)

    def sample_grid(self, seed: int, rows: int) -> tuple[torch.Tensor, int]:  # noqa: ARG002 - fixed images
        """Pairs of rows: ``rows`` evaluation images, then their reconstructions below them."""
        n = rows * max(1, rows // 2)
        x = torch.cat(list(self._eval_images(n)))[:n]
        rec = self.reconstruct(x).cpu()
        pairs = [t for i in range(0, len(x), rows) for t in (x[i : i + rows].cpu(), rec[i : i + rows])]
        return torch.cat(pairs), rows

    def sampler(self) -> Callable[[int, torch.Generator], torch.Tensor]:
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

    @torch.no_grad()
    def eval_metrics(self) -> dict[str, float]:
        """PSNR and SSIM on up to 256 evaluation images, codebook usage/perplexity since the last call."""
        from skimage.metrics import structural_similarity

        psnrs, ssims = [], []
        for x in self._eval_images(EVAL_IMAGES_FOR_PSNR):
            rec = self.reconstruct(x)
            a = ((x + 1) * 127.5).round().clamp(0, 255).cpu().numpy().astype(np.uint8)
            b = ((rec + 1) * 127.5).round().clamp(0, 255).cpu().numpy().astype(np.uint8)
            for u, w in zip(a, b, strict=True):
                mse = np.mean((u.astype(np.float64) - w.astype(np.float64)) ** 2)
                psnrs.append(100.0 if mse == 0 else 10 * np.log10(255.0**2 / mse))
                ssims.append(structural_similarity(u, w, channel_axis=0, data_range=255))
        usage = self.vq.quantize.usage(reset=True)
        return {
            "eval/psnr": float(np.mean(psnrs)),
            "eval/ssim": float(np.mean(ssims)),
            "vq/codebook_usage": usage["usage"],
            "vq/codebook_perplexity": usage["perplexity"],
        }


@register_task("tokenizer")
def _build(
    cfg: DictConfig, manifest: DatasetManifest, device: torch.device, accelerator: Any
) -> TokenizerTask:
    return TokenizerTask(cfg, manifest, device, accelerator)
