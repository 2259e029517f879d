"""The VQ tokenizer's pieces: quantisers, encoder/decoder against the release's counts, PatchGAN,
LPIPS through the cache path, the adaptive GAN weight."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import torchvision
from torch import nn

from bigtrain.eval.features import MissingWeightsError
from bigtrain.models.patchgan import PatchDiscriminator
from bigtrain.models.quantizers import VectorQuantizer
from bigtrain.models.vqgan import VQModel, build_vqgan
from bigtrain.train.tasks.tokenizer import adaptive_weight


def _n(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def test_release_parameter_counts() -> None:
    """taming-transformers' vqgan_imagenet_f16_16384 (Encoder 29,298,176 + Decoder 42,449,795 + 1x1
    convs + 16,384 x 256 codebook) and its 3-layer PatchGAN, counted from the release's code."""
    with torch.device("meta"):
        m = build_vqgan(resolution=256, channels=3, num_codes=16384)
        d = PatchDiscriminator(3, 64, 3)
    assert (_n(m.encoder), _n(m.decoder), _n(m)) == (29_298_176, 42_449_795, 76_073_859)
    assert _n(d) == 2_765_633
    assert m.factor == 16 and m.token_grid == 16


def test_roundtrip_shapes_and_token_decoding() -> None:
    torch.manual_seed(0)
    m = build_vqgan(resolution=32, channels=1, ch=32, ch_mult=(1, 2, 2), num_res_blocks=1, attn_resolutions=(8,),
                    z_channels=16, embed_dim=8, num_codes=64)  # fmt: skip
    x = torch.rand(3, 1, 32, 32) * 2 - 1
    x_rec, q = m(x)
    assert x_rec.shape == x.shape and q.indices.shape == (3, 8, 8) and q.indices.max() < 64
    m.eval()
    with torch.no_grad():
        z_q, q2 = m.encode(x)
        torch.testing.assert_close(m.decode_indices(q2.indices), m.decode(z_q))
    with pytest.raises(ValueError, match="divisible"):
        VQModel(30, 1, ch=32, ch_mult=(1, 2, 2), num_res_blocks=1, attn_resolutions=(), groups=32)
    with pytest.raises(ValueError, match="model.arch.codes"):
        build_vqgan(resolution=32, channels=1, codes=5)


def test_straight_through_loss_and_gradients() -> None:
    torch.manual_seed(0)
    vq = VectorQuantizer(8, 4, beta=0.25)
    z = torch.randn(2, 4, 3, 3, requires_grad=True)
    out = vq(z)
    flat = z.detach().permute(0, 2, 3, 1).reshape(-1, 4)
    nearest = ((flat[:, None] - vq.embedding.weight[None]) ** 2).sum(-1).argmin(1)
    assert torch.equal(out.indices.flatten(), nearest)
    q = vq.embedding.weight[nearest]
    expected = 1.25 * ((q - flat) ** 2).mean()  # codebook + 0.25 commitment, same value
    torch.testing.assert_close(out.loss, expected)
    torch.testing.assert_close(out.z_q, q.view(2, 3, 3, 4).permute(0, 3, 1, 2))
    out.z_q.sum().backward()  # straight-through: d z_q / d z = identity
    torch.testing.assert_close(z.grad, torch.ones_like(z))


def _taming_vq_loss(z: torch.Tensor, z_q: torch.Tensor, beta: float, legacy: bool) -> torch.Tensor:
    """taming-transformers' ``VectorQuantizer2`` loss on flattened ``z`` and its codes ``z_q``:
    ``legacy=True`` (its default, what the released VQGANs were trained with) puts beta on the
    codebook term, ``legacy=False`` on the commitment term."""
    if legacy:
        return torch.mean((z_q.detach() - z) ** 2) + beta * torch.mean((z_q - z.detach()) ** 2)
    return beta * torch.mean((z_q.detach() - z) ** 2) + torch.mean((z_q - z.detach()) ** 2)


@pytest.mark.parametrize(("beta_on", "legacy"), [("codebook", True), ("commitment", False)])
def test_vq_loss_gradients_are_the_releases_formula(beta_on: str, legacy: bool) -> None:
    """Encoder and codebook gradients of ``beta_on`` equal taming's formula with ``legacy``; the
    release's form pulls the encoder 4x harder and moves the codebook 4x slower (beta 0.25)."""
    torch.manual_seed(0)
    vq = VectorQuantizer(16, 4, beta=0.25, beta_on=beta_on)
    z = torch.randn(2, 4, 3, 3, requires_grad=True)
    vq(z).loss.backward()
    ours_z, ours_codes = z.grad.clone(), vq.embedding.weight.grad.clone()
    z.grad = None
    vq.embedding.weight.grad = None
    flat = z.permute(0, 2, 3, 1).reshape(-1, 4)
    nearest = ((flat.detach()[:, None] - vq.embedding.weight.detach()[None]) ** 2).sum(-1).argmin(1)
    _taming_vq_loss(flat, vq.embedding.weight[nearest], 0.25, legacy).backward()
    torch.testing.assert_close(ours_z, z.grad, rtol=0, atol=1e-7)
    torch.testing.assert_close(ours_codes, vq.embedding.weight.grad, rtol=0, atol=1e-7)


def test_release_form_pulls_the_encoder_four_times_harder() -> None:
    torch.manual_seed(0)
    z = torch.randn(2, 4, 3, 3)
    grads = {}
    for beta_on in ("codebook", "commitment"):
        torch.manual_seed(1)
        vq = VectorQuantizer(16, 4, beta=0.25, beta_on=beta_on)
        x = z.clone().requires_grad_(True)
        vq(x).loss.backward()
        grads[beta_on] = (x.grad.norm(), vq.embedding.weight.grad.norm())
    torch.testing.assert_close(grads["codebook"][0], 4 * grads["commitment"][0])
    torch.testing.assert_close(grads["codebook"][1], grads["commitment"][1] / 4)
    with pytest.raises(ValueError, match="beta_on must be one of codebook, commitment"):
        VectorQuantizer(16, 4, beta_on="both")
    with pytest.raises(ValueError, match="model.arch.beta_on must be one of"):
        build_vqgan(resolution=32, channels=1, beta_on="both")


def test_code_lookup_is_fp32_under_bf16_autocast() -> None:
    """A bf16 distance matmul picks another code for ~1% of vectors of a 4096 x 64 book; the lookup
    runs in fp32 whatever autocast says, so bf16 training and fp32 ``tokenize`` agree on every code."""
    torch.manual_seed(0)
    vq = VectorQuantizer(4096, 64)
    vq.embedding.weight.data.normal_()
    z = torch.randn(4, 64, 32, 32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        trained = vq(z).indices
        assert torch.equal(vq.encode_indices(z), trained)
    assert torch.equal(vq.encode_indices(z), trained)
    assert torch.equal(vq.eval()(z).indices, trained)


def test_ema_codebook_moves_codes_to_their_cluster_means() -> None:
    torch.manual_seed(0)
    vq = VectorQuantizer(4, 2, ema=True, decay=0.0, eps=0.0)
    assert not vq.embedding.weight.requires_grad
    centres = torch.tensor([[5.0, 0.0], [0.0, 5.0], [-5.0, 0.0], [0.0, -5.0]])
    vq.embedding.weight.data.copy_(centres * 0.9)
    pts = torch.cat([c + 0.1 * torch.randn(10, 2) for c in centres])  # 40 points around 4 centres
    vq(pts.view(40, 2, 1, 1))
    means = torch.stack([pts[i * 10 : (i + 1) * 10].mean(0) for i in range(4)])
    torch.testing.assert_close(vq.embedding.weight, means)  # decay 0: codes = cluster means


def test_cosine_codes_and_dead_code_restart() -> None:
    torch.manual_seed(0)
    vq = VectorQuantizer(16, 3, l2_normalize=True, restart_after=2)
    assert torch.allclose(vq.codebook().norm(dim=1), torch.ones(16))
    z = torch.randn(4, 3, 2, 2)
    first = set(vq(z).indices.flatten().tolist())
    before = vq.embedding.weight.detach().clone()
    second = set(vq(z).indices.flatten().tolist())
    dead = [i for i in range(16) if i not in first | second]  # unused for 2 steps: restarted now
    assert dead
    flat = torch.nn.functional.normalize(z.permute(0, 2, 3, 1).reshape(-1, 3), dim=1)
    for i in dead:
        assert not torch.equal(vq.embedding.weight[i], before[i])
        assert (flat - vq.embedding.weight[i]).norm(dim=1).min() < 1e-6  # an encoder output of this batch
    assert (vq.unused_steps[dead] == 0).all()
    stats = vq.usage(reset=True)
    assert 0 < stats["usage"] <= 1 and 1 <= stats["perplexity"] <= 16
    assert vq.window_counts.sum() == 0


def test_reduce_hook_sums_usage_across_processes() -> None:
    vq = VectorQuantizer(8, 2)
    vq.reduce = lambda t: t * 2  # as if a second process saw the same codes
    out = vq(torch.randn(1, 2, 2, 2))
    assert vq.window_counts.sum() == 8 and out.perplexity > 0


@pytest.mark.slow  # seconds: trains, spawns a process or reads weights
def test_lpips_reads_vgg_from_the_cache_and_says_how_to_fill_it(tmp_path: Path) -> None:
    from bigtrain.losses.perceptual import LPIPS

    with pytest.raises(MissingWeightsError, match="vgg16-397923af.pth; fill it once"):
        LPIPS(tmp_path / "weights" / "vgg16-397923af.pth")
    path = tmp_path / "vgg16.pth"
    torch.manual_seed(0)
    torch.save(torchvision.models.vgg16(weights=None).state_dict(), path)  # same file layout, random weights
    lp = LPIPS(path)
    assert not lp.training and not any(p.requires_grad for p in lp.parameters())
    x = (torch.rand(2, 3, 32, 32) * 2 - 1).requires_grad_(True)
    y = torch.rand(2, 3, 32, 32) * 2 - 1
    assert torch.allclose(lp(y, y), torch.zeros(2))
    d = lp(x, y)
    assert d.shape == (2,) and (d > 0).all()
    d.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0  # gradients reach the decoder's output
    assert lp(x[:, :1], y[:, :1]).shape == (2,)  # grayscale digits
    assert os.path.getsize(path) > 0


def test_adaptive_weight_is_the_ratio_of_gradient_norms() -> None:
    torch.manual_seed(0)
    last = nn.Parameter(torch.randn(4, 4))
    x = torch.randn(3, 4)
    out = x @ last
    nll = out.abs().mean()
    g_loss = -(out**2).mean()
    lam = adaptive_weight(nll, g_loss, last, scale=0.8)
    g1 = torch.autograd.grad(nll, last, retain_graph=True)[0]
    g2 = torch.autograd.grad(g_loss, last, retain_graph=True)[0]
    torch.testing.assert_close(lam, 0.8 * g1.norm() / (g2.norm() + 1e-4))
    assert not lam.requires_grad


def test_resumed_optimizers_take_the_configs_learning_rates() -> None:
    """As for GANs: after loading a checkpoint the config's optimizer settings win (lowering a
    learning rate after a divergence must work)."""
    from bigtrain.train.tasks.tokenizer import TokenizerTask
    from tests.conftest import compose, cpu, declared_manifest

    small = ["model.arch.ch=8", "model.arch.groups=8", "model.arch.z_channels=8", "model.arch.embed_dim=8",
             "model.arch.num_codes=16", "data.path=/unused"]  # fmt: skip
    first = TokenizerTask(
        compose("experiment=mnist_vqgan", *small), declared_manifest(), torch.device("cpu"), cpu()
    )
    lowered = compose("experiment=mnist_vqgan", *small, "optim.vq.lr=1e-5", "optim.d.lr=2e-5")
    resumed = TokenizerTask(lowered, declared_manifest(), torch.device("cpu"), cpu())
    resumed.load_state_dict(first.state_dict())
    assert resumed.vq_update.optimizer.param_groups[0]["lr"] == 1e-5
    assert resumed.d_update is not None and resumed.d_update.optimizer.param_groups[0]["lr"] == 2e-5
