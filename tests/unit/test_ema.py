"""EMA of the generator: start step, warm-up ramp, buffers, state round-trip."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from bigtrain.train.ema import EMA


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 3), nn.BatchNorm1d(3))


def test_follows_weights_before_start_then_averages() -> None:
    net = _net()
    ema = EMA(net, decay=0.9, start_step=5, warmup=False)
    with torch.no_grad():
        net[0].weight.fill_(1.0)
    ema.update(net, step=3)
    assert torch.equal(ema.model[0].weight, net[0].weight)
    with torch.no_grad():
        net[0].weight.fill_(2.0)
    ema.update(net, step=5)
    assert torch.allclose(ema.model[0].weight, torch.full((3, 3), 0.9 * 1.0 + 0.1 * 2.0))


def test_warmup_ramp_and_cap() -> None:
    ema = EMA(_net(), decay=0.999, start_step=10, warmup=True)
    assert ema.current_decay(9) == 0.0
    assert ema.current_decay(10) == pytest.approx(0.1)  # (1 + 0) / (10 + 0)
    assert ema.current_decay(20) == pytest.approx(11 / 20)
    assert ema.current_decay(10**7) == 0.999


def test_buffers_are_copied_and_state_round_trips() -> None:
    net = _net()
    ema = EMA(net, decay=0.5)
    net.train()(torch.randn(8, 3))  # moves BatchNorm running stats
    ema.update(net, step=100)
    assert torch.equal(ema.model[1].running_mean, net[1].running_mean)
    other = EMA(_net(), decay=0.5)
    other.load_state_dict(ema.state_dict())
    assert all(
        torch.equal(a, b)
        for a, b in zip(other.model.state_dict().values(), ema.model.state_dict().values(), strict=True)
    )
    assert not any(p.requires_grad for p in ema.model.parameters())


def _reference_ema(target: dict[str, torch.Tensor], source: dict[str, torch.Tensor], decay: float) -> None:
    """BigGAN-PyTorch's ``utils.ema.update``: every state-dict entry, buffers included, moves to
    ``target * decay + source * (1 - decay)`` (integer counters aside: bigtrain copies those)."""
    for key, value in source.items():
        if value.is_floating_point():
            target[key].copy_(target[key] * decay + value * (1 - decay))
        else:
            target[key].copy_(value)


def test_average_buffers_is_the_references_whole_state_dict_ema() -> None:
    net = _net()
    ema = EMA(net, decay=0.9, warmup=False, buffers="average")
    reference = {k: v.clone() for k, v in net.state_dict().items()}
    for step in range(1, 6):
        with torch.no_grad():
            net[0].weight.add_(0.1 * step)
        net.train()(torch.randn(8, 3) * step)  # moves the BatchNorm statistics
        ema.update(net, step)
        _reference_ema(reference, net.state_dict(), 0.9)
    for key, value in ema.model.state_dict().items():
        torch.testing.assert_close(value, reference[key], msg=key)
    assert not torch.allclose(ema.model[1].running_mean, net[1].running_mean)  # averaged, not copied
    with pytest.raises(ValueError, match="ema.buffers must be one of copy, average"):
        EMA(net, buffers="mean")


@pytest.mark.parametrize("buffers", ["copy", "average"])
def test_foreach_update_equals_a_per_tensor_update_bit_for_bit(buffers: str) -> None:
    """The foreach kernels are a speed lever only: every element is what ``lerp_``/``copy_`` on each
    tensor in turn gives, BatchNorm's integer counter is copied, and the ramp's decays apply."""
    torch.manual_seed(1)
    net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.Conv2d(8, 4, 1), nn.BatchNorm2d(4))
    ema = EMA(net, decay=0.999, start_step=2, warmup=True, buffers=buffers)
    reference = {k: v.clone() for k, v in ema.model.state_dict().items()}
    for step in range(1, 6):
        net(torch.randn(4, 3, 8, 8)).sum().backward()
        with torch.no_grad():
            for p in net.parameters():
                p.add_(torch.randn_like(p) * 0.1)
        ema.update(net, step)
        d = ema.current_decay(step)
        live = dict(net.state_dict())
        params = {n for n, _ in net.named_parameters()}
        for k, v in reference.items():
            averaged = d > 0.0 and v.is_floating_point() and (k in params or buffers == "average")
            if averaged:
                v.lerp_(live[k], 1.0 - d)
            else:
                v.copy_(live[k])
        for k, v in ema.model.state_dict().items():
            assert torch.equal(v, reference[k]), (step, k)
