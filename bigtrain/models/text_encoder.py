"""Captions -> fixed-size embeddings: the text encoder of ``task=text_gan`` (GAN-CLS, Reed et al. 2016).

A word vocabulary is built from the training captions when a run starts: the distinct words in
sorted order (deterministic: the same shards give the same indices on every rank and every run),
after index 0 ``<pad>`` and index 1 ``<unk>`` (any word not in it). The vocabulary is part of the
encoder's ``state_dict`` (PyTorch's ``_extra_state``: a plain list of strings), so the checkpoint
component that holds the weights also holds the words they were trained for: a prompt given to
``bigtrain sample`` is read with the training run's vocabulary, whatever data a sampling machine has.

The embedding table has a fixed number of rows, ``vocab_size`` (``text.vocab_size``), so its shape
is known before any caption is read (``bigtrain info`` on the meta device); more distinct words than
rows is a one-line error at start-up.

The network: word embeddings, a one-layer bidirectional GRU, the mean of its outputs over the
caption's words (padding masked out) -> ``[B, 2 * hidden]``. Reed et al. pre-trained a char-CNN-RNN
on a joint embedding and froze it; here the encoder is trained jointly, through the
discriminator's matching-aware loss only. Why D's loss and not G's: the encoder's job is to make
captions that describe an image different from those that do not, which is exactly what D's
"real image, wrong caption" term asks of it. Were G's loss to move the encoder too, G could win by
moving the text embedding itself (towards embeddings D scores as real whatever the image),
rather than by drawing what the caption says; the task therefore detaches the embedding in G's
step.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

PAD, UNK = "<pad>", "<unk>"
_WORD = re.compile(r"[a-z0-9]+(?:-[a-z0-9]+)*")


def words(text: str) -> list[str]:
    """A caption's words: lower case, runs of letters and digits (hyphenated words stay one:
    "right-slanted"); punctuation is dropped."""
    return _WORD.findall(text.lower())


def build_vocabulary(captions: Iterable[str]) -> list[str]:
    """``[<pad>, <unk>, w1, w2, ...]``: the captions' distinct words in sorted order."""
    return [PAD, UNK, *sorted({w for c in captions for w in words(c)})]


class WordVocabulary(nn.Module):
    """The word vocabulary a caption encoder reads with, kept in its ``state_dict`` (see the module
    docstring); subclasses set ``vocab_size`` and ``max_len`` before calling :meth:`set_vocabulary`."""

    vocab_size: int
    max_len: int

    def _init_vocabulary(self) -> None:
        self.vocabulary: list[str] = [PAD, UNK]
        self._index: dict[str, int] = {}
        self.set_vocabulary([PAD, UNK])

    def set_vocabulary(self, vocabulary: Sequence[str]) -> None:
        vocab = [str(w) for w in vocabulary]
        if vocab[:2] != [PAD, UNK]:
            raise ValueError(f"a vocabulary starts with {PAD}, {UNK}")
        if len(vocab) > self.vocab_size:
            raise ValueError(
                f"the captions have {len(vocab) - 2} distinct words; text.vocab_size={self.vocab_size} "
                f"holds {self.vocab_size - 2} (set text.vocab_size >= {len(vocab)})"
            )
        self.vocabulary = vocab
        self._index = {w: i for i, w in enumerate(vocab)}

    def get_extra_state(self) -> Any:
        return {"vocabulary": list(self.vocabulary)}

    def set_extra_state(self, state: Any) -> None:
        self.set_vocabulary(state["vocabulary"])

    def tokenize(self, captions: Sequence[str], pad_to: int | None = None) -> Tensor:
        """Word indices ``[B, L]``, 0-padded: ``L`` the longest caption (at most ``max_len``), or
        ``pad_to``; an empty caption is one ``<unk>``."""
        rows = [[self._index.get(w, 1) for w in words(c)][: self.max_len] or [1] for c in captions]
        width = pad_to if pad_to is not None else max(len(r) for r in rows)
        out = torch.zeros(len(rows), width, dtype=torch.long)
        for i, r in enumerate(rows):
            out[i, : len(r)] = torch.tensor(r)
        return out


class TextEncoder(WordVocabulary):
    """``captions: list[str]`` -> ``[B, 2 * hidden]`` (see the module docstring)."""

    def __init__(
        self, vocab_size: int = 64, word_dim: int = 64, hidden: int = 128, max_len: int = 16
    ) -> None:
        super().__init__()
        if vocab_size < 3 or word_dim < 1 or hidden < 1 or max_len < 1:
            raise ValueError("text encoder sizes must be positive (text.vocab_size >= 3)")
        self.vocab_size, self.max_len, self.out_dim = vocab_size, max_len, 2 * hidden
        self.embed = nn.Embedding(vocab_size, word_dim, padding_idx=0)
        self.rnn = nn.GRU(word_dim, hidden, batch_first=True, bidirectional=True)
        self._init_vocabulary()

    def forward(self, captions: Sequence[str]) -> Tensor:
        device = self.embed.weight.device
        ids = self.tokenize(captions).to(device)
        mask = (ids != 0).unsqueeze(-1).to(self.embed.weight.dtype)
        h, _ = self.rnn(self.embed(ids))
        return (h * mask).sum(1) / mask.sum(1)


class CaptionTransformer(WordVocabulary):
    """``ids [B, max_len]`` -> one vector per word position ``[B, max_len, dim]``: the caption
    encoder a text-conditioned prior trains with itself (``task=prior`` with ``prior.condition=text``).

    A small bidirectional transformer (pre-norm blocks, learned positions) over the words; padding
    positions are masked as keys, and their outputs are still defined (the prior sees a fixed
    ``max_len`` prefix, as LlamaGen's text-to-image models see 120 T5 positions). A row of padding
    only (a dropped caption) is the caller's to replace; here its first position is read unmasked so
    that attention never normalises over nothing."""

    def __init__(self, vocab_size: int, dim: int, layers: int, heads: int, max_len: int) -> None:
        super().__init__()
        if vocab_size < 3 or dim < 1 or layers < 1 or heads < 1 or max_len < 1 or dim % heads:
            raise ValueError(
                "caption encoder sizes must be positive, with text.heads dividing the prior's width"
            )
        self.vocab_size, self.max_len = vocab_size, max_len
        self.embed = nn.Embedding(vocab_size, dim, padding_idx=0)
        self.pos = nn.Parameter(torch.zeros(max_len, dim))
        layer = nn.TransformerEncoderLayer(
            dim, heads, 4 * dim, dropout=0.0, activation="gelu", batch_first=True, norm_first=True
        )
        self.blocks = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)
        nn.init.normal_(self.embed.weight, 0.0, 0.02)
        nn.init.normal_(self.pos, 0.0, 0.02)
        self._init_vocabulary()

    def forward(self, ids: Tensor) -> Tensor:
        pad = ids == 0
        pad[:, 0] &= ~pad.all(1)  # an all-padding row attends to its first position
        x = self.embed(ids) + self.pos[: ids.shape[1]]
        return self.norm(self.blocks(x, src_key_padding_mask=pad))


__all__ = ["PAD", "UNK", "CaptionTransformer", "TextEncoder", "WordVocabulary", "build_vocabulary", "words"]
