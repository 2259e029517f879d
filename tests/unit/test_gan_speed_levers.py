"""The GPU speed levers of the GAN step (issue 19), checked for what they must not change on the CPU:
``trainer.sync_every`` (losses read every N steps, non-finite checks deferred), Adam's fused kernel
(``optim.<net>.fused``), ``trainer.compile_mode`` and ``trainer.attention_kernel``."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from bigtrain.errors import ConfigError, NonFiniteLossError
from bigtrain.models.biggan_layers import SelfAttention, attention_heads, use_attention_kernel
from bigtrain.train.task import build_task, check_config
from bigtrain.train.tasks.gan import GANTask
from tests.conftest import compose, cpu, declared_manifest
from tests.unit.test_gan_task import _data, _task

TINY = ("model.g_width=8", "model.d_width=8", "model.z_dim=8", "data.batch_size=4")  # test_gan_task's


def _cfg(*overrides: str):  # noqa: ANN202
    return compose("experiment=mnist_dcgan", "data.path=/x", *TINY, *overrides)


def _run(task: GANTask, steps: int) -> list[dict[str, float]]:
    torch.manual_seed(2)  # z and the fakes' classes come from the global generator
    data = _data()
    return [{k: float(v) for k, v in task.train_step(s, data).items()} for s in range(1, steps + 1)]


def test_deferred_reads_change_nothing_but_when_values_reach_the_host() -> None:
    eager, deferred = _task(), _task("trainer.sync_every=4")
    first = deferred.train_step(1, _data())
    assert isinstance(first["loss/D"], torch.Tensor) and isinstance(first["grad_norm/G"], torch.Tensor)
    deferred = _task("trainer.sync_every=4")
    assert _run(eager, 6) == _run(deferred, 6)
    for a, b in zip(eager.G.state_dict().values(), deferred.G.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_a_deferred_nonfinite_loss_is_found_at_its_exact_step() -> None:
    task = _task("trainer.sync_every=10")
    data = _data(bad_at={2})  # the third batch: D's step 3
    task.train_step(1, data)
    task.train_step(2, data)
    task.train_step(3, data)  # not read yet: no exception, the run goes on
    task.train_step(4, data)
    with pytest.raises(NonFiniteLossError, match="non-finite D loss at step 3"):
        task.settle()  # what the loop calls before it logs, evaluates or writes a checkpoint
    task.settle()  # read once: nothing pending any more


def test_a_deferred_check_reads_itself_every_sync_every_steps() -> None:
    task = _task("trainer.sync_every=2")
    data = _data(bad_at={0})
    task.train_step(1, data)
    with pytest.raises(NonFiniteLossError, match="D loss at step 1"):
        task.train_step(2, data)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (("trainer.sync_every=0",), "trainer.sync_every must be >= 1"),
        (("trainer.sync_every=5", "trainer.on_nonfinite=skip"), "needs trainer.on_nonfinite=stop"),
        (("trainer.compile_mode=fastest",), "trainer.compile_mode must be one of default, reduce-overhead"),
        (("trainer.attention_kernel=flash",), "trainer.attention_kernel must be one of matmul, sdpa"),
    ],
)
def test_bad_lever_settings_are_one_line(overrides: tuple[str, ...], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        check_config(_cfg(*overrides), declared_manifest(16))


def test_tasks_that_read_every_step_refuse_sync_every() -> None:
    cfg = compose("experiment=mnist_vae", "data.path=/x", "trainer.sync_every=5")
    with pytest.raises(ConfigError, match="task=likelihood reads its losses every step"):
        check_config(cfg, declared_manifest(28))


def test_fused_adam_is_the_same_update_to_rounding_and_checkpoints_cross_over() -> None:
    plain, fused = _task(), _task("optim.d.fused=true", "optim.g.fused=true")
    assert fused.opt_G.defaults["fused"] and not plain.opt_G.defaults["fused"]
    a, b = _run(plain, 4), _run(fused, 4)
    for x, y in zip(a, b, strict=True):
        assert x.keys() == y.keys() and all(math.isclose(x[k], y[k], rel_tol=1e-4, abs_tol=1e-6) for k in x)
    for p, q in zip(plain.G.parameters(), fused.G.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)
    plain.opt_G.load_state_dict(fused.opt_G.state_dict())  # a fused run's checkpoint resumes unfused


def test_fused_needs_adam() -> None:
    cfg = _cfg("optim.d.name=rmsprop", "optim.d.fused=true")
    with pytest.raises(ConfigError, match="fused=true is Adam's fused kernel; rmsprop has none"):
        build_task(cfg, declared_manifest(16), torch.device("cpu"), cpu("no"))


@pytest.mark.parametrize("channels", [96, 64])  # query width 12 (zero-padded to 16) and 8 (none)
@pytest.mark.parametrize("channels_last", [False, True])
def test_fused_attention_is_the_release_attention_to_rounding(channels: int, channels_last: bool) -> None:
    torch.manual_seed(0)
    attn = SelfAttention(channels)
    with torch.no_grad():
        attn.gamma.fill_(0.7)  # 0 at init would hide the attention path from the output
    start = {k: v.clone() for k, v in attn.state_dict().items()}  # u moves in each training forward
    x = torch.randn(3, channels, 16, 16)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    weights = torch.linspace(-1, 1, x.numel()).view_as(x)
    outs, grads = [], []
    for kernel in ("matmul", "sdpa"):
        attn.load_state_dict(start)
        attn.zero_grad()
        assert use_attention_kernel(attn, kernel) == 1
        xi = x.clone().requires_grad_(True)
        out = attn(xi)
        (out * weights).sum().backward()
        outs.append(out.detach())
        grads.append([xi.grad, *(p.grad.clone() for p in attn.parameters())])
    assert "kernel=sdpa" in repr(attn)
    # the fused GPU kernels refuse rows that are not dense (SDPA would fall back to the math path)
    b, n = 3, 16 * 16
    maps = [torch.randn(b, c, 16, 16) for c in (channels // 8, channels // 8, channels // 2)]
    if channels_last:
        maps = [m.contiguous(memory_format=torch.channels_last) for m in maps]
    theta, phi, g = (
        maps[0].flatten(2),
        F.max_pool2d(maps[1], 2).flatten(2),
        F.max_pool2d(maps[2], 2).flatten(2),
    )
    q, k, v = attention_heads(theta, phi, g)
    assert q.shape == (b, 1, n, 16 if channels == 96 else 8) and k.shape[-1] == q.shape[-1]
    assert v.shape == (b, 1, n // 4, channels // 2)
    assert all(t.stride(-1) == 1 for t in (q, k, v))
    torch.testing.assert_close(outs[1], outs[0], rtol=1e-5, atol=1e-5)
    for a, b in zip(grads[0], grads[1], strict=True):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5)


def test_attention_kernel_reaches_g_d_and_the_ema_copy_and_trains() -> None:
    cfg = compose(
        "experiment=mnist_biggan",
        "data.path=/x",
        "model.g_width=8",
        "model.d_width=8",
        "model.arch.shared_dim=8",
        "data.batch_size=4",
        "trainer.attention_kernel=sdpa",
    )
    torch.manual_seed(0)
    task = GANTask(cfg, declared_manifest(32), torch.device("cpu"), cpu("no"))
    kernels = [
        m.kernel
        for net in (task.G, task.D, task.ema.model)
        for m in net.modules()
        if isinstance(m, SelfAttention)
    ]
    assert kernels == ["sdpa"] * 3
    g = torch.Generator().manual_seed(1)

    def data():  # noqa: ANN202
        while True:
            yield {
                "image": torch.rand(4, 1, 32, 32, generator=g) * 2 - 1,
                "label": torch.randint(0, 10, (4,), generator=g),
            }

    it = data()
    for step in (1, 2):
        assert all(math.isfinite(float(v)) for v in task.train_step(step, it).values())


def test_attention_kernel_needs_a_model_with_attention_and_task_gan() -> None:
    with pytest.raises(ConfigError, match="model 'dcgan' has no self-attention"):
        build_task(
            _cfg("trainer.attention_kernel=sdpa"), declared_manifest(16), torch.device("cpu"), cpu("no")
        )
    cfg = compose("experiment=mnist_vae", "data.path=/x", "trainer.attention_kernel=sdpa")
    with pytest.raises(ConfigError, match="applies to task=gan only"):
        check_config(cfg, declared_manifest(28))
