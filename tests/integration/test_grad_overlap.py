"""Gradient averaging that overlaps backward (``bigtrain.distributed.overlap``, issue 19) over gloo on
the CPU: two ranks with different data get, bit for bit, the gradients of the flat all-reduce after
backward (``all_reduce_grads``), through several buckets, two forwards per backward, unused and
frozen parameters, micro-batch accumulation, re-entrant checkpointing, and a whole optimizer step.

One pair of processes runs every case (starting them costs more than the cases); each case saves
its problems and gradients, and a test per case reads them."""

from __future__ import annotations

import copy
import os
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.utils.checkpoint as activation_checkpoint
from omegaconf import OmegaConf
from torch import nn

from bigtrain.distributed import all_reduce_grads
from bigtrain.distributed.overlap import GradBuckets
from bigtrain.distributed.sync_bn import convert_cross_replica_bn
from tests.conftest import free_port

TINY_MB = 1e-4  # ~100-byte buckets: every network below spans several, some of several parameters


def _conv_net() -> nn.Sequential:
    torch.manual_seed(0)  # the same initial weights on both ranks
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 16, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, 8),
        nn.ReLU(),
        nn.Linear(8, 1),
    )


class _WithUnused(nn.Module):
    """A network with parameters its forward never reaches: one registered last (so in the first
    bucket, which then waits for ``finish``) and one in the middle."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Sequential(nn.Linear(6, 32), nn.Tanh())
        self.middle_unused = nn.Linear(32, 32)
        self.head = nn.Linear(32, 1)
        self.tail_unused = nn.Linear(32, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


def _grads(net: nn.Module) -> dict[str, torch.Tensor | None]:
    return {n: None if p.grad is None else p.grad.clone() for n, p in net.named_parameters()}


def _differences(ref: nn.Module, net: nn.Module) -> list[str]:
    """Parameters whose gradient is not bit-identical (or None on one side only)."""
    out = []
    for (name, a), b in zip(ref.named_parameters(), net.parameters(), strict=True):
        if (a.grad is None) != (b.grad is None):
            out.append(f"{name}: grad None on one side only")
        elif a.grad is not None and not torch.equal(a.grad, b.grad):
            out.append(f"{name}: max diff {(a.grad - b.grad).abs().max().item():.3g}")
    return out


def _both(
    net: nn.Module, backward: Callable[[nn.Module], None], **buckets: Any
) -> tuple[nn.Module, nn.Module, GradBuckets]:
    """The reference (a copy: backward, then ``all_reduce_grads``) and ``net`` with buckets (armed
    before the same backward, then ``finish``)."""
    ref = copy.deepcopy(net)  # hooks are not copied
    backward(ref)
    all_reduce_grads(ref.parameters())
    gb = GradBuckets(net.parameters(), bucket_mb=TINY_MB, first_bucket_mb=TINY_MB, **buckets)
    gb.arm()
    backward(net)
    gb.finish()
    return ref, net, gb


def _case_buckets(rank: int) -> dict[str, Any]:
    """(a) A conv net with cross-replica BatchNorm (collectives inside backward) over many buckets."""
    net = convert_cross_replica_bn(_conv_net())
    x = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(10 + rank))

    def backward(m: nn.Module) -> None:
        m(x).square().mean().backward()

    ref, net, gb = _both(net, backward)
    sizes = [len(b.params) for b in gb.buckets]
    return {"problems": _differences(ref, net), "stats": gb.stats, "buckets": len(sizes), "sizes": sizes}


def _case_two_forwards(rank: int) -> dict[str, Any]:
    """(b) D(real) and D(fake) in one backward, plus a gradient penalty's double backward."""
    torch.manual_seed(0)
    d = nn.Sequential(
        nn.Linear(6, 32), nn.LeakyReLU(0.2), nn.Linear(32, 32), nn.LeakyReLU(0.2), nn.Linear(32, 1)
    )
    g = torch.Generator().manual_seed(20 + rank)
    real, fake = torch.randn(5, 6, generator=g), torch.randn(5, 6, generator=g)

    def backward(m: nn.Module) -> None:
        x_hat = (0.3 * real + 0.7 * fake).requires_grad_(True)
        (grad,) = torch.autograd.grad(m(x_hat).sum(), x_hat, create_graph=True)
        gp = (grad.norm(2, dim=1) - 1).square().mean()
        (torch.relu(1 - m(real)).mean() + torch.relu(1 + m(fake)).mean() + 10 * gp).backward()

    ref, net, gb = _both(d, backward)
    return {"problems": _differences(ref, net), "stats": gb.stats, "buckets": len(gb.buckets)}


def _case_unused(rank: int) -> dict[str, Any]:
    """(c) Parameters the forward never reaches keep no gradient; the others are exact."""
    x = torch.randn(5, 6, generator=torch.Generator().manual_seed(30 + rank))

    def backward(m: nn.Module) -> None:
        m(x).square().mean().backward()

    ref, net, gb = _both(_WithUnused(), backward)
    unused = [n for n, p in net.named_parameters() if "unused" in n and p.grad is not None]
    return {"problems": _differences(ref, net) + [f"{n} got a gradient" for n in unused], "stats": gb.stats}


def _case_accumulation(rank: int) -> dict[str, Any]:
    """(d) Two micro-batches, armed before the second only: the first backward sends nothing."""
    net = _conv_net()
    g = torch.Generator().manual_seed(40 + rank)
    xs = [torch.randn(4, 3, 8, 8, generator=g) for _ in range(2)]
    ref = copy.deepcopy(net)
    for x in xs:
        (ref(x).square().mean() / 2).backward()
    all_reduce_grads(ref.parameters())
    gb = GradBuckets(net.parameters(), bucket_mb=TINY_MB, first_bucket_mb=TINY_MB)
    (net(xs[0]).square().mean() / 2).backward()
    sent_unarmed = dict(gb.stats)
    gb.arm()
    (net(xs[1]).square().mean() / 2).backward()
    gb.finish()
    return {"problems": _differences(ref, net), "stats": gb.stats, "unarmed": sent_unarmed}


def _case_frozen(rank: int) -> dict[str, Any]:
    """(e) A submodule frozen during the backward (a generator's step through its discriminator)
    is left alone, stale gradient included, as ``all_reduce_grads`` leaves it; unfrozen the next
    step it is averaged again; a parameter frozen when the buckets were built is hooked once it
    requires a gradient. Nothing hangs."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, 1))
    net[4].bias.requires_grad_(False)  # frozen when the buckets are built
    g = torch.Generator().manual_seed(50 + rank)
    x = torch.randn(5, 6, generator=g)
    problems: list[str] = []
    ref = copy.deepcopy(net)
    gb = GradBuckets(net.parameters(), bucket_mb=TINY_MB, first_bucket_mb=TINY_MB)
    for m in (ref, net):
        m(x).sum().backward()  # a first backward gives the first layer a (then stale) gradient
        m[0].requires_grad_(False)
        for p in m.parameters():
            if p.requires_grad:
                p.grad = None
    stale = net[0].weight.grad.clone()

    def backward(m: nn.Module) -> None:
        m(x).square().mean().backward()

    def both_ways() -> list[str]:
        """One backward averaged the flat way on ``ref`` and through the buckets on ``net``."""
        backward(ref)
        all_reduce_grads(ref.parameters())
        gb.arm()
        backward(net)
        gb.finish()
        return _differences(ref, net)

    problems += both_ways()
    if not torch.equal(net[0].weight.grad, stale):
        problems.append("the frozen layer's stale gradient changed")
    frozen_step = dict(gb.stats)
    for m in (ref, net):  # the next step: everything trainable again
        m.requires_grad_(True)
        m.zero_grad(set_to_none=True)
    problems += both_ways()
    return {"problems": problems, "stats": gb.stats, "frozen_step": frozen_step, "grads": _grads(net)}


def _case_toggled(rank: int) -> dict[str, Any]:
    """``requires_grad`` changed between the backward and ``finish`` (one parameter frozen, another
    unfrozen, in a bucket already sent): ``finish`` averages what ``all_reduce_grads`` would then."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, 1))
    net[4].bias.requires_grad_(False)
    x = torch.randn(5, 6, generator=torch.Generator().manual_seed(55 + rank))

    def toggle(m: nn.Module) -> None:
        m[4].weight.requires_grad_(False)
        m[4].bias.requires_grad_(True)

    ref = copy.deepcopy(net)
    ref(x).square().mean().backward()
    toggle(ref)
    all_reduce_grads(ref.parameters())
    gb = GradBuckets(net.parameters(), bucket_mb=TINY_MB, first_bucket_mb=TINY_MB)
    gb.arm()
    net(x).square().mean().backward()
    sent = gb.stats["in_backward"]
    toggle(net)
    gb.finish()
    return {"problems": _differences(ref, net), "stats": gb.stats, "sent_in_backward": sent}


def _case_stale(rank: int) -> dict[str, Any]:
    """Re-entrant checkpointing of two segments through one network: its hooks fire twice in one
    backward, every bucket is sent after the first firing and re-reduced by ``finish``."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 32), nn.Tanh(), nn.Linear(32, 1))
    g = torch.Generator().manual_seed(60 + rank)
    a, b = torch.randn(5, 6, generator=g), torch.randn(5, 6, generator=g)

    def backward(m: nn.Module) -> None:
        ya = activation_checkpoint.checkpoint(m, a.clone().requires_grad_(True), use_reentrant=True)
        yb = activation_checkpoint.checkpoint(m, b.clone().requires_grad_(True), use_reentrant=True)
        (ya.square().mean() + yb.mean()).backward()

    ref, net, gb = _both(net, backward)
    return {"problems": _differences(ref, net), "stats": gb.stats, "buckets": len(gb.buckets)}


def _case_optimizer_step(rank: int) -> dict[str, Any]:
    """(f) A small GAN trained 3 steps by ``OptimizerStep`` with accumulation 2 (D's step, then G's
    through the frozen D), overlap on and off: identical weights."""
    from bigtrain.config.schema import TrainerConfig
    from bigtrain.train.step import NonFiniteGuard, OptimizerStep, accumulate, apply_frozen

    def train(overlap: bool) -> tuple[dict[str, torch.Tensor], dict[str, int]]:
        torch.manual_seed(0)
        G = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 6))
        D = nn.Sequential(nn.Linear(6, 16), nn.LeakyReLU(0.2), nn.Linear(16, 1))
        guard = NonFiniteGuard(OmegaConf.structured(TrainerConfig))
        opts: dict[str, Any] = {"accumulation": 2, "overlap": overlap}
        if overlap:
            opts["bucket_mb"] = TINY_MB
        d_up = OptimizerStep("D", D.parameters(), torch.optim.Adam(D.parameters(), 1e-2), guard, **opts)
        g_up = OptimizerStep("G", G.parameters(), torch.optim.Adam(G.parameters(), 1e-2), guard, **opts)
        gen = torch.Generator().manual_seed(70 + rank)
        for step in range(1, 4):

            def d_micro() -> torch.Tensor:
                real = torch.randn(5, 6, generator=gen)
                fake = G(torch.randn(5, 4, generator=gen)).detach()
                return torch.relu(1 - D(real)).mean() + torch.relu(1 + D(fake)).mean()

            def g_micro() -> torch.Tensor:
                return -D(G(torch.randn(5, 4, generator=gen))).mean()

            d_up.apply(accumulate(d_up, d_micro), step)
            apply_frozen(g_up, g_micro, step, D)
        weights = {f"G.{k}": v.clone() for k, v in G.state_dict().items()}
        weights |= {f"D.{k}": v.clone() for k, v in D.state_dict().items()}
        stats = {}
        for name, up in (("D", d_up), ("G", g_up)):
            buckets = getattr(up, "_buckets", None)
            stats[name] = dict(buckets.stats) if buckets is not None else {}
        return weights, stats

    plain, _ = train(False)
    overlapped, stats = train(True)
    problems = [k for k in plain if not torch.equal(plain[k], overlapped[k])]
    return {"problems": problems, "stats": stats, "grads": overlapped}


CASES: dict[str, Callable[[int], dict[str, Any]]] = {
    "buckets": _case_buckets,
    "two_forwards": _case_two_forwards,
    "unused": _case_unused,
    "accumulation": _case_accumulation,
    "frozen": _case_frozen,
    "toggled": _case_toggled,
    "stale": _case_stale,
    "optimizer_step": _case_optimizer_step,
}


def _worker(rank: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    # a case that hangs (collectives out of order) fails after a minute instead of the test's timeout
    dist.init_process_group("gloo", rank=rank, world_size=2, timeout=timedelta(seconds=60))
    try:
        results = {name: case(rank) for name, case in CASES.items()}
        torch.save(results, f"{out}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    out = tmp_path_factory.mktemp("overlap")
    mp.spawn(_worker, args=(free_port(), str(out)), nprocs=2, join=True)
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(2)]


def _ok(results: list[dict[str, Any]], case: str) -> dict[str, Any]:
    for r in results:
        assert r[case]["problems"] == []
    return results[0][case]


def _ranks_agree(results: list[dict[str, Any]], case: str) -> None:
    a, b = (r[case]["grads"] for r in results)
    assert a.keys() == b.keys()
    for k in a:
        assert (a[k] is None and b[k] is None) or torch.equal(a[k], b[k]), k


def test_several_buckets_match_the_flat_all_reduce(results: list[dict[str, Any]]) -> None:
    r = _ok(results, "buckets")
    assert r["buckets"] >= 3 and max(r["sizes"]) > 1
    # all sent while backward ran: the cross-replica BN's own all-reduces did not get in the way
    assert r["stats"] == {"in_backward": r["buckets"], "in_finish": 0, "rereduced": 0}


def test_two_forwards_and_a_double_backward_send_each_bucket_once(results: list[dict[str, Any]]) -> None:
    r = _ok(results, "two_forwards")
    assert r["stats"] == {"in_backward": r["buckets"], "in_finish": 0, "rereduced": 0}


def test_unused_parameters_keep_no_gradient(results: list[dict[str, Any]]) -> None:
    r = _ok(results, "unused")
    # the first bucket waits for a parameter that never gets a gradient, and the buckets after it
    # wait for the first (index order): finish sends them all
    assert r["stats"]["in_backward"] == 0 and r["stats"]["in_finish"] >= 4


def test_accumulation_sends_only_in_the_armed_backward(results: list[dict[str, Any]]) -> None:
    r = _ok(results, "accumulation")
    assert r["unarmed"] == {"in_backward": 0, "in_finish": 0, "rereduced": 0}
    assert r["stats"]["in_backward"] > 0 and r["stats"]["in_finish"] == 0


def test_frozen_parameters_are_left_alone(results: list[dict[str, Any]]) -> None:
    r = _ok(results, "frozen")
    assert r["frozen_step"]["in_backward"] > 0
    _ranks_agree(results, "frozen")


def test_requires_grad_changed_after_sending_is_re_reduced(results: list[dict[str, Any]]) -> None:
    r = _ok(results, "toggled")
    assert r["sent_in_backward"] >= 1 and r["stats"]["rereduced"] == 1  # the first bucket only


def test_a_second_accumulation_after_sending_is_re_reduced(results: list[dict[str, Any]]) -> None:
    r = _ok(results, "stale")
    assert r["stats"]["rereduced"] == r["buckets"]


def test_optimizer_step_with_overlap_trains_the_same_weights(results: list[dict[str, Any]]) -> None:
    r = _ok(results, "optimizer_step")
    for net in ("D", "G"):
        # the overlap did happen, in the last micro-batch's backward only (armed earlier, buckets
        # sent from a partial sum would have been re-reduced)
        assert r["stats"][net]["in_backward"] > 0 and r["stats"][net]["rereduced"] == 0
    _ranks_agree(results, "optimizer_step")


def test_alone_every_method_is_a_no_op() -> None:
    net = _conv_net()
    gb = GradBuckets(net.parameters(), bucket_mb=TINY_MB, first_bucket_mb=TINY_MB)
    gb.arm()
    net(torch.randn(2, 3, 8, 8)).sum().backward()
    before = _grads(net)
    gb.finish()
    assert all(torch.equal(before[n], p.grad) for n, p in net.named_parameters())
    assert gb.stats == {"in_backward": 0, "in_finish": 0, "rereduced": 0}
    gb.close()


def test_buckets_run_backwards_from_a_small_first_one() -> None:
    net = nn.Sequential(nn.Linear(512, 512), nn.Linear(512, 512), nn.Linear(512, 4))  # 1 MiB weights
    gb = GradBuckets(net.parameters(), bucket_mb=1.5, first_bucket_mb=0.5)
    layout = [[id(p) for p in b.params] for b in gb.buckets]
    ids = [id(p) for p in net.parameters()]
    assert [i for bucket in layout for i in bucket] == ids[::-1]  # the last layers' first
    # the head, the bias and the 1 MiB weight before it pass the first bucket's 0.5 MiB; the rest
    # (1 MiB) fits in one 1.5 MiB bucket
    assert [len(b) for b in layout] == [4, 2]
    gb.close()


def test_optimizer_step_with_overlap_alone_is_the_plain_step() -> None:
    from bigtrain.config.schema import TrainerConfig
    from bigtrain.train.step import NonFiniteGuard, OptimizerStep, accumulate

    def train(overlap: bool) -> list[torch.Tensor]:
        net = _conv_net()
        guard = NonFiniteGuard(OmegaConf.structured(TrainerConfig))
        opt = torch.optim.Adam(net.parameters(), 1e-2)
        up = OptimizerStep("N", net.parameters(), opt, guard, accumulation=2, overlap=overlap)
        gen = torch.Generator().manual_seed(0)
        for step in range(1, 3):
            up.apply(
                accumulate(up, lambda: net(torch.randn(2, 3, 8, 8, generator=gen)).square().mean()), step
            )
        return [p.detach().clone() for p in net.parameters()]

    assert all(torch.equal(a, b) for a, b in zip(train(False), train(True), strict=True))
