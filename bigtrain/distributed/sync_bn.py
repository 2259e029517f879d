"""Cross-replica (synchronised) BatchNorm that runs on any device and backend, CPU/gloo included.

BigGAN computes BatchNorm statistics over the whole global batch, not each device's slice (Brock
et al. 2019, appendix C): with a per-device batch of 32 the slice statistics are noisy. PyTorch's
``nn.SyncBatchNorm`` only runs on GPU-like devices, so bigtrain carries its own: per-channel sums
of x and x² and the element count go through one differentiable all-reduce per layer
(an autograd function whose backward all-reduces the gradients), the
same statistics every rank then uses. Models are written for one device with plain BatchNorm;
``convert_cross_replica_bn`` swaps the layers from outside, keeping parameters and buffers (and
so the state_dict keys) as they were.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm


class _SumOverRanks(torch.autograd.Function):
    """All-reduce (sum) whose backward is again an all-reduce of the incoming gradients: every
    rank's output depends on every rank's input."""

    @staticmethod
    def forward(ctx: object, x: Tensor) -> Tensor:  # noqa: ARG004
        out = x.clone()
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
        return out

    @staticmethod
    def backward(ctx: object, grad: Tensor) -> Tensor:  # noqa: ARG004
        out = grad.contiguous().clone()
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
        return out


def differentiable_all_reduce(x: Tensor) -> Tensor:
    return _SumOverRanks.apply(x)


class CrossReplicaBatchNorm(_BatchNorm):
    """BatchNorm over the global batch of all ranks in training; ordinary BN in eval, alone, or
    with ``local`` set (a copy that one rank runs in training mode, e.g. to sample with batch
    statistics while the other ranks wait)."""

    local: bool = False

    def _check_input_dim(self, input: Tensor) -> None:  # noqa: A002 - torch's signature
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {input.dim()}D)")

    def forward(self, x: Tensor) -> Tensor:
        if not (
            self.training
            and not self.local
            and dist.is_available()
            and dist.is_initialized()
            and dist.get_world_size() > 1
        ):
            return super().forward(x)
        c = x.shape[1]
        dims = [d for d in range(x.dim()) if d != 1]
        xf = x.float()
        count = torch.full((1,), xf.numel() / c, device=x.device, dtype=torch.float32)
        stats = torch.cat([xf.sum(dims), (xf * xf).sum(dims), count])
        stats = differentiable_all_reduce(stats)
        n = stats[-1]
        mean = stats[:c] / n
        var = (stats[c : 2 * c] / n - mean * mean).clamp_min(0.0)
        if self.track_running_stats and self.running_mean is not None and self.running_var is not None:
            with torch.no_grad():
                if self.num_batches_tracked is not None:
                    self.num_batches_tracked.add_(1)
                m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                self.running_mean.lerp_(mean.detach().to(self.running_mean.dtype), m)
                unbiased = var.detach() * n / (n - 1).clamp_min(1.0)
                self.running_var.lerp_(unbiased.to(self.running_var.dtype), m)
        shape = [1, c] + [1] * (x.dim() - 2)
        out = (xf - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        if self.affine:
            out = out * self.weight.view(shape) + self.bias.view(shape)
        return out.to(x.dtype)


def set_local_bn(module: nn.Module, local: bool = True) -> nn.Module:
    """Make every cross-replica BN layer of ``module`` use this rank's batch only (or again the
    global batch); returns the module."""
    for m in module.modules():
        if isinstance(m, CrossReplicaBatchNorm):
            m.local = local
    return module


def convert_cross_replica_bn(module: nn.Module) -> nn.Module:
    """Replace every BatchNorm layer in ``module`` by ``CrossReplicaBatchNorm`` (in place where
    possible; returns the module), sharing the original parameters and buffers."""
    if isinstance(module, _BatchNorm) and not isinstance(module, CrossReplicaBatchNorm):
        new = CrossReplicaBatchNorm(
            module.num_features, module.eps, module.momentum, module.affine, module.track_running_stats
        )
        if module.affine:
            new.weight, new.bias = module.weight, module.bias
        new.running_mean, new.running_var = module.running_mean, module.running_var
        new.num_batches_tracked = module.num_batches_tracked
        new.train(module.training)
        return new
    for name, child in module.named_children():
        module.add_module(name, convert_cross_replica_bn(child))
    return module
