"""The gated PixelCNN as the prior over a tokenizer's code grid, family ``pixelcnn_prior`` (kind
``prior``): the original VQ-VAE recipe (van den Oord et al. 2017, sec. 4: "we train a PixelCNN over
the latents"), trained and sampled by ``task=prior`` next to the transformer.

The codes of an ``h x w`` grid are embedded (``dim`` features each) and the gated layers of
:mod:`bigtrain.models.pixelcnn` run over that map with one feature group (a code has no colour
channels). The condition enters as the paper's conditioning vector ``h``: the class's embedding,
mapped linearly into every layer's gates (the null class for classifier-free guidance, as the
transformer's). A 1x1 head gives the next code's logits at every grid position.

It speaks :class:`~bigtrain.models.transformer.NextCodePrior`'s language, so ``task=prior``'s step,
sampling, CFG and evaluation are the transformer's: ``forward(tokens)`` places the ``T`` given codes
on the grid (the rest are placeholders no output can see), runs the network once and returns the
logits of positions ``0..T``. Sampling keeps a :class:`RowCache` instead of a KV cache: a row's
links to the horizontal stack depend on the rows above it only, so each layer's vertical stack
advances one row when a row of codes is complete, and each code runs only the horizontal stack
over its own row (the columns that reach it): the same logits as the full pass (to float
rounding) for about a grid side's fewer operations.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bigtrain.config.typed import option
from bigtrain.models.pixelcnn import GatedLayer
from bigtrain.models.prior_prefix import Condition
from bigtrain.models.registry import register_model
from bigtrain.models.transformer import NextCodePrior


class RowCache:
    """What sampling keeps between codes: the codes so far (``fed``), and per layer the vertical
    stack's latest input rows (as many as its kernel covers) and the links it gives the current
    row. ``length`` counts positions as :class:`KVCache`'s does for the sampler: 0 before the first
    call, then the class position plus the codes fed."""

    def __init__(self, batch: int, seq_len: int, device: torch.device) -> None:
        self.codes = torch.zeros(batch, seq_len, dtype=torch.long, device=device)
        self.fed = 0
        self.length = 0
        self.links: list[Tensor] = []
        self.inputs: list[list[Tensor]] = []


@dataclass
class PixelCNNPriorArch:
    """``model.arch`` of ``model=pixelcnn_prior``."""

    layers: int = option(12, "gated layers")
    width: int = option(128, "features per stack")
    dim: int = option(128, "a code's (and the class's) embedding size")
    kernel: int = option(3, "the layers' kernel size (odd)")
    input_kernel: int = option(5, "the first (mask A) layer's kernel size (odd)")
    label_dropout: float = option(0.1, "P(class -> the null class) in training, for classifier-free guidance")
    vocab: int = option(0, "codebook size, used only without token shards (bigtrain info); dataset.json wins")
    token_grid: int = option(0, "token grid side, used only without token shards; dataset.json wins")


@dataclass(frozen=True)
class PixelCNNPriorConfig:
    vocab: int
    seq_len: int
    num_classes: int
    layers: int
    width: int
    dim: int
    kernel: int
    input_kernel: int
    label_dropout: float


class PixelCNNPrior(NextCodePrior):
    def __init__(self, cfg: PixelCNNPriorConfig, condition: Condition | None = None) -> None:
        super().__init__()
        condition = condition or Condition("class", cfg.num_classes)
        if condition.kind != "class":
            raise ValueError(
                f"model=pixelcnn_prior conditions on a class only (the condition here is {condition.kind}): "
                "use model=gpt for text or condition images"
            )
        self.grid = math.isqrt(cfg.seq_len)
        if self.grid * self.grid != cfg.seq_len:
            raise ValueError(f"model=pixelcnn_prior needs a square code grid, got {cfg.seq_len} codes")
        self.cfg, self.condition, self.prefix_len, self.prefix = cfg, condition, 1, None
        self.tok_emb = nn.Embedding(cfg.vocab, cfg.dim)
        self.cls_emb = nn.Embedding(cfg.num_classes + 1, cfg.dim)  # the last row is the null class
        self.layers = nn.ModuleList(
            [GatedLayer(cfg.dim, cfg.width, cfg.input_kernel, 1, True, 0, cond_dim=cfg.dim)]
            + [GatedLayer(cfg.width, cfg.width, cfg.kernel, 1, False, 0, cond_dim=cfg.dim) for _ in range(cfg.layers - 1)]
        )  # fmt: skip
        self.out = nn.Conv2d(cfg.width, cfg.width, 1)
        self.head = nn.Conv2d(cfg.width, cfg.vocab, 1)
        nn.init.zeros_(self.head.weight)  # every code equally likely at the start, as LlamaGen's head
        nn.init.zeros_(self.head.bias)

    def embed_prefix(self, cond: Tensor | None, batch: int, drop: Tensor | None = None) -> Tensor:
        """The class as ``[batch, 1, dim]`` (None, or ``drop`` true for a row: the null class)."""
        return self.class_prefix(cond, batch, drop)

    def forward(
        self,
        tokens: Tensor,
        labels: Tensor | None = None,
        cache: Any = None,
        *,
        prefix: Tensor | None = None,
        drop: Tensor | None = None,
    ) -> Tensor:
        """Logits ``[B, T + 1, vocab]`` (``T + 1`` capped at ``seq_len``): position ``t`` predicts
        code ``t`` from ``tokens[:, :t]`` and the class (``labels``, or its ``prefix`` made once)."""
        b, t = tokens.shape
        h = (self.embed_prefix(labels, b, drop) if prefix is None else prefix)[:, 0]
        if cache is not None:
            return self._next_with_cache(tokens, h, cache)
        if t > self.cfg.seq_len:
            raise ValueError(f"{t} codes exceed the grid's {self.cfg.seq_len}")
        codes = torch.zeros(b, self.cfg.seq_len, dtype=torch.long, device=tokens.device)
        codes[:, :t] = tokens  # the rest: placeholders, after every output that is read
        x = self.tok_emb(codes).view(b, self.grid, self.grid, -1).permute(0, 3, 1, 2)
        v = x
        for layer in self.layers:
            v, link = layer.vertical(v, h)
            x = layer.horizontal(x, link)
        logits = self.head(F.relu(self.out(F.relu(x))))  # [B, vocab, H, W]
        return logits.flatten(2).transpose(1, 2)[:, : min(t + 1, self.cfg.seq_len)]

    def new_cache(self, batch: int, device: torch.device, dtype: torch.dtype = torch.float32) -> RowCache:  # noqa: ARG002
        """An empty :class:`RowCache` for ``batch`` sequences (both CFG halves)."""
        return RowCache(batch, self.cfg.seq_len, device)

    def _embed_row(self, codes: Tensor) -> Tensor:
        """Codes ``[B, n]`` of one row as the network's input map ``[B, dim, 1, n]``."""
        return self.tok_emb(codes).transpose(1, 2).unsqueeze(2)

    def _next_with_cache(self, new: Tensor, h: Tensor, cache: RowCache) -> Tensor:
        """Feed ``new`` codes ``[B, k]`` (k >= 0) after the cache's and return the logits of the next
        position, ``[B, 1, vocab]``. A completed row advances every layer's vertical stack by that
        row (:meth:`GatedLayer.vertical_row`); the next code then needs the horizontal stack over
        its row's columns within reach, the placeholders right of it unseen as in the full pass."""
        side, total = self.grid, self.cfg.seq_len
        if cache.fed + new.shape[1] >= total:
            raise ValueError(f"the cache holds {cache.fed} codes: no position after {total - 1} to predict")
        if cache.length == 0:
            like = self._embed_row(cache.codes[:, :side])
            cache.links = [layer.first_link(like, h) for layer in self.layers]
            cache.inputs = [[] for _ in self.layers]
        for code in new.unbind(1):
            cache.codes[:, cache.fed] = code
            cache.fed += 1
            if cache.fed % side == 0:  # a row is complete: the rows below may now see it
                row = self._embed_row(cache.codes[:, cache.fed - side : cache.fed])
                for k, layer in enumerate(self.layers):
                    kept = cache.inputs[k] = (cache.inputs[k] + [row])[-(layer.v_pad[0] + 1) :]
                    row, cache.links[k] = layer.vertical_row(torch.cat(kept, dim=2), h)
        cache.length = self.prefix_len + cache.fed
        i, j = divmod(cache.fed, side)
        left = max(0, j - sum(layer.v_pad[0] for layer in self.layers))  # columns an output sees
        x = self._embed_row(cache.codes[:, i * side + left : i * side + j + 1])
        for layer, link in zip(self.layers, cache.links, strict=True):
            x = layer.horizontal(x, link[..., left : j + 1])
        logits = self.head(F.relu(self.out(F.relu(x[..., -1:]))))  # [B, vocab, 1, 1]
        return logits.flatten(2).transpose(1, 2)


@register_model(
    "pixelcnn_prior",
    kind="prior",
    arch=PixelCNNPriorArch,
    help="gated PixelCNN over the code grid (the VQ-VAE paper's prior)",
)
def build_pixelcnn_prior(
    *, vocab: int, seq_len: int, num_classes: int, arch: PixelCNNPriorArch, condition: Condition | None = None
) -> PixelCNNPrior:
    for name in ("layers", "width", "dim", "kernel", "input_kernel"):
        if getattr(arch, name) < 1:
            raise ValueError(f"model.arch.{name} must be >= 1 (got {getattr(arch, name)})")
    if arch.kernel % 2 == 0 or arch.input_kernel % 2 == 0:
        raise ValueError(
            f"model.arch.kernel and input_kernel must be odd (got {arch.kernel}, {arch.input_kernel})"
        )
    cfg = PixelCNNPriorConfig(
        vocab, seq_len, num_classes, arch.layers, arch.width, arch.dim, arch.kernel, arch.input_kernel,
        float(arch.label_dropout),
    )  # fmt: skip
    return PixelCNNPrior(cfg, condition)


__all__ = ["PixelCNNPrior", "PixelCNNPriorArch", "PixelCNNPriorConfig", "RowCache", "build_pixelcnn_prior"]
