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


class TextEncoder(nn.Module):
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
        self.vocabulary: list[str] = [PAD, UNK]
        self._index: dict[str, int] = {}
        self.set_vocabulary([PAD, UNK])

    # -- the vocabulary, saved with the weights ---------------------------------------------------
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

    # -- encoding ---------------------------------------------------------------------------------
    def tokenize(self, captions: Sequence[str]) -> Tensor:
        """Word indices ``[B, L]`` (``L`` the longest caption, at most ``max_len``; 0-padded);
        an empty caption is one ``<unk>``."""
        rows = [[self._index.get(w, 1) for w in words(c)][: self.max_len] or [1] for c in captions]
        out = torch.zeros(len(rows), max(len(r) for r in rows), dtype=torch.long)
        for i, r in enumerate(rows):
            out[i, : len(r)] = torch.tensor(r)
        return out

    def forward(self, captions: Sequence[str]) -> Tensor:
        device = self.embed.weight.device
        ids = self.tokenize(captions).to(device)
        mask = (ids != 0).unsqueeze(-1).to(self.embed.weight.dtype)
        h, _ = self.rnn(self.embed(ids))
        return (h * mask).sum(1) / mask.sum(1)


__all__ = ["PAD", "UNK", "TextEncoder", "build_vocabulary", "words"]
