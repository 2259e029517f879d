"""Output parity of bigtrain's BigGAN and BigGAN-deep with the reference implementation.

Builds each network pair in the reference code (``ref=PATH``: a checkout of ajbrock/BigGAN-PyTorch,
imported from there, never copied into bigtrain) and in bigtrain at the same small settings, copies
every reference tensor (weights, spectral-norm ``u`` vectors, BN statistics) into bigtrain's
modules by name, sets the attention gains to a non-zero value (they start at 0, which would hide
the attention path), and compares G's images and D's logits on the same inputs, in training mode
(batch statistics, one power iteration) and eval mode (running statistics). Prints one JSON line
last with the largest absolute difference per model and resolution; 0.0 means bit-identical.

    python benchmarks/reference_parity.py ref=/path/to/BigGAN-PyTorch
"""

from __future__ import annotations

import contextlib
import io
import re
import sys
from typing import Any

import torch
from _common import emit, parse_args
from torch import nn

from bigtrain.models import build_gan

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
    """A reference state-dict key as bigtrain names it."""
    m = re.match(r"blocks\.(\d+)\.(\d+)\.(.*)", name)
    if m and deep_d:  # deep D: one list per stage (``depth`` blocks, then its attention)
        i, j, rest = int(m[1]), int(m[2]), m[3]
        name = f"attention.{i * depth + depth - 1}.{rest}" if j == depth else f"blocks.{i * depth + j}.{rest}"
    elif m:  # one list per block, its attention appended
        name = f"attention.{m[1]}.{m[3]}" if m[2] == "1" else f"blocks.{m[1]}.{m[3]}"
    for a, b in [
        ("output_layer.0.gain", "out_bn.weight"),
        ("output_layer.0.bias", "out_bn.bias"),
        ("output_layer.0.stored_mean", "out_bn.running_mean"),
        ("output_layer.0.stored_var", "out_bn.running_var"),
        ("output_layer.2", "out_conv"),
        ("stored_mean", "bn.running_mean"),
        ("stored_var", "bn.running_var"),
    ]:
        name = name.replace(a, b)
    name = re.sub(r"\.u0$", ".parametrizations.weight.0.u", name)
    return re.sub(r"\.sv0$", ".parametrizations.weight.0.sv", name)


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


def compare(ref_module: Any, family: str, resolution: int, attention: str) -> dict[str, float]:
    torch.manual_seed(0)
    rg, rd = _reference_models(ref_module, family, resolution, attention)
    for net in (rg, rd):
        for name, p in net.named_parameters():
            if name.endswith("gamma"):
                p.data.fill_(0.7)
        for m in net.modules():
            if hasattr(m, "stored_mean"):
                m.stored_mean.normal_()
                m.stored_var.uniform_(0.5, 2.0)
    att = tuple(int(a) for a in attention.split("_") if a)
    g, d = build_gan(
        family,
        resolution=resolution,
        channels=3,
        num_classes=CLASSES,
        z_dim=Z_DIM,
        g_width=CH,
        d_width=CH,
        shared_dim=SHARED,
        attention=att,
    )
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


def main() -> None:
    args = parse_args({"ref": ""})
    if not args["ref"]:
        raise SystemExit("pass ref=PATH, a checkout of ajbrock/BigGAN-PyTorch")
    sys.path.insert(0, str(args["ref"]))
    import BigGAN  # noqa: N813 - the reference's module names
    import BigGANdeep  # noqa: N813

    modules = {"biggan": BigGAN, "biggan_deep": BigGANdeep}
    results = {}
    for family, resolution, attention in CASES:
        diffs = compare(modules[family], family, resolution, attention)
        results[f"{family}_{resolution}"] = diffs
        print(f"{family:12s} {resolution:4d}  " + "  ".join(f"{k} {v:.2e}" for k, v in diffs.items()))
    emit({"max_abs_diff": max(v for d in results.values() for v in d.values()), "cases": results})


if __name__ == "__main__":
    main()
