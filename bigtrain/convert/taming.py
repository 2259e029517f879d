"""``bigtrain convert taming LAST.ckpt OUT``: a VQGAN of CompVis/taming-transformers (a Lightning
checkpoint of its ``taming.models.vqgan.VQModel``) as a ``task=tokenizer`` checkpoint.

The release's ``state_dict`` holds ``encoder.*``, ``decoder.*``, ``quant_conv.*``,
``post_quant_conv.*`` and ``quantize.embedding.weight``, which bigtrain's :class:`VQModel` has
under the same names (its layout follows the release), ``loss.discriminator.*`` (the PatchGAN:
bigtrain's ``D``, whose ``main.*`` Sequential is the release's) and ``loss.perceptual_loss.*``
(LPIPS, which bigtrain builds from its own VGG weights: skipped). The step is ``global_step``.

The default preset is ``experiment=imagenet256_vqgan_f16``, the architecture of the released
ImageNet f16 models (ch 128, ch_mult 1,1,2,2,4, 2 residual blocks, attention at 16, z 256, embed
256) with 16,384 codes (``vqgan_imagenet_f16_16384``); ``vqgan_imagenet_f16_1024`` needs
``model.arch.num_codes=1024``. A file that does not fit says which override it needs.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig
from torch import nn

from bigtrain.convert.base import Format, Source, register_format, sha256
from bigtrain.convert.tensors import fit, load_tensors, state_dict_in
from bigtrain.errors import CheckpointError

log = logging.getLogger(__name__)

VQ_PREFIXES = ("encoder.", "decoder.", "quant_conv.", "post_quant_conv.", "quantize.")
D_PREFIX = "loss.discriminator."
SKIPPED = ("loss.perceptual_loss.",)  # LPIPS: bigtrain's own, from its VGG weights
# bigtrain's code-usage counters (dead-code restarts, usage metrics): the release has none
BOOKKEEPING = (
    "quantize.unused_steps",
    "quantize.window_counts",
    "quantize.cluster_size",
    "quantize.embed_sum",
)


def to_bigtrain(state: Mapping[str, torch.Tensor]) -> tuple[dict[str, dict[str, torch.Tensor]], list[str]]:
    """``({"vq": ..., "D": ...}, unplaced)``: a taming ``VQModel`` state dict in bigtrain's names;
    ``unplaced`` are its tensors that belong to neither (LPIPS excluded)."""
    vq, d, unplaced = {}, {}, []
    for key, value in state.items():
        if key.startswith(VQ_PREFIXES):
            vq[key] = value
        elif key.startswith(D_PREFIX):
            d[key.removeprefix(D_PREFIX)] = value
        elif not key.startswith(SKIPPED):
            unplaced.append(key)
    return {"vq": vq, **({"D": d} if d else {})}, unplaced


def to_reference(weights: Mapping[str, Mapping[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """The inverse of :func:`to_bigtrain`: bigtrain's ``vq`` (and ``D``) as a taming state dict
    (without bigtrain's code-usage buffers, which the release has not)."""
    out = {k: v for k, v in weights["vq"].items() if not k.endswith(BOOKKEEPING)}
    out |= {D_PREFIX + k: v for k, v in weights.get("D", {}).items()}
    return out


def _vq_hint(ref: Mapping[str, torch.Tensor]):  # noqa: ANN202
    def hint(name: str) -> str:
        emb = ref.get("quantize.embedding.weight")
        if name.startswith(("quantize.", "quant_conv.", "post_quant_conv.")) and emb is not None:
            return f"; for this file pass model.arch.num_codes={emb.shape[0]} model.arch.embed_dim={emb.shape[1]}"
        return ""

    return hint


def _d_hint(d: Mapping[str, torch.Tensor]):  # noqa: ANN202
    def hint(name: str) -> str:  # noqa: ARG001
        convs = [k for k, v in d.items() if k.endswith(".weight") and v.ndim == 4]
        if not convs or "main.0.weight" not in d:
            return ""
        return f"; for this file pass vq.disc_layers={len(convs) - 2} vq.disc_width={d['main.0.weight'].shape[0]}"

    return hint


def read(src: Path, nets: Mapping[str, nn.Module], cfg: DictConfig) -> Source:  # noqa: ARG001
    obj, placeholders = load_tensors(src)
    state = state_dict_in(obj, src, ("state_dict",))
    found, unplaced = to_bigtrain(state)
    if unplaced:
        raise CheckpointError(
            f"{src}: tensor {unplaced[0]} has no place in bigtrain's tokenizer"
            f"{f' (and {len(unplaced) - 1} more)' if len(unplaced) > 1 else ''}; is this a taming "
            "VQModel (not a GumbelQuantize / cond-stage / transformer checkpoint)?"
        )
    weights = {"vq": fit(src, "vq", found["vq"], nets["vq"], str, BOOKKEEPING, _vq_hint(state))}
    notes: list[str] = []
    if "D" in nets and "D" in found:
        weights["D"] = fit(src, "D", found["D"], nets["D"], lambda k: D_PREFIX + k, (), _d_hint(found["D"]))
    elif "D" in nets:
        notes.append("the file has no discriminator: D is freshly initialised")
    elif "D" in found:
        notes.append("the file's discriminator is not converted (the preset builds none: vq.disc_weight=0)")
    for note in notes:
        log.warning("%s: %s", src, note)
    lpips = sum(1 for k in state if k.startswith(SKIPPED))
    info: dict[str, Any] = {
        "files": {src.name: sha256(src)},
        "global_step": int(obj.get("global_step", 0)),
        "epoch": obj.get("epoch") if isinstance(obj.get("epoch"), int) else None,
        "skipped": {"loss.perceptual_loss.* (LPIPS)": lpips},
        "placeholders": placeholders,
        "notes": notes,
    }
    return Source(weights=weights, step=int(obj.get("global_step", 0)), info=info)


FORMAT = register_format(
    Format(
        name="taming",
        task="tokenizer",
        read=read,
        default_overrides=("experiment=imagenet256_vqgan_f16",),
        help="CompVis/taming-transformers VQGAN (Lightning .ckpt) -> vq (+ D); "
        "vqgan_imagenet_f16_1024: add model.arch.num_codes=1024",
    )
)

__all__ = ["FORMAT", "read", "to_bigtrain", "to_reference"]
