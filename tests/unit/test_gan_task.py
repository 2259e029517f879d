"""The GAN step itself (in-process, tiny DCGAN): accumulation, the non-finite policies, fp16 loss
scaling and truncated sampling."""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator

import pytest
import torch
from torch.nn.modules.batchnorm import _BatchNorm

from bigtrain.errors import ConfigError, NonFiniteLossError
from bigtrain.train.gan_sampling import truncated_normal
from bigtrain.train.task import check_config
from bigtrain.train.tasks.gan import GANTask
from tests.conftest import compose, cpu, declared_manifest


def _task(*overrides: str, precision: str = "no") -> GANTask:
    cfg = compose(
        "experiment=mnist_dcgan",
        "data.path=/x",
        "model.g_width=8",
        "model.d_width=8",
        "model.z_dim=8",
        "data.batch_size=4",
        *overrides,
    )
    torch.manual_seed(0)
    return GANTask(cfg, declared_manifest(16), torch.device("cpu"), cpu(precision))


def _data(bad_at: set[int] | None = None) -> Iterator[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    i = 0
    while True:
        x = torch.rand(4, 1, 16, 16, generator=g) * 2 - 1
        if bad_at and i in bad_at:
            x[0, 0, 0, 0] = float("nan")
        yield {"image": x, "label": torch.randint(0, 10, (4,), generator=g)}
        i += 1


class _Counting:
    def __init__(self, it: Iterator[dict[str, torch.Tensor]]):
        self.it, self.n = it, 0

    def __iter__(self) -> _Counting:
        return self

    def __next__(self) -> dict[str, torch.Tensor]:
        self.n += 1
        return next(self.it)


def test_accumulation_consumes_micro_batches_and_steps_once() -> None:
    task = _task("trainer.accumulation=3", "loss.d_steps=2")
    data = _Counting(_data())
    task.train_step(1, data)
    task.train_step(2, data)
    assert data.n == 2 * 2 * 3 and task.images_per_step() == 4 * 2 * 3
    assert task.opt_D.state_dict()["state"][0]["step"] == 4  # 2 D steps per G step, 2 steps
    assert task.opt_G.state_dict()["state"][0]["step"] == 2


def test_nonfinite_stop_policy_raises_before_the_update() -> None:
    task = _task()
    before = [p.detach().clone() for p in task.D.parameters()]
    with pytest.raises(NonFiniteLossError, match="non-finite D loss at step 1"):
        task.train_step(1, _data(bad_at={0}))
    assert all(
        torch.equal(a, b) for a, b in zip(before, task.D.parameters(), strict=True)
    )  # weights untouched


def test_nonfinite_skip_policy_drops_and_counts_then_gives_up() -> None:
    task = _task("trainer.on_nonfinite=skip", "trainer.max_nonfinite_skips=2")
    before = [p.detach().clone() for p in task.D.parameters()]
    m = task.train_step(1, _data(bad_at={0}))
    assert m["train/nonfinite_skips"] == 1 and "loss/D" not in m and math.isfinite(m["loss/G"])
    # D's update was dropped: every weight as before (its BatchNorm statistics may move, not weights)
    assert all(torch.equal(a, b) for a, b in zip(before, task.D.parameters(), strict=True))
    m = task.train_step(2, _data())
    assert m["train/nonfinite_skips"] == 1 and math.isfinite(m["loss/D"])  # good step resets the run of skips
    task.train_step(3, _data(bad_at={0}))
    task.train_step(4, _data(bad_at={0}))
    with pytest.raises(NonFiniteLossError):
        task.train_step(5, _data(bad_at={0}))  # a third in a row exceeds max_nonfinite_skips=2
    assert task.state_dict()["task"]["nonfinite_total"] == 3


def test_fp16_uses_a_loss_scale_that_is_checkpointed() -> None:
    task = _task("trainer.precision=fp16", precision="fp16")
    m = task.train_step(1, _data())
    assert m["amp/scale_G"] > 1 and math.isfinite(m["loss/D"])
    state = task.state_dict()
    assert "scaler" in state
    other = _task("trainer.precision=fp16", precision="fp16")
    other.load_state_dict(state)
    assert other.scaler_G.get_scale() == task.scaler_G.get_scale()


def test_truncation_bounds_z_and_sampler_uses_it() -> None:
    g = torch.Generator().manual_seed(0)
    z = truncated_normal(500, 16, 0.5, g, torch.device("cpu"))
    assert z.abs().max() <= 0.5 and z.std() > 0.2
    task = _task("model.conditional=true")
    imgs = task.sample(6, torch.Generator().manual_seed(0), classes=[3], truncation=0.5)
    assert imgs.shape == (6, 1, 16, 16) and imgs.abs().max() <= 1
    again = task.sample(6, torch.Generator().manual_seed(0), classes=[3], truncation=0.5)
    other = task.sample(6, torch.Generator().manual_seed(0), classes=[4], truncation=0.5)
    assert torch.equal(imgs, again) and not torch.equal(imgs, other)  # seeded; the label is used


def test_orthogonal_regularisation_enters_the_loss() -> None:
    plain = _task().train_step(1, _data())
    reg = _task("loss.g_ortho=10.0").train_step(1, _data())
    assert reg["loss/G"] > plain["loss/G"]


def _reference_ortho(p: torch.Tensor, strength: float) -> torch.Tensor:
    """BigGAN-PyTorch's ``utils.ortho`` update of one weight: ``strength * 2 (W Wᵀ ⊙ (1 - I)) W``."""
    w = p.detach().flatten(1)
    return (strength * 2 * ((w @ w.t()) * (1 - torch.eye(w.shape[0]))) @ w).view_as(p)


@pytest.mark.parametrize("accumulation", [1, 2, 4])
def test_orthogonal_gradient_is_the_references_once_per_step(accumulation: int) -> None:
    """With and without ``loss.{d,g}_ortho`` on the same data and noise (learning rates 0, so the
    gradients stay readable), each network's gradient differs by exactly one reference update,
    whatever the accumulation count (D's used to shrink by 1/k)."""
    lr0 = ("optim.d.lr=0", "optim.g.lr=0", f"trainer.accumulation={accumulation}")
    strength = 0.5
    plain = _task(*lr0)
    plain.train_step(1, _data())
    reg = _task(*lr0, f"loss.d_ortho={strength}", f"loss.g_ortho={strength}")
    reg.train_step(1, _data())
    for name in ("D", "G"):
        nets = getattr(plain, name), getattr(reg, name)
        for (key, p0), p1 in zip(nets[0].named_parameters(), nets[1].parameters(), strict=True):
            expected = _reference_ortho(p1, strength) if p1.ndim >= 2 else torch.zeros_like(p1)
            torch.testing.assert_close(p1.grad - p0.grad, expected, rtol=1e-4, atol=1e-5, msg=f"{name}.{key}")


def test_orthogonal_penalty_is_computed_once_per_update_not_per_micro_batch(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """It depends on the weights only: with 4 micro-batches its Gram matrices are formed once for
    D's update and once for G's, not 4 times each (BigGAN-128's G: 0.59 TFLOP each time)."""
    import bigtrain.train.tasks.gan as gan_module

    nets: list[str] = []
    real = gan_module.orthogonal_penalty

    def counted(module: torch.nn.Module, *args: object, **kwargs: object) -> torch.Tensor:
        nets.append("G" if module is task.G else "D")
        return real(module, *args, **kwargs)

    monkeypatch.setattr(gan_module, "orthogonal_penalty", counted)
    task = _task("trainer.accumulation=4", "loss.d_steps=2", "loss.d_ortho=0.5", "loss.g_ortho=0.5")
    task.train_step(1, _data())
    assert nets == ["D", "D", "G"]  # two D updates, one G update


def test_diffaugment_trains_and_is_validated() -> None:
    task = _task("loss.diffaugment='color,translation,cutout'")
    assert task.augment == ("color", "translation", "cutout")
    m = task.train_step(1, _data())
    assert math.isfinite(m["loss/D"]) and math.isfinite(m["loss/G"])
    cfg = compose("data.path=/x", "loss.diffaugment=flip")
    with pytest.raises(ConfigError, match="unknown DiffAugment policy 'flip'"):
        check_config(cfg, declared_manifest())


def test_joint_d_batch_equals_split_for_a_batch_independent_d() -> None:
    """Without batch-dependent layers in D (here d_norm=none), one concatenated forward gives the
    same losses as two; the option exists for BigGAN (one spectral-norm update per D step)."""
    split = _task("model.d_norm=none").train_step(1, _data())
    joint = _task("model.d_norm=none", "loss.split_d=false").train_step(1, _data())
    assert joint["loss/D"] == pytest.approx(split["loss/D"], rel=1e-5)
    assert joint["D/real_logit"] == pytest.approx(split["D/real_logit"], rel=1e-5)


def _g_state(task: GANTask) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in task.ema.model.state_dict().items()}


def test_sampling_with_batch_statistics_leaves_g_ema_untouched() -> None:
    """``eval.g_bn=batch`` (the BigGAN reference's CIFAR protocol): train-mode BatchNorm per
    sampling batch, on a copy, so G_ema's checkpointed buffers stay as they were."""
    task = _task("eval.g_bn=batch")
    task.train_step(1, _data())
    before = _g_state(task)
    z = torch.randn(6, 8, generator=torch.Generator().manual_seed(0))
    images = task._generate(z, None)
    assert all(torch.equal(v, task.ema.model.state_dict()[k]) for k, v in before.items())
    manual = copy.deepcopy(task.ema.model).train()
    with torch.no_grad():
        expected = manual(z, None).clamp(-1, 1)
    torch.testing.assert_close(images, expected)
    torch.testing.assert_close(task._generate(z, None), images)  # the same call, the same images
    running = _task()
    running.train_step(1, _data())
    assert not torch.allclose(running._generate(z, None), images)


def test_standing_statistics_are_the_average_over_passes() -> None:
    """``eval.g_bn=standing``: BN statistics re-estimated as the plain average of ``passes`` train-mode
    batches (the reference's ``accumulate_standing_stats``), on a copy, once per training step."""
    task = _task("eval.g_bn=standing", "eval.standing_passes=3", "eval.standing_batch=5")
    task.train_step(1, _data())
    before = _g_state(task)
    z = torch.randn(4, 8, generator=torch.Generator().manual_seed(0))
    images = task._generate(z, None)
    assert all(torch.equal(v, task.ema.model.state_dict()[k]) for k, v in before.items())
    net = copy.deepcopy(task.ema.model)
    bns = [m for m in net.modules() if isinstance(m, _BatchNorm)]
    sums = [[torch.zeros_like(m.running_mean), torch.zeros_like(m.running_var)] for m in bns]
    g = torch.Generator().manual_seed(int(task.cfg.eval.seed))
    hooks = []
    for m, acc in zip(bns, sums, strict=True):

        def hook(mod, inp, out, acc=acc):  # noqa: ANN001, ANN202, ARG001
            x = inp[0].transpose(0, 1).flatten(1)
            acc[0] += x.mean(1)
            acc[1] += x.var(1, unbiased=True)

        hooks.append(m.register_forward_hook(hook))
    net.train()
    with torch.no_grad():
        for _ in range(3):
            net(torch.randn(5, 8, generator=g), None)
    for h in hooks:
        h.remove()
    for m, (mean, var) in zip(bns, sums, strict=True):
        m.running_mean.copy_(mean / 3)
        m.running_var.copy_(var / 3)
    with torch.no_grad():
        expected = net.eval()(z, None).clamp(-1, 1)
    torch.testing.assert_close(images, expected, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(task._generate(z, None), images)  # not re-estimated within a step
    with pytest.raises(ConfigError, match="eval.g_bn must be one of running, batch, standing"):
        check_config(
            compose("experiment=mnist_dcgan", "data.path=/x", "eval.g_bn=train"), declared_manifest()
        )


def test_original_wgan_clips_the_critic_and_uses_rmsprop() -> None:
    task = _task("experiment=mnist_wgan", "loss.clip=0.005")
    assert isinstance(task.opt_D, torch.optim.RMSprop) and isinstance(task.opt_G, torch.optim.RMSprop)
    assert task.opt_D.param_groups[0]["lr"] == 5e-5 and task.cfg.loss.d_steps == 5
    assert max(p.abs().max() for p in task.D.parameters()) > 0.005  # before: not clipped
    data = _Counting(_data())
    m = task.train_step(1, data)
    assert data.n == 5 and math.isfinite(m["loss/D"])
    assert max(p.abs().max() for p in task.D.parameters()) <= 0.005
    state = task.d_update.state_dict()
    again = _task("experiment=mnist_wgan", "loss.clip=0.005")
    again.d_update.load_state_dict(state)
    assert again.opt_D.param_groups[0]["alpha"] == 0.99 and "betas" not in again.opt_D.param_groups[0]
    with pytest.raises(ConfigError, match="loss.clip"):
        check_config(compose("experiment=mnist_wgan", "data.path=/x", "loss.clip=0"), declared_manifest())
