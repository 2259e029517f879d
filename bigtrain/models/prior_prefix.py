"""What a prior's sequence starts with: the condition, as a prefix of embeddings before the codes.

Three kinds (:class:`Condition`), one shape: ``[B, P, dim]`` before the ``seq_len`` image codes.

* ``class``: one position, the class embedding (with a *null class* row), as before; its state-dict
  keys (``cls_emb``) are unchanged, so class-conditional checkpoints, converters and the LlamaGen
  parity check are untouched.
* ``text``: ``text_len`` positions, one per caption word (padded). Either a small caption
  transformer trained with the prior (:class:`bigtrain.models.text_encoder.CaptionTransformer`), or
  the features of a frozen Hugging Face encoder (``text_features`` wide), projected to the prior's
  width by a two-layer MLP, as LlamaGen's text-to-image GPT projects its T5 features.
* ``image``: ``cond_len`` positions, the codes of a second tokenizer's encoding of a condition image
  (an edge map, a segmentation, a low-resolution image), each with a learned position, as taming's
  cond-transformer prefixes its ``c_indices`` to the image codes. Own embeddings: the two
  codebooks are different vocabularies.

Every kind has a *null* prefix (the null class row; a learned ``[P, dim]`` sequence otherwise).
Training replaces a condition by it with probability ``label_dropout`` (caption dropout, for text),
so one network gives both the conditional and the unconditional logits that classifier-free
guidance mixes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from bigtrain.models.text_encoder import CaptionTransformer

KINDS = ("class", "text", "image")


@dataclass(frozen=True)
class Condition:
    """What conditions a prior, and the sizes its prefix module needs."""

    kind: str = "class"
    num_classes: int = 0  # class: 0 = unconditional (the prefix is always the null class)
    text_vocab: int = 0  # text: rows of the word table (own encoder)
    text_len: int = 0  # text: words per caption read (the prefix length)
    text_layers: int = 2  # text: caption transformer blocks (own encoder)
    text_heads: int = 4
    text_features: int = 0  # text: > 0 = a frozen Hugging Face encoder's feature width, no own encoder
    cond_vocab: int = 0  # image: the condition tokenizer's codebook size
    cond_len: int = 0  # image: its codes per condition image (the prefix length)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown prior condition {self.kind!r}; choose one of {', '.join(KINDS)}")
        if self.kind == "text" and (self.text_len < 1 or (self.text_features < 1 and self.text_vocab < 3)):
            raise ValueError("a text condition needs text_len >= 1 and a vocabulary or a feature width")
        if self.kind == "image" and (self.cond_vocab < 1 or self.cond_len < 1):
            raise ValueError("an image condition needs the condition tokenizer's vocab and code count")

    @property
    def prefix_len(self) -> int:
        return {"class": 1, "text": self.text_len, "image": self.cond_len}[self.kind]

    @property
    def own_text_encoder(self) -> bool:
        return self.kind == "text" and self.text_features < 1


class TextPrefix(nn.Module):
    """Caption word ids ``[B, L]`` (own encoder) or features ``[B, L, F]`` -> ``[B, L, dim]``."""

    def __init__(self, c: Condition, dim: int) -> None:
        super().__init__()
        self.encoder: CaptionTransformer | None = None
        self.proj: nn.Module | None = None
        if c.own_text_encoder:
            self.encoder = CaptionTransformer(c.text_vocab, dim, c.text_layers, c.text_heads, c.text_len)
        else:
            self.proj = nn.Sequential(
                nn.Linear(c.text_features, dim), nn.GELU(approximate="tanh"), nn.Linear(dim, dim)
            )
        self.null = nn.Parameter(torch.randn(c.text_len, dim) * 0.02)

    def forward(self, cond: Tensor, drop: Tensor | None) -> Tensor:
        if self.encoder is not None:
            x = self.encoder(cond)
            null = (cond == 0).all(1)  # an all-padding row: no caption
        else:
            assert self.proj is not None
            x = self.proj(cond)
            null = torch.zeros(cond.shape[0], dtype=torch.bool, device=cond.device)
        if drop is not None:
            null = null | drop
        return torch.where(null[:, None, None], self.null[None].to(x.dtype), x)

    def null_prefix(self, batch: int) -> Tensor:
        return self.null[None].expand(batch, -1, -1)


class ImagePrefix(nn.Module):
    """A condition image's codes ``[B, P]`` -> ``[B, P, dim]``, each with its learned position."""

    def __init__(self, c: Condition, dim: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(c.cond_vocab, dim)
        self.pos = nn.Parameter(torch.randn(c.cond_len, dim) * 0.02)
        self.null = nn.Parameter(torch.randn(c.cond_len, dim) * 0.02)

    def forward(self, cond: Tensor, drop: Tensor | None) -> Tensor:
        x = self.embed(cond) + self.pos
        if drop is None:
            return x
        return torch.where(drop[:, None, None], self.null[None].to(x.dtype), x)

    def null_prefix(self, batch: int) -> Tensor:
        return self.null[None].expand(batch, -1, -1)


def build_prefix(c: Condition, dim: int) -> nn.Module | None:
    """The prefix module of a text or image condition (None for a class: the prior's ``cls_emb``)."""
    if c.kind == "text":
        return TextPrefix(c, dim)
    if c.kind == "image":
        return ImagePrefix(c, dim)
    return None


__all__ = ["KINDS", "Condition", "ImagePrefix", "TextPrefix", "build_prefix"]
