"""What a prior is conditioned on, decided from its config and its token shards, and how a batch
becomes that condition (``task=prior``; the prefix modules are :mod:`bigtrain.models.prior_prefix`).

``prior.condition``:

* ``auto`` (the default): the codes of a condition image when the token shards carry them (a paired
  set tokenized with ``bigtrain tokenize``: taming's cond-transformer), else the class when
  ``model.conditional``, else nothing;
* ``text``: the samples' ``.txt`` captions (which ``bigtrain tokenize`` carries into the token
  shards), read by a caption transformer trained with the prior (``text.encoder=own``) or by a frozen
  local Hugging Face encoder (``text.encoder=hf``, ``text.hf_path``);
* ``image``: the condition codes, required.

Condition dropout (``model.arch.label_dropout``: the class, the caption or the condition image
replaced by the null prefix) draws from the per-rank torch RNG, which checkpoints restore.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from bigtrain.data.manifest import DatasetManifest
from bigtrain.models import parse_arch
from bigtrain.models.prior_prefix import Condition

CONDITIONS = ("auto", "text", "image")
TEXT_ENCODERS = ("own", "hf")


@dataclass
class PriorTextConfig:
    """``text.*``: the caption encoder of a text-conditioned prior (``prior.condition=text``)."""

    encoder: str = "own"  # own: a caption transformer trained with the prior | hf: a frozen local HF encoder
    hf_path: str = (
        ""  # text.encoder=hf: a folder save_pretrained wrote (model and tokenizer); never downloaded
    )
    max_len: int = 16  # caption positions the prior sees (words for own; the HF tokenizer's tokens for hf)
    vocab_size: int = 64  # own: rows of the word table (<pad>, <unk> and the training captions' words)
    layers: int = 2  # own: caption transformer blocks (its width is the prior's)
    heads: int = 4


def condition_kind(cfg: Any, manifest: DatasetManifest) -> str:
    """``class``, ``text``, ``image`` or ``none``: what ``prior.condition`` means for this data."""
    asked = str(cfg.prior.condition)
    if asked == "auto":
        if "condition" in manifest.extra:
            return "image"
        return "class" if cfg.model.conditional else "none"
    return asked


def condition_problems(cfg: Any, manifest: DatasetManifest) -> list[str]:
    """Start-up checks of ``prior.condition`` and ``text.*`` against the token shards."""
    asked, t = str(cfg.prior.condition), cfg.text
    if asked not in CONDITIONS:
        return [f"prior.condition must be one of {', '.join(CONDITIONS)} (got {asked})"]
    problems = []
    kind = condition_kind(cfg, manifest)
    if kind in ("text", "image") and cfg.model.conditional:
        problems.append(f"prior.condition={kind} replaces the class: set model.conditional=false")
    if kind == "text":
        if not manifest.has_text:
            problems.append(
                f"prior.condition=text trains on captions; the token shards at {cfg.data.path} have none "
                "(tokenize a captioned set: bigtrain prepare --captions, or builtin:mnist5k-captions)"
            )
        if str(t.encoder) not in TEXT_ENCODERS:
            problems.append(f"text.encoder must be own or hf (got {t.encoder})")
        elif str(t.encoder) == "hf" and not hf_feature_width(str(t.hf_path)):
            problems.append(
                f"text.hf_path={t.hf_path or '(empty)'}: no Hugging Face model folder there (its config.json "
                "is missing); save one with save_pretrained where there is internet and copy it (never downloaded)"
            )
        if int(t.max_len) < 1 or int(t.layers) < 1 or int(t.heads) < 1:
            problems.append("text.max_len, text.layers and text.heads must be >= 1")
        elif (dim := int(parse_arch(cfg.model.name, cfg.model.arch).dim)) % int(t.heads):
            problems.append(f"text.heads={t.heads} must divide the prior's width model.arch.dim={dim}")
    real_data = bool(manifest.splits)  # not a preset's declared shape (bigtrain info without data)
    asks = "attribute_agreement" in list(cfg.eval.metrics or ())
    if kind == "text" and asks and real_data and not manifest.extra.get("attributes"):
        problems.append(
            "eval.metrics: attribute_agreement needs measured attributes in the token shards' dataset.json "
            f"(bigtrain tokenize carries them from builtin:mnist5k-captions); {cfg.data.path} has none"
        )
    if kind == "image" and "condition" not in manifest.extra:
        problems.append(
            f"prior.condition=image needs condition codes: the token shards at {cfg.data.path} have none "
            "(bigtrain tokenize a paired set: bigtrain prepare --pairs)"
        )
    return problems


def hf_feature_width(path: str) -> int:
    """A local Hugging Face model's feature width from its ``config.json`` alone (no weights read,
    so ``bigtrain info`` can size the prior); 0 when the folder has none (the encoder's loading
    then names the problem)."""
    try:
        config = json.loads((Path(path).expanduser() / "config.json").read_text())
    except (OSError, ValueError):
        return 0
    return int(config.get("d_model") or config.get("hidden_size") or 0)


def build_condition(cfg: Any, manifest: DatasetManifest, num_classes: int) -> Condition:
    """The prefix's :class:`Condition` for this run (``num_classes`` for a class condition)."""
    kind, t = condition_kind(cfg, manifest), cfg.text
    if kind == "text":
        hf = str(t.encoder) == "hf"
        return Condition(
            "text",
            text_vocab=int(t.vocab_size),
            text_len=int(t.max_len),
            text_layers=int(t.layers),
            text_heads=int(t.heads),
            text_features=max(1, hf_feature_width(str(t.hf_path))) if hf else 0,
        )
    if kind == "image":
        c = manifest.extra["condition"]
        h, w = (int(v) for v in c["grid"])
        return Condition("image", cond_vocab=int(c["vocab"]), cond_len=h * w)
    return Condition("class", num_classes=num_classes)


def drop_mask(batch: int, p: float, device: torch.device) -> torch.Tensor | None:
    """Which rows' conditions become the null prefix (classifier-free guidance), from the per-rank
    torch RNG on the CPU (as the class-label dropout always drew it: resumed runs draw the same)."""
    if p <= 0:
        return None
    return torch.rand((batch,)).to(device) < p


__all__ = [
    "CONDITIONS",
    "PriorTextConfig",
    "build_condition",
    "condition_kind",
    "condition_problems",
    "drop_mask",
    "hf_feature_width",
]
