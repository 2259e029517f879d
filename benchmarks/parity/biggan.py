"""BigGAN and BigGAN-deep against ajbrock/BigGAN-PyTorch (``ref=PATH``, a checkout of it).

Builds each network pair in the reference code and in bigtrain at the same small settings, copies
every reference tensor (weights, spectral-norm ``u`` vectors, BN statistics) into bigtrain's
modules by name, sets the attention gains to a non-zero value (they start at 0, which would hide
the attention path), and compares:

* G's images and D's logits on the same inputs, in training mode (batch statistics, one power
  iteration) and eval mode (running statistics), at every resolution of :data:`CASES`;
* D's hinge loss (the reference's ``losses.loss_hinge_dis``) and its gradients with D's orthogonal
  regularisation (the reference's ``utils.ortho``, applied once after backward), and G's hinge
  loss with ``utils.ortho`` on G (its shared embedding exempt);
* the EMA generator after a few updates: the reference's ``utils.ema`` (the whole state dict,
  BN statistics included) against ``bigtrain.train.ema.EMA(buffers="average")``.
"""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bigtrain.convert.biggan_pytorch import bigtrain_name
from bigtrain.losses import build_loss
from bigtrain.losses.regularizers import orthogonal_penalty
from bigtrain.models import build_gan
from bigtrain.train.ema import EMA

# z_dim 60 splits evenly into 4, 5 or 6 hierarchical chunks (32, 64, 128): the reference drops a
# remainder, bigtrain gives it to the first chunk, so only even splits compare.
CH, Z_DIM, SHARED, CLASSES, BATCH = 16, 60, 16, 5, 4
# (family, resolution, attention). None at 32x32: the reference's 32x32 D tables label every block
# "16", so it would put attention after each of them (bigtrain: after the block that outputs 16x16).
CASES = [
    ("biggan", 32, ""),
    ("biggan", 64, "32"),
    ("biggan", 128, "64"),
    ("biggan_deep", 32, ""),
    ("biggan_deep", 64, "32"),
    ("biggan_deep", 128, "64"),
    ("biggan_deep", 256, "128"),
]


def _ours(name: str, deep_d: bool, depth: int) -> str:
    """A reference state-dict key as bigtrain names it: the converter's own mapping
    (``bigtrain convert biggan-pytorch``), so this comparison also checks the converter."""
    return bigtrain_name(name, deep_d, depth)


def _copy(ref: nn.Module, ours: nn.Module, deep_d: bool, depth: int) -> None:
    target = ours.state_dict()
    new: dict[str, torch.Tensor] = {}
    for key, value in ref.state_dict().items():
        name = _ours(key, deep_d, depth)
        if name not in target:  # a spectrally normalised weight lives under parametrizations
            name = re.sub(r"\.weight$", ".parametrizations.weight.original", name)
        if name not in target or target[name].shape != value.shape:
            raise KeyError(f"no place for reference tensor {key} ({tuple(value.shape)}) in bigtrain's model")
        new[name] = value
    left = [k for k in target if k not in new and not k.endswith("num_batches_tracked")]
    if left:
        raise KeyError(f"bigtrain tensors with no reference counterpart: {left[:5]}")
    ours.load_state_dict({**target, **new})


def _reference_models(
    ref_module: Any, family: str, resolution: int, attention: str
) -> tuple[nn.Module, nn.Module]:
    common = {"resolution": resolution, "n_classes": CLASSES, "SN_eps": 1e-6}
    g_kw = {"G_ch": CH, "dim_z": Z_DIM, "G_attn": attention or "0", "G_shared": True}
    g_kw |= {"shared_dim": SHARED, "hier": True, "no_optim": True}
    d_kw = {"D_ch": CH, "D_attn": attention or "0"}
    if family == "biggan_deep":
        g_kw["G_depth"] = 2
        d_kw["D_depth"] = 2
    with contextlib.redirect_stdout(io.StringIO()):  # the reference prints per layer
        g = ref_module.Generator(**g_kw, **common)
        d = ref_module.Discriminator(**d_kw, **common)
    return g, d


def _away_from_init(*nets: nn.Module) -> None:
    """Attention gains non-zero (they start at 0, hiding the attention path) and BN statistics that
    are not the initial 0 / 1, so that every tensor's placement shows in the outputs."""
    for net in nets:
        for name, p in net.named_parameters():
            if name.endswith("gamma"):
                p.data.fill_(0.7)
        for m in net.modules():
            if hasattr(m, "stored_mean"):
                m.stored_mean.normal_()
                m.stored_var.uniform_(0.5, 2.0)


def compare(ref_module: Any, family: str, resolution: int, attention: str) -> dict[str, float]:
    torch.manual_seed(0)
    rg, rd = _reference_models(ref_module, family, resolution, attention)
    _away_from_init(rg, rd)
    g, d = _ours_pair(family, resolution, attention)
    _copy(rg, g, deep_d=False, depth=2)
    _copy(rd, d, deep_d=family == "biggan_deep", depth=2)
    z, y = torch.randn(BATCH, Z_DIM), torch.randint(0, CLASSES, (BATCH,))
    out: dict[str, float] = {}
    with torch.no_grad():
        for mode in ("train", "eval"):
            for net in (rg, rd, g, d):
                net.train(mode == "train")
            x_ref = rg(z, rg.shared(y))
            out[f"G_{mode}"] = (x_ref - g(z, y)).abs().max().item()
            out[f"D_{mode}"] = (rd(x_ref, y).squeeze(1) - d(x_ref, y)).abs().max().item()
    return out


def _ours_pair(family: str, resolution: int, attention: str) -> tuple[nn.Module, nn.Module]:
    """bigtrain's G and D at the settings the reference's are built with (:func:`_reference_models`)."""
    att = tuple(int(a) for a in attention.split("_") if a)
    return build_gan(family, resolution=resolution, channels=3, num_classes=CLASSES, z_dim=Z_DIM, g_width=CH,
                     d_width=CH, shared_dim=SHARED, attention=att)  # fmt: skip


def _named(ref: nn.Module, ours: nn.Module, deep_d: bool) -> list[tuple[str, torch.Tensor, torch.Tensor]]:
    """(reference name, reference tensor, bigtrain tensor) for every reference parameter."""
    mine = dict(ours.named_parameters())
    out = []
    for key, p in ref.named_parameters():
        name = _ours(key, deep_d, 2)
        if name not in mine:
            name = re.sub(r"\.weight$", ".parametrizations.weight.original", name)
        out.append((key, p, mine[name]))
    return out


def _grad_diff(pairs: list[tuple[str, torch.Tensor, torch.Tensor]]) -> float:
    diffs = [
        (a.grad - b.grad).abs().max().item()
        if a.grad is not None
        else float(b.grad is not None and b.grad.abs().max() > 0)
        for _, a, b in pairs
    ]
    return max(diffs)


def losses_and_gradients(ref: Any, family: str, resolution: int, attention: str) -> dict[str, float]:
    """D's and G's hinge losses with orthogonal regularisation, and every parameter's gradient."""
    import losses as ref_losses  # the reference's modules
    import utils as ref_utils

    torch.manual_seed(1)
    rg, rd = _reference_models(ref, family, resolution, attention)
    g, d = _ours_pair(family, resolution, attention)
    for net in (rg, rd):
        for name, p in net.named_parameters():
            if name.endswith("gamma"):
                p.data.fill_(0.7)
    _copy(rg, g, deep_d=False, depth=2)
    _copy(rd, d, deep_d=family == "biggan_deep", depth=2)
    hinge, strength = build_loss("hinge"), 1e-3
    z, y = torch.randn(BATCH, Z_DIM), torch.randint(0, CLASSES, (BATCH,))
    real = torch.rand(BATCH, 3, resolution, resolution) * 2 - 1
    with torch.no_grad():
        fake = rg(z, rg.shared(y))
        g(z, y)  # the same train-mode forward: one power iteration and BN update on both sides
    # D: one forward of real and fake together, as the reference's G_D with split_D=False
    both_ref = rd(torch.cat([fake, real]), torch.cat([y, y]))
    loss_real, loss_fake = ref_losses.loss_hinge_dis(both_ref[:BATCH], both_ref[BATCH:])
    d_ref = loss_real + loss_fake
    d_ref.backward()
    ref_utils.ortho(rd, strength)
    both = d(
        torch.cat([fake, real]), torch.cat([y, y])
    )  # the reference's order (bigtrain's loop: real first)
    d_ours = hinge.d_loss(both[BATCH:], both[:BATCH])
    (d_ours + orthogonal_penalty(d, strength)).backward()
    d_pairs = _named(rd, d, family == "biggan_deep")
    out = {"D_loss": abs(d_ref.item() - d_ours.item()), "D_grad": _grad_diff(d_pairs)}
    # G: the reference's G loss through D, then utils.ortho on G with the shared embedding exempt
    for net in (rd, d):
        net.requires_grad_(False)
    g_ref = ref_losses.loss_hinge_gen(rd(rg(z, rg.shared(y)), y))
    g_ref.backward()
    ref_utils.ortho(rg, strength, blacklist=list(rg.shared.parameters()))
    g_ours = hinge.g_loss(d(g(z, y), y))
    (g_ours + orthogonal_penalty(g, strength, [g.shared])).backward()
    out |= {"G_loss": abs(g_ref.item() - g_ours.item()), "G_grad": _grad_diff(_named(rg, g, False))}
    return out


def ema_parity(ref: Any, family: str, resolution: int, attention: str) -> float:
    """Five EMA updates of a moving G (weights and BN statistics): the reference's ``utils.ema``
    against bigtrain's ``EMA(buffers="average")``; the largest difference of any state entry."""
    import copy

    import utils as ref_utils

    torch.manual_seed(2)
    rg, _ = _reference_models(ref, family, resolution, attention)
    target = copy.deepcopy(rg)
    updater = ref_utils.ema(rg, target, decay=0.9, start_itr=0)
    g, _ = _ours_pair(family, resolution, attention)
    _copy(rg, g, deep_d=False, depth=2)
    ema = EMA(g, decay=0.9, warmup=False, buffers="average")
    for step in range(1, 6):
        with torch.no_grad():
            for p in rg.parameters():
                p.add_(0.01 * torch.randn_like(p))
            rg.train()(
                torch.randn(BATCH, Z_DIM), rg.shared(torch.randint(0, CLASSES, (BATCH,)))
            )  # moves BN stats
        updater.update(step)
        _copy(rg, g, deep_d=False, depth=2)
        ema.update(g, step)
    ours = ema.model.state_dict()
    diffs = []
    for key, value in target.state_dict().items():
        name = _ours(key, False, 2)
        if name not in ours:
            name = re.sub(r"\.weight$", ".parametrizations.weight.original", name)
        diffs.append((value.float() - ours[name].float()).abs().max().item())
    return max(diffs)


def convert_parity(ref: Any, family: str, resolution: int, attention: str) -> dict[str, float]:
    """The reference's own files, through ``bigtrain convert biggan-pytorch``: build the reference pair,
    save ``G.pth`` / ``G_ema.pth`` / ``D.pth`` / ``state_dict.pth`` as its ``utils.save_weights``
    does, convert, then compare ``bigtrain.load``'s generator and the converted D with the reference's
    networks on the same inputs (eval mode: the stored statistics, as sampling uses them)."""
    import tempfile

    import bigtrain
    from bigtrain.checkpoint.io import open_checkpoint
    from bigtrain.convert import convert

    torch.manual_seed(3)
    rg, rd = _reference_models(ref, family, resolution, attention)
    _away_from_init(rg, rd)
    config = {"G_ch": CH, "D_ch": CH, "dim_z": Z_DIM, "shared_dim": SHARED, "hier": True, "G_attn": attention or "0",
              "D_attn": attention or "0", "SN_eps": 1e-6, "BN_eps": 1e-5, "resolution": resolution,
              "n_classes": CLASSES, "G_depth": 2, "D_depth": 2}  # fmt: skip
    att = "[" + ",".join(a for a in attention.split("_") if a) + "]"
    preset = "imagenet256_biggan_deep" if family == "biggan_deep" else "imagenet128_biggan"
    overrides = [f"experiment={preset}", f"data.resolution={resolution}", f"data.num_classes={CLASSES}",
                 "data.channels=3", f"model.g_width={CH}", f"model.d_width={CH}", f"model.z_dim={Z_DIM}",
                 f"model.arch.shared_dim={SHARED}", f"model.arch.attention={att}", "model.arch.sn_eps=1e-6",
                 "model.arch.bn_eps=1e-5", "data.path=/nonexistent"]  # fmt: skip
    if family == "biggan_deep":
        overrides += ["model.arch.depth=2"]
    with tempfile.TemporaryDirectory() as tmp:
        weights = Path(tmp) / "weights"
        weights.mkdir()
        torch.save(rg.state_dict(), weights / "G.pth")
        torch.save(rg.state_dict(), weights / "G_ema.pth")
        torch.save(rd.state_dict(), weights / "D.pth")
        torch.save({"itr": 1234, "epoch": 1, "config": config}, weights / "state_dict.pth")
        ck = convert("biggan-pytorch", weights, Path(tmp) / "run", overrides)
        g = bigtrain.load(ck, device="cpu")
        d_state = open_checkpoint(ck).load("D", weights_only=True)
        _, d = _ours_pair(family, resolution, attention)
        d.load_state_dict(d_state)
        z, y = torch.randn(BATCH, Z_DIM), torch.randint(0, CLASSES, (BATCH,))
        with torch.no_grad():
            rg.eval(), rd.eval(), d.eval()
            x_ref = rg(z, rg.shared(y))
            x = g.sample(z=z, classes=y)  # clamped to [-1, 1], as every bigtrain sample
            return {
                "step": float(open_checkpoint(ck).step),
                "G_converted": (x_ref.clamp(-1, 1) - x).abs().max().item(),
                "D_converted": (rd(x_ref, y).squeeze(1) - d(x_ref, y)).abs().max().item(),
            }


def _count(*nets: nn.Module) -> int:
    return sum(p.numel() for net in nets for p in net.parameters())


def run(family: str, ref: str) -> dict[str, Any]:  # noqa: ARG001 - the checkout is on sys.path
    import BigGAN  # noqa: N813 - the reference's module names
    import BigGANdeep  # noqa: N813

    ref = {"biggan": BigGAN, "biggan_deep": BigGANdeep}[family]
    cases = [c for c in CASES if c[0] == family]
    results = {}
    for _, resolution, attention in cases:
        diffs = compare(ref, family, resolution, attention)
        results[f"{family}_{resolution}"] = diffs
        print(f"{family:12s} {resolution:4d}  " + "  ".join(f"{k} {v:.2e}" for k, v in diffs.items()))
    _, resolution, attention = cases[-1]
    rg, rd = _reference_models(ref, family, resolution, attention)
    g, d = _ours_pair(family, resolution, attention)
    grads = losses_and_gradients(ref, family, 64, "32")
    print("losses and gradients at 64 px: " + "  ".join(f"{k} {v:.2e}" for k, v in grads.items()))
    ema = ema_parity(ref, family, 64, "32")
    print(f"EMA (whole state dict) at 64 px: {ema:.2e}")
    conv = convert_parity(ref, family, 64, "32")
    print("bigtrain convert biggan-pytorch at 64 px: " + "  ".join(f"{k} {v:.2e}" for k, v in conv.items()))
    return {
        "params_ours": _count(g, d),
        "params_ref": _count(rg, rd),
        "max_abs_diff": max(v for r in results.values() for v in r.values()),
        "loss_abs_diff": max(grads["D_loss"], grads["G_loss"]),
        "grad_max_abs_diff": max(grads["D_grad"], grads["G_grad"]),
        "ema_max_abs_diff": ema,
        "convert_max_abs_diff": max(conv["G_converted"], conv["D_converted"]),
        "params_at": f"{resolution} px, ch {CH}",
        "cases": results,
        "losses": grads,
    }
