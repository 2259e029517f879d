"""FoundationVision/LlamaGen's released models as bigtrain checkpoints.

``bigtrain convert llamagen-gpt c2i_B_256.pt OUT --tokenizer TOKENIZER_CKPT``: a class-conditional
GPT (``autoregressive/models/gpt.py``; the file's ``model`` state dict, or ``module`` /
``state_dict`` / the flat dict, as LlamaGen's ``sample_c2i.py`` reads it) as a ``task=prior``
checkpoint of bigtrain's prior with the LlamaGen block (``experiment=imagenet256_gpt_b``: GPT-B, 16x16
codes of a 16,384-code tokenizer; larger ones: ``model.arch.dim/layers/heads``). Its 2-D rotary
table (``freqs_cis``, when the file has it) is checked against bigtrain's, its KV caches and causal
mask skipped. ``--tokenizer`` (a converted tokenizer checkpoint, e.g. ``llamagen-vq``'s) is
recorded as the prior's tokenizer, so ``bigtrain sample`` and ``bigtrain.load`` decode through it;
without it the token space comes from ``model.arch.vocab/token_grid`` and ``prior.tokenizer=CKPT``
must be set before sampling.

``bigtrain convert llamagen-vq vq_ds16_c2i.pt OUT``: LlamaGen's VQ-16 tokenizer
(``tokenizer/tokenizer_image/vq_model.py``) as a ``task=tokenizer`` checkpoint: the taming encoder
and decoder (attention only at the lowest level, i.e. ``attn_resolutions=[resolution / 16]``) with an
8-dimensional, l2-normalised codebook (``model.arch.embed_dim=8 model.arch.l2_normalize=true``) and
its VQ loss (``beta_on=commitment``). Its modules are renamed (``conv_blocks.i.res.j`` ->
``down.i.block.j``; the decoder's ``conv_blocks`` run from the lowest level up, bigtrain's ``up`` from
the highest; ``mid.0/1/2`` -> ``mid.block_1/attn_1/block_2``); its PatchGAN (the file's
``discriminator``) becomes ``D`` when the preset builds one.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from bigtrain.checkpoint.io import latest_valid, open_checkpoint
from bigtrain.convert.base import Format, Source, register_format, sha256
from bigtrain.convert.taming import BOOKKEEPING
from bigtrain.convert.tensors import fit, load_tensors, state_dict_in
from bigtrain.data.manifest import DatasetManifest
from bigtrain.errors import CheckpointError, ConfigError
from bigtrain.train.task import expected_manifest

log = logging.getLogger(__name__)

# -- the GPT ----------------------------------------------------------------------------------------
# LlamaGen's names -> bigtrain's, for the parts of a name (after "layers.N." for the blocks)
GPT_TOP = {
    "tok_embeddings.weight": "tok_emb.weight",
    "cls_embedding.embedding_table.weight": "cls_emb.weight",
    "norm.weight": "ln_f.weight",
    "output.weight": "head.weight",
}
GPT_BLOCK = {
    "attention.wqkv.weight": "attn.qkv.weight",
    "attention.wo.weight": "attn.proj.weight",
    "feed_forward.w1.weight": "mlp.w1.weight",
    "feed_forward.w2.weight": "mlp.w2.weight",
    "feed_forward.w3.weight": "mlp.w3.weight",
    "attention_norm.weight": "ln1.weight",
    "ffn_norm.weight": "ln2.weight",
}
GPT_DERIVED = re.compile(r"^(freqs_cis|causal_mask|layers\.\d+\.attention\.kv_cache\.[kv]_cache)$")
WRAPPERS = ("module.", "_orig_mod.")  # DDP / DeepSpeed / torch.compile prefixes


def gpt_name(ref: str) -> str | None:
    """bigtrain's name of LlamaGen GPT tensor ``ref`` (None: not a parameter of it)."""
    if ref in GPT_TOP:
        return GPT_TOP[ref]
    m = re.fullmatch(r"layers\.(\d+)\.(.+)", ref)
    if m and m.group(2) in GPT_BLOCK:
        return f"blocks.{m.group(1)}.{GPT_BLOCK[m.group(2)]}"
    return None


def gpt_reference_name(ours: str) -> str:
    top = {v: k for k, v in GPT_TOP.items()}
    if ours in top:
        return top[ours]
    m = re.fullmatch(r"blocks\.(\d+)\.(.+)", ours)
    block = {v: k for k, v in GPT_BLOCK.items()}
    if m and m.group(2) in block:
        return f"layers.{m.group(1)}.{block[m.group(2)]}"
    return f"(none for bigtrain's {ours})"


def gpt_to_reference(weights: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """bigtrain's ``prior`` state dict in LlamaGen's names (the inverse of the conversion)."""
    return {gpt_reference_name(k): v for k, v in weights.items()}


def _unwrap(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for key, value in state.items():
        for prefix in WRAPPERS:
            key = key.removeprefix(prefix)
        out[key] = value
    return out


def _gpt_hint(state: Mapping[str, torch.Tensor]):  # noqa: ANN202
    def hint(name: str) -> str:  # noqa: ARG001
        emb, cls = state.get("tok_embeddings.weight"), state.get("cls_embedding.embedding_table.weight")
        layers = {int(m.group(1)) for k in state if (m := re.match(r"layers\.(\d+)\.", k))}
        if emb is None:
            return ""
        extra = f", {cls.shape[0] - 1} classes" if cls is not None else ""
        return (
            f"; the file's GPT: model.arch.dim={emb.shape[1]} model.arch.layers={len(layers)}, "
            f"a {emb.shape[0]}-code vocabulary{extra}"
        )

    return hint


def _check_rope(src: Path, freqs: torch.Tensor, prior: nn.Module) -> None:
    """LlamaGen's ``freqs_cis`` ``[cls + grid^2, head_dim / 2, 2]`` (cos, sin) against bigtrain's table."""
    cos, sin = getattr(prior, "rope_cos", None), getattr(prior, "rope_sin", None)
    if cos is None or sin is None or tuple(freqs.shape) != (cos.shape[0], cos.shape[1], 2):
        want = (
            "no rotary table (model.arch.positions)" if cos is None else f"{[cos.shape[0], cos.shape[1], 2]}"
        )
        raise CheckpointError(
            f"{src}: tensor freqs_cis is {list(freqs.shape)}, bigtrain's 2-D rotary table is {want}: "
            "the token grid (the tokenizer's), model.arch.heads or positions=rope2d differ"
        )
    diff = max(
        (freqs[..., 0].float() - cos).abs().max().item(), (freqs[..., 1].float() - sin).abs().max().item()
    )
    if diff > 1e-4:
        raise CheckpointError(
            f"{src}: tensor freqs_cis differs from bigtrain's 2-D rotary table by {diff:.2e}"
        )


def read_gpt(src: Path, nets: Mapping[str, nn.Module], cfg: DictConfig) -> Source:
    if str(cfg.model.arch.get("block", "")) != "llama":
        raise ConfigError("format llamagen-gpt needs the LlamaGen block: model.arch.block=llama")
    obj, placeholders = load_tensors(src)
    state = _unwrap(state_dict_in(obj, src, ("model", "module", "state_dict")))
    weights, unplaced = {}, []
    for key, value in state.items():
        name = gpt_name(key)
        if name is not None:
            weights[name] = value
        elif not GPT_DERIVED.match(key):
            unplaced.append(key)
    if unplaced:
        raise CheckpointError(
            f"{src}: tensor {unplaced[0]} has no place in bigtrain's prior"
            f"{f' (and {len(unplaced) - 1} more)' if len(unplaced) > 1 else ''}; is this a LlamaGen c2i GPT?"
        )
    prior = fit(src, "prior", weights, nets["prior"], gpt_reference_name, (), _gpt_hint(state))
    if "freqs_cis" in state:  # the tensors fit: the grid and head size must too
        _check_rope(src, state["freqs_cis"], nets["prior"])
    step = int(obj.get("steps", 0)) if isinstance(obj, Mapping) and isinstance(obj.get("steps"), int) else 0
    info = {"files": {src.name: sha256(src)}, "steps": step, "placeholders": placeholders}
    return Source(weights={"prior": prior}, step=step, info=info)


def _tokenizer_checkpoint(path: str) -> Any:
    p = Path(path).expanduser()
    ck = open_checkpoint(p) if (p / "meta.json").is_file() else latest_valid(p)
    if ck is None:
        raise ConfigError(f"--tokenizer {path}: not a checkpoint folder, nor a run folder with one")
    task = str(OmegaConf.load(ck.path / "config.yaml").get("task"))
    if task != "tokenizer" or "vq" not in ck.component_names():
        raise ConfigError(f"--tokenizer {path}: a task={task} checkpoint, not a tokenizer's")
    return ck


def token_manifest(src: Path, cfg: DictConfig, shape: dict[str, Any]) -> DatasetManifest:  # noqa: ARG001
    """The prior's token dataset: ``data.path``'s when it is one, else made from the tokenizer
    (``--tokenizer`` or ``prior.tokenizer``): its code grid and vocabulary, its images' shape, its
    checkpoint and weight digest (what ``bigtrain sample`` decodes with); without one, the
    preset's (``model.arch.vocab/token_grid``, ``data.resolution/channels``). The classes are
    ``data.num_classes``."""
    declared, origin = expected_manifest(cfg)
    if origin == "dataset.json" and declared.kind == "tokens":
        return declared
    n = int(cfg.data.num_classes) if cfg.model.conditional else 0
    tok = str(shape.get("tokenizer") or cfg.prior.get("tokenizer") or "")
    extra: dict[str, Any] = {"kind": "tokens", "label_key": "cls" if n else None}
    if tok:
        ck = _tokenizer_checkpoint(tok)
        arch = OmegaConf.load(ck.path / "config.yaml").model.arch
        data = ck.meta["dataset"]
        resolution, channels = int(data["resolution"]), int(data["channels"])
        grid, vocab = resolution // 2 ** (len(arch.ch_mult) - 1), int(arch.num_codes)
        extra["tokenizer"] = {
            "checkpoint": str(ck.path.resolve()),
            "step": ck.step,
            "digest": ck.meta.get("digests", {}).get("vq"),
            "arch": OmegaConf.to_container(arch, resolve=True),
        }
    else:
        log.warning("no --tokenizer: the converted prior cannot sample until prior.tokenizer=CKPT is set")
        grid, vocab = int(cfg.model.arch.token_grid), int(cfg.model.arch.vocab)
        resolution, channels = int(cfg.data.resolution), int(cfg.data.channels)
        if grid <= 0 or vocab <= 0:
            raise ConfigError("without --tokenizer, set model.arch.vocab and model.arch.token_grid")
    extra["tokens"] = {"grid": [grid, grid], "vocab": vocab, "dtype": "uint16" if vocab <= 2**16 else "int32"}
    extra["source"] = {"path": None, "dataset_id": None}
    return DatasetManifest(
        Path(), "converted-tokens", resolution, channels, [str(i) for i in range(n)], {}, extra
    )


# -- the VQ-16 tokenizer ----------------------------------------------------------------------------
VQ_SKIPPED = ("quantize.codebook_used",)  # its usage window (of the last 65,536 codes), not a weight
MID = {"0": "block_1", "1": "attn_1", "2": "block_2"}


def _levels(state: Mapping[str, Any], part: str, stage: str) -> int:
    found = {int(m.group(1)) for k in state if (m := re.match(rf"{part}\.{stage}\.(\d+)\.", k))}
    return max(found) + 1 if found else 0


def vq_to_bigtrain(state: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """``(vq, unplaced)``: LlamaGen ``VQModel`` tensors in bigtrain's names, and those that have none."""
    levels = _levels(state, "decoder", "conv_blocks")
    out, unplaced = {}, []
    for key, value in state.items():
        if key.startswith(VQ_SKIPPED):
            continue
        k = re.sub(
            r"^(encoder|decoder)\.mid\.([012])\.", lambda m: f"{m.group(1)}.mid.{MID[m.group(2)]}.", key
        )
        k = re.sub(r"^encoder\.conv_blocks\.(\d+)\.res\.", r"encoder.down.\1.block.", k)
        k = re.sub(r"^encoder\.conv_blocks\.", "encoder.down.", k)
        m = re.match(r"^decoder\.conv_blocks\.(\d+)\.(res|attn|upsample)(.*)$", k)
        if m:
            sub = {"res": "block"}.get(m.group(2), m.group(2))
            k = f"decoder.up.{levels - 1 - int(m.group(1))}.{sub}{m.group(3)}"
        if k.startswith(("encoder.", "decoder.", "quant_conv.", "post_quant_conv.", "quantize.embedding.")):
            out[k] = value
        else:
            unplaced.append(key)
    return out, unplaced


def vq_reference_name(name: str, levels: int) -> str:
    """LlamaGen's name of bigtrain ``vq`` tensor ``name`` (``levels``: the decoder's)."""
    mid = {v: k for k, v in MID.items()}
    k = re.sub(
        r"^(encoder|decoder)\.mid\.(block_1|attn_1|block_2)\.",
        lambda m: f"{m.group(1)}.mid.{mid[m.group(2)]}.",
        name,
    )
    k = re.sub(r"^encoder\.down\.(\d+)\.block\.", r"encoder.conv_blocks.\1.res.", k)
    k = re.sub(r"^encoder\.down\.", "encoder.conv_blocks.", k)
    m = re.match(r"^decoder\.up\.(\d+)\.(block|attn|upsample)(.*)$", k)
    if m:
        sub = {"block": "res"}.get(m.group(2), m.group(2))
        k = f"decoder.conv_blocks.{levels - 1 - int(m.group(1))}.{sub}{m.group(3)}"
    return k


def vq_to_reference(weights: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """bigtrain's ``vq`` state dict in LlamaGen's names (without bigtrain's code-usage buffers)."""
    levels = _levels(weights, "decoder", "up")
    return {vq_reference_name(k, levels): v for k, v in weights.items() if not k.endswith(BOOKKEEPING)}


def _vq_hint(state: Mapping[str, torch.Tensor], cfg: DictConfig):  # noqa: ANN202
    def hint(name: str) -> str:
        emb = state.get("quantize.embedding.weight")
        if name.startswith(("quantize.", "quant_conv.", "post_quant_conv.")) and emb is not None:
            return f"; for this file pass model.arch.num_codes={emb.shape[0]} model.arch.embed_dim={emb.shape[1]}"
        if ".attn." in name or name not in state:
            res = int(cfg.data.resolution) // 2 ** (len(cfg.model.arch.ch_mult) - 1)
            return f"; LlamaGen attends at the lowest level only: model.arch.attn_resolutions=[{res}]"
        return ""

    return hint


def read_vq(src: Path, nets: Mapping[str, nn.Module], cfg: DictConfig) -> Source:
    if not bool(cfg.model.arch.get("l2_normalize", False)):
        raise ConfigError("LlamaGen's VQ matches codes by cosine: set model.arch.l2_normalize=true")
    obj, placeholders = load_tensors(src)
    state = _unwrap(state_dict_in(obj, src, ("model", "state_dict")))
    found, unplaced = vq_to_bigtrain(state)
    if unplaced:
        raise CheckpointError(
            f"{src}: tensor {unplaced[0]} has no place in bigtrain's tokenizer"
            f"{f' (and {len(unplaced) - 1} more)' if len(unplaced) > 1 else ''}; is this a LlamaGen VQModel?"
        )
    levels = len(cfg.model.arch.ch_mult)
    weights = {"vq": fit(src, "vq", found, nets["vq"], lambda k: vq_reference_name(k, levels),
                         BOOKKEEPING, _vq_hint(found, cfg))}  # fmt: skip
    notes = []
    disc = obj.get("discriminator") if isinstance(obj, Mapping) else None
    if "D" in nets and isinstance(disc, Mapping) and "main.0.weight" in disc:
        weights["D"] = fit(src, "D", _unwrap(disc), nets["D"], lambda k: f"discriminator.{k}")
    elif "D" in nets:
        notes.append("the file has no PatchGAN discriminator: D is freshly initialised")
    for note in notes:
        log.warning("%s: %s", src, note)
    step = int(obj.get("steps", 0)) if isinstance(obj, Mapping) and isinstance(obj.get("steps"), int) else 0
    info = {"files": {src.name: sha256(src)}, "steps": step, "placeholders": placeholders, "notes": notes}
    return Source(weights=weights, step=step, info=info)


GPT = register_format(
    Format(
        name="llamagen-gpt",
        task="prior",
        read=read_gpt,
        default_overrides=("experiment=imagenet256_gpt_b",),
        help="FoundationVision/LlamaGen c2i GPT (c2i_B_256.pt) -> prior; --tokenizer CKPT decodes its codes",
        manifest=token_manifest,
    )
)
VQ = register_format(
    Format(
        name="llamagen-vq",
        task="tokenizer",
        read=read_vq,
        default_overrides=(
            "experiment=imagenet256_vqgan_f16",
            "model.arch.embed_dim=8",
            "model.arch.l2_normalize=true",
            "model.arch.beta_on=commitment",
        ),
        help="FoundationVision/LlamaGen VQ-16 tokenizer (vq_ds16_c2i.pt) -> vq (+ D)",
    )
)

__all__ = ["GPT", "VQ", "gpt_name", "gpt_to_reference", "token_manifest", "vq_to_bigtrain", "vq_to_reference"]
