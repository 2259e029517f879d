"""Format ``biggan-pytorch``: ajbrock/BigGAN-PyTorch's saved weights (``utils.save_weights``).

SRC is its weights folder (``G.pth``, ``G_ema.pth``, ``D.pth``, ``state_dict.pth``) or one file of
it: ``G_ema_best0.pth`` names the set with the suffix ``best0`` (the reference's ``copy0`` /
``bestN`` copies). ``G`` and ``D`` are required only if present; at least one generator is.
``state_dict.pth`` gives the iteration count (the checkpoint's step) and the reference's config,
whose network settings must agree with the preset's (``G_ch``/``g_width``, ``dim_z``, ``shared_dim``,
``hier``, attention, epsilons): a disagreement is one line naming each key, since loading such
weights into other settings would run but draw the wrong images.

Names: the reference keeps a block and its attention in one list (``blocks.i.0`` / ``blocks.i.1``;
BigGAN-deep's D, ``depth`` blocks then the attention per stage), ``ccbn``'s statistics as
``stored_mean`` / ``stored_var``, the output BN and conv in ``output_layer`` and spectral norm's
state as ``u0`` / ``sv0``; bigtrain uses flat ``blocks`` / ``attention`` lists, BatchNorm's
``running_*`` names and ``torch.nn.utils.parametrizations.spectral_norm``
(``parametrizations.weight.original`` / ``.0.u`` / ``.0.sv``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig
from torch import nn

from bigtrain.convert.base import Format, Source, register_format, sha256
from bigtrain.errors import CheckpointError, ConfigError
from bigtrain.models import parse_arch

FILES = {"G": "G", "G_ema": "G_ema", "D": "D"}  # bigtrain component -> the reference's file stem

_RENAMES = [
    ("output_layer.0.gain", "out_bn.weight"),
    ("output_layer.0.bias", "out_bn.bias"),
    ("output_layer.0.stored_mean", "out_bn.running_mean"),
    ("output_layer.0.stored_var", "out_bn.running_var"),
    ("output_layer.2", "out_conv"),
    ("stored_mean", "bn.running_mean"),
    ("stored_var", "bn.running_var"),
]


def bigtrain_name(name: str, deep_d: bool, depth: int) -> str:
    """A reference state-dict key as bigtrain names it (before the spectral-norm weight rename)."""
    m = re.match(r"blocks\.(\d+)\.(\d+)\.(.*)", name)
    if m and deep_d:  # deep D: one list per stage (``depth`` blocks, then its attention)
        i, j, rest = int(m[1]), int(m[2]), m[3]
        name = f"attention.{i * depth + depth - 1}.{rest}" if j == depth else f"blocks.{i * depth + j}.{rest}"
    elif m:  # one list per block, its attention appended
        name = f"attention.{m[1]}.{m[3]}" if m[2] == "1" else f"blocks.{m[1]}.{m[3]}"
    for a, b in _RENAMES:
        name = name.replace(a, b)
    name = re.sub(r"\.u0$", ".parametrizations.weight.0.u", name)
    return re.sub(r"\.sv0$", ".parametrizations.weight.0.sv", name)


def rename(
    reference: Mapping[str, torch.Tensor], target: nn.Module, what: str, deep_d: bool, depth: int
) -> dict[str, torch.Tensor]:
    """The reference's state dict in ``target``'s names, every tensor placed and every shape equal;
    ``num_batches_tracked`` (which the reference does not keep) comes from ``target``."""
    ours = target.state_dict()
    out: dict[str, torch.Tensor] = {}
    for key, value in reference.items():
        name = bigtrain_name(key, deep_d, depth)
        if name not in ours:  # a spectrally normalised weight lives under parametrizations
            name = re.sub(r"\.weight$", ".parametrizations.weight.original", name)
        if name not in ours:
            raise CheckpointError(
                f"{what}: reference tensor {key} {tuple(value.shape)} has no place in bigtrain's model"
            )
        if ours[name].shape != value.shape:
            raise CheckpointError(
                f"{what}: reference tensor {key} is {tuple(value.shape)}, bigtrain's {name} is "
                f"{tuple(ours[name].shape)}: the preset's settings differ from the released ones"
            )
        out[name] = value
    left = [k for k in ours if k not in out and not k.endswith("num_batches_tracked")]
    if left:
        raise CheckpointError(f"{what}: bigtrain tensors the reference file lacks: {', '.join(left[:4])}")
    return {**{k: v for k, v in ours.items() if k not in out}, **out}


def _files(src: Path) -> tuple[Path, str]:
    """The weights folder and the name suffix of the set (``''``, ``copy0``, ``best1``, ...)."""
    if src.is_dir():
        return src, ""
    m = re.match(r"^(?:G_ema|G|D|state_dict)(?:_(.+))?\.pth$", src.name)
    if m is None:
        raise ConfigError(
            f"{src}: not a BigGAN-PyTorch weights file (G.pth, G_ema.pth, D.pth, state_dict.pth)"
        )
    return src.parent, m[1] or ""


def _load(path: Path) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a damaged file, or one that needs code to unpickle
        raise CheckpointError(
            f"cannot read {path} as tensors: {type(exc).__name__}: {str(exc).splitlines()[0]}"
        ) from None


def _attention(spec: Any) -> frozenset[int]:
    return frozenset(int(a) for a in str(spec).split("_") if a and a != "0")


def check_settings(ref: Mapping[str, Any], cfg: DictConfig, deep: bool) -> None:
    """The reference run's network settings against the preset's; all differences in one line."""
    arch = parse_arch(str(cfg.model.name), cfg.model.arch)
    want = {
        "G_ch": ("model.g_width", int(cfg.model.g_width)),
        "D_ch": ("model.d_width", int(cfg.model.d_width)),
        "dim_z": ("model.z_dim", int(cfg.model.z_dim)),
        "shared_dim": ("model.arch.shared_dim", int(arch.shared_dim)),
        "G_attn": ("model.arch.g_attention", arch.attention_of("G")),
        "D_attn": ("model.arch.d_attention", arch.attention_of("D")),
        "SN_eps": ("model.arch.sn_eps", arch.sn_eps_of("G")),
        "BN_eps": ("model.arch.bn_eps", float(arch.bn_eps)),
        "resolution": ("data.resolution", int(cfg.data.resolution)),
        "n_classes": ("data.num_classes", int(cfg.data.num_classes)),
    }
    if deep:
        want["G_depth"] = ("model.arch.g_depth", int(arch.depth if arch.g_depth is None else arch.g_depth))
        want["D_depth"] = ("model.arch.d_depth", int(arch.depth if arch.d_depth is None else arch.d_depth))
    else:
        want["hier"] = ("model.arch.hier", bool(arch.hier))
    diffs = []
    for key, (ours, value) in want.items():
        if key not in ref:
            continue
        theirs = (
            _attention(ref[key])
            if key.endswith("_attn")
            else type(value)(ref[key])
            if not isinstance(value, frozenset)
            else ref[key]
        )
        if theirs != value:
            shown = sorted(theirs) if isinstance(theirs, frozenset) else theirs
            mine = sorted(value) if isinstance(value, frozenset) else value
            diffs.append(f"{key}={shown} ({ours}={mine})")
    if diffs:
        raise ConfigError("the reference run's settings differ from the preset's: " + ", ".join(diffs))


def read(src: Path, nets: Mapping[str, nn.Module], cfg: DictConfig) -> Source:
    folder, suffix = _files(src)
    stem = (lambda s: f"{s}_{suffix}") if suffix else (lambda s: s)
    deep = str(cfg.model.name) == "biggan_deep"
    arch = parse_arch(str(cfg.model.name), cfg.model.arch)
    d_depth = int(getattr(arch, "d_depth", None) or getattr(arch, "depth", 1)) if deep else 1
    info: dict[str, Any] = {"files": {}}
    step = 0
    state_file = folder / f"{stem('state_dict')}.pth"
    if state_file.is_file():
        state = _load(state_file)
        step = int(state.get("itr", 0))
        if isinstance(state.get("config"), dict):
            check_settings(state["config"], cfg, deep)
        info["files"]["state_dict"] = {"path": str(state_file), "sha256": sha256(state_file)}
        info["reference"] = {k: state[k] for k in ("itr", "epoch", "best_IS", "best_FID") if k in state}
    weights: dict[str, dict[str, torch.Tensor]] = {}
    for comp, name in FILES.items():
        f = folder / f"{stem(name)}.pth"
        if comp == "G_ema" and "G_ema" not in nets and "G" not in weights:
            comp = "G"  # a run without EMA takes a release's G_ema.pth (when no G.pth) as its G
        if not f.is_file() or comp not in nets or comp in weights:
            continue
        weights[comp] = rename(_load(f), nets[comp], f.name, deep_d=deep and comp == "D", depth=d_depth)
        info["files"][comp] = {"path": str(f), "sha256": sha256(f)}
    if "G" not in weights and "G_ema" not in weights:
        raise ConfigError(f"{folder}: no {stem('G')}.pth or {stem('G_ema')}.pth to convert")
    return Source(weights, step, info)


FORMAT = register_format(
    Format(
        name="biggan-pytorch",
        task="gan",
        read=read,
        default_overrides=("experiment=imagenet128_biggan",),
        help="ajbrock/BigGAN-PyTorch weights (G.pth, G_ema.pth, D.pth, state_dict.pth) at a preset's settings",
    )
)

__all__ = ["FORMAT", "bigtrain_name", "check_settings", "read", "rename"]
