"""Cross-replica BatchNorm over gloo on the CPU: two ranks with different halves of a batch get the
output, running statistics and gradients of ordinary BatchNorm on the whole batch."""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from bigtrain.distributed.sync_bn import CrossReplicaBatchNorm, convert_cross_replica_bn
from tests.conftest import free_port


def _worker(rank: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        torch.manual_seed(0)
        x = torch.randn(8, 3, 5, 5) * 3 + 1  # the global batch, same on both ranks
        net = convert_cross_replica_bn(nn.Sequential(nn.BatchNorm2d(3)))
        assert isinstance(net[0], CrossReplicaBatchNorm)
        with torch.no_grad():
            net[0].weight.copy_(torch.tensor([1.0, 2.0, 0.5]))
        mine = x[rank * 4 : (rank + 1) * 4].clone().requires_grad_(True)
        y = net(mine)
        (y * torch.arange(1.0, 4.0).view(1, 3, 1, 1)).pow(2).sum().backward()
        torch.save(
            {
                "y": y.detach(),
                "grad_x": mine.grad,
                "grad_w": net[0].weight.grad,
                "running_mean": net[0].running_mean,
                "running_var": net[0].running_var,
            },
            f"{out}/rank{rank}.pt",
        )
    finally:
        dist.destroy_process_group()


def test_two_ranks_match_bn_on_the_global_batch(tmp_path: Path) -> None:
    mp.spawn(_worker, args=(free_port(), str(tmp_path)), nprocs=2, join=True)
    torch.manual_seed(0)
    x = (torch.randn(8, 3, 5, 5) * 3 + 1).requires_grad_(True)
    ref = nn.BatchNorm2d(3)
    with torch.no_grad():
        ref.weight.copy_(torch.tensor([1.0, 2.0, 0.5]))
    y = ref(x)
    (y * torch.arange(1.0, 4.0).view(1, 3, 1, 1)).pow(2).sum().backward()
    r = [torch.load(tmp_path / f"rank{i}.pt") for i in range(2)]
    torch.testing.assert_close(torch.cat([r[0]["y"], r[1]["y"]]), y.detach(), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(torch.cat([r[0]["grad_x"], r[1]["grad_x"]]), x.grad, rtol=1e-4, atol=1e-5)
    for k, v in (("running_mean", ref.running_mean), ("running_var", ref.running_var)):
        torch.testing.assert_close(r[0][k], v, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(r[1][k], v, rtol=1e-5, atol=1e-6)
    # each rank holds the gradient of its own half's loss; their sum is the global gradient
    torch.testing.assert_close(r[0]["grad_w"] + r[1]["grad_w"], ref.weight.grad, rtol=1e-4, atol=1e-5)
