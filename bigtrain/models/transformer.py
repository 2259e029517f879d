"""The stage-2 prior: a decoder-only transformer over tokenizer codes, class-conditional.

The sequence is ``[class token, code_1, ..., code_N]`` in raster order; every block is pre-norm,
``x + attn(norm(x))`` then ``x + ffn(norm(x))``, with causal scaled-dot-product attention
(PyTorch's fused SDPA). Two blocks:

* ``block="llama"``: LlamaGen's (Sun et al. 2024, ``autoregressive/models/gpt.py``): RMSNorm, a
  SwiGLU feed-forward whose hidden size is ``2/3 * 4 * dim`` rounded up to a multiple of 256,
  linears without biases, dropout on the token embeddings, after the attention output projection
  and after the feed-forward (0.1 each in its recipe), normal(0.02) initialisation and a zero
  output head. With ``positions="rope2d"`` (its choice) each query and key is rotated by its code's
  row in one half of the head and its column in the other; the class token's rows of the table are
  zero, as LlamaGen has them, so its query and key vectors are zero.
* ``block="gpt2"``: GPT-2's (Radford et al. 2019) as VQ-GAN's transformer has it: LayerNorm, a
  GELU MLP of ``mlp_ratio * dim``, biased linears, dropout on the attention weights and the MLP
  output, depth-scaled initialisation of the residual projections.

Positions: ``rope2d`` (above), ``rope`` (1-D rotary over the sequence, Su et al. 2021; the class
token at position 0 is not rotated) or ``learned`` (absolute). The class embedding has one extra
row, the *null class*: training replaces a label by it with probability ``label_dropout`` so that
one network gives both the conditional and the unconditional logits that classifier-free guidance
(Ho & Salimans 2022) mixes at sampling time.

``forward(tokens, labels, cache=None)`` returns next-token logits for every position; with a
:class:`KVCache` it processes only the new positions and appends their keys and values, which turns
sampling from quadratic into linear work per token.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bigtrain.config.typed import option
from bigtrain.models.prior_prefix import Condition, build_prefix
from bigtrain.models.registry import register_model


@dataclass
class PriorConfig:
    vocab: int  # codebook size
    seq_len: int  # image tokens (grid h * w)
    num_classes: int  # 0: unconditional (the class token is then always the null class)
    dim: int = 768
    layers: int = 12
    heads: int = 12
    mlp_ratio: float = 4.0  # gpt2 block
    dropout: float = 0.0  # gpt2: attention weights and MLP output; llama: attention output and FFN
    positions: str = "rope"  # rope | rope2d | learned
    label_dropout: float = 0.1
    block: str = "gpt2"  # gpt2 | llama
    token_dropout: float = 0.0  # on the input embeddings (LlamaGen's token_dropout_p)
    ffn_multiple_of: int = 256  # llama: the SwiGLU hidden size is rounded up to a multiple of this
    norm_eps: float = 1e-5


BLOCKS = ("llama", "gpt2")
POSITIONS = ("rope2d", "rope", "learned")


class KVCache:
    """Per-layer key/value buffers ``[B, heads, max_len, head_dim]`` filled left to right."""

    def __init__(
        self,
        layers: int,
        batch: int,
        heads: int,
        max_len: int,
        head_dim: int,
        device: torch.device,
        dtype: torch.dtype,
    ) -> None:
        shape = (batch, heads, max_len, head_dim)
        self.k = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(layers)]
        self.v = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(layers)]
        self.length = 0  # positions filled

    def append(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        start, end = self.length, self.length + k.shape[2]
        self.k[layer][:, :, start:end] = k
        self.v[layer][:, :, start:end] = v
        return self.k[layer][:, :, :end], self.v[layer][:, :, :end]


def rope_tables(seq_len: int, head_dim: int, base: float = 10000.0) -> tuple[Tensor, Tensor]:
    """cos/sin tables ``[seq_len, head_dim / 2]`` for rotary embeddings."""
    inv = 1.0 / base ** (torch.arange(0, head_dim, 2).float() / head_dim)
    angles = torch.outer(torch.arange(seq_len).float(), inv)
    return angles.cos(), angles.sin()


def rope2d_tables(grid: int, head_dim: int, base: float = 10000.0, prefix: int = 1) -> tuple[Tensor, Tensor]:
    """LlamaGen's 2-D rotary tables ``[prefix + grid * grid, head_dim / 2]``: for the code at (row r,
    column c) the first ``head_dim / 4`` angles are ``r * f`` and the last ``c * f`` with
    ``f = base^(-4i / head_dim)``. A one-position prefix (the class token) has a row of zeros,
    cosines included, as LlamaGen has it; a longer prefix (caption words, condition codes) is not
    rotated (cosine 1, sine 0): zero rows would zero those positions' queries and keys, so the codes
    could attend to a caption's words only uniformly."""
    if head_dim % 4:
        raise ValueError(f"2-D rotary positions need a head size divisible by 4, got {head_dim}")
    half = head_dim // 2
    inv = 1.0 / base ** (torch.arange(0, half, 2)[: half // 2].float() / half)
    angles = torch.outer(torch.arange(grid).float(), inv)  # [grid, head_dim / 4]
    table = torch.cat(
        [angles[:, None, :].expand(-1, grid, -1), angles[None, :, :].expand(grid, -1, -1)], dim=-1
    ).flatten(0, 1)  # [grid * grid, head_dim / 2], row-major like the raster order of the codes
    zero = torch.zeros(prefix, half)
    first = zero if prefix == 1 else torch.ones(prefix, half)
    return torch.cat([first, table.cos()]), torch.cat([zero, table.sin()])


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate pairs ``(x[2i], x[2i+1])`` of ``x: [B, H, T, D]`` by the angles of positions ``T``."""
    x1, x2 = x.float()[..., 0::2], x.float()[..., 1::2]
    out = torch.stack([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1).flatten(-2)
    return out.to(x.dtype)


class RMSNorm(nn.Module):
    """``x / rms(x) * weight``, computed in fp32 and cast back (as LlamaGen's, so bf16 runs agree)."""

    def __init__(self, dim: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        xf = x.float()
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)).type_as(x) * self.weight


class SwiGLU(nn.Module):
    """``w2(silu(w1 x) * w3 x)`` (Shazeer 2020), dropout on the output."""

    def __init__(self, dim: int, hidden: int, dropout: float) -> None:
        super().__init__()
        self.w1 = nn.Linear(dim, hidden, bias=False)
        self.w3 = nn.Linear(dim, hidden, bias=False)
        self.w2 = nn.Linear(hidden, dim, bias=False)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.dropout(self.w2(F.silu(self.w1(x)) * self.w3(x)))


def swiglu_hidden(dim: int, multiple_of: int) -> int:
    """LlamaGen's (and LLaMA's) rule: two thirds of 4 * dim, rounded up to ``multiple_of``."""
    hidden = int(2 * 4 * dim / 3)
    return -(-hidden // multiple_of) * multiple_of


class Attention(nn.Module):
    def __init__(self, cfg: PriorConfig) -> None:
        super().__init__()
        if cfg.dim % cfg.heads != 0:
            raise ValueError(f"dim {cfg.dim} is not divisible by heads {cfg.heads}")
        llama = cfg.block == "llama"
        self.heads, self.head_dim = cfg.heads, cfg.dim // cfg.heads
        self.qkv = nn.Linear(cfg.dim, 3 * cfg.dim, bias=not llama)
        self.proj = nn.Linear(cfg.dim, cfg.dim, bias=not llama)
        self.dropout = 0.0 if llama else cfg.dropout  # on the attention weights (gpt2)
        self.out_dropout = nn.Dropout(cfg.dropout if llama else 0.0)  # on the output (llama)

    def forward(
        self, x: Tensor, rope: tuple[Tensor, Tensor] | None, cache: KVCache | None, layer: int
    ) -> Tensor:
        b, t, c = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        causal = True
        if cache is not None:
            past = cache.length
            k, v = cache.append(layer, k, v)
            if past > 0:  # new queries see every cached position and the new ones causally
                causal = False
                mask = torch.ones(t, past + t, dtype=torch.bool, device=x.device).tril(past)
        if causal:
            out = F.scaled_dot_product_attention(
                q, k, v, is_causal=True, dropout_p=self.dropout if self.training else 0.0
            )
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.out_dropout(self.proj(out.transpose(1, 2).reshape(b, t, c)))


class Block(nn.Module):
    def __init__(self, cfg: PriorConfig) -> None:
        super().__init__()
        self.attn = Attention(cfg)
        self.mlp: nn.Module
        if cfg.block == "llama":
            self.ln1 = RMSNorm(cfg.dim, cfg.norm_eps)
            self.ln2 = RMSNorm(cfg.dim, cfg.norm_eps)
            self.mlp = SwiGLU(cfg.dim, swiglu_hidden(cfg.dim, cfg.ffn_multiple_of), cfg.dropout)
        else:
            self.ln1 = nn.LayerNorm(cfg.dim)
            self.ln2 = nn.LayerNorm(cfg.dim)
            hidden = int(cfg.dim * cfg.mlp_ratio)
            self.mlp = nn.Sequential(
                nn.Linear(cfg.dim, hidden),
                nn.GELU(approximate="tanh"),
                nn.Linear(hidden, cfg.dim),
                nn.Dropout(cfg.dropout),
            )

    def forward(
        self, x: Tensor, rope: tuple[Tensor, Tensor] | None, cache: KVCache | None, layer: int
    ) -> Tensor:
        x = x + self.attn(self.ln1(x), rope, cache, layer)
        return x + self.mlp(self.ln2(x))


class NextCodePrior(nn.Module):
    """What ``task=prior`` trains and samples through, whatever the network: a condition prefix of
    ``prefix_len`` positions (``embed_prefix``), then ``forward(tokens, labels, cache, prefix=,
    drop=)`` -> logits ``[B, prefix_len - 1 + T + 1, vocab]`` predicting each code from those
    before it, and ``new_cache`` (None: sampling recomputes every step). ``cfg`` has ``vocab``,
    ``seq_len``, ``num_classes`` and ``label_dropout``. :class:`TokenPrior` is the transformer;
    :mod:`bigtrain.models.pixelcnn_prior` the gated PixelCNN over the code grid."""

    cfg: Any
    prefix_len: int
    cls_emb: nn.Embedding | None

    @property
    def null_class(self) -> int:
        return self.cfg.num_classes

    def class_prefix(self, cond: Tensor | None, batch: int, drop: Tensor | None = None) -> Tensor:
        """Class labels ``[B]`` as ``[B, 1, dim]``; None (or ``drop`` true for a row) gives the
        null class, the last row of ``cls_emb``."""
        assert self.cls_emb is not None
        device = self.cls_emb.weight.device
        if cond is None:
            cond = torch.full((batch,), self.null_class, dtype=torch.long, device=device)
        if drop is not None:
            cond = torch.where(drop, torch.full_like(cond, self.null_class), cond)
        return self.cls_emb(cond)[:, None]

    def code_logits(self, tokens: Tensor, cond: Tensor | None, drop: Tensor | None = None) -> Tensor:
        """Training's logits ``[B, seq_len, vocab]``: position ``t`` predicts code ``t`` from the
        condition (replaced by the null prefix where ``drop``) and ``tokens[:, :t]``."""
        return self(tokens[:, :-1], cond, drop=drop)[:, self.prefix_len - 1 :]

    def loss(self, tokens: Tensor, labels: Tensor | None, generator: torch.Generator | None = None) -> Tensor:
        """Next-token cross-entropy over all ``seq_len`` codes, with condition dropout for CFG."""
        drop = None
        if labels is not None and self.training and self.cfg.label_dropout > 0:
            u = torch.rand(tokens.shape[0], generator=generator, device=tokens.device)
            drop = u < self.cfg.label_dropout
        logits = self.code_logits(tokens, labels, drop)
        return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), tokens.reshape(-1))


class TokenPrior(NextCodePrior):
    def __init__(self, cfg: PriorConfig, condition: Condition | None = None) -> None:
        super().__init__()
        condition = condition or Condition("class", cfg.num_classes)
        if condition.kind == "class" and condition.num_classes != cfg.num_classes:
            raise ValueError("a class condition's num_classes must be the prior's")
        if cfg.positions not in POSITIONS:
            raise ValueError(f"positions must be one of {', '.join(POSITIONS)}, got {cfg.positions!r}")
        if cfg.block not in BLOCKS:
            raise ValueError(f"block must be one of {', '.join(BLOCKS)}, got {cfg.block!r}")
        self.cfg, self.condition = cfg, condition
        self.prefix_len = p = condition.prefix_len
        self.tok_emb = nn.Embedding(cfg.vocab, cfg.dim)
        self.cls_emb: nn.Embedding | None = None
        if condition.kind == "class":  # the last row is the null class
            self.cls_emb = nn.Embedding(cfg.num_classes + 1, cfg.dim)
        self.prefix = build_prefix(condition, cfg.dim)
        self.pos_emb = (
            nn.Parameter(torch.zeros(p + cfg.seq_len, cfg.dim)) if cfg.positions == "learned" else None
        )
        self.token_dropout = nn.Dropout(cfg.token_dropout)
        self.blocks = nn.ModuleList([Block(cfg) for _ in range(cfg.layers)])
        self.ln_f = RMSNorm(cfg.dim, cfg.norm_eps) if cfg.block == "llama" else nn.LayerNorm(cfg.dim)
        self.head = nn.Linear(cfg.dim, cfg.vocab, bias=False)
        head_dim = cfg.dim // cfg.heads
        if cfg.positions == "rope":
            cos, sin = rope_tables(p + cfg.seq_len, head_dim)
        elif cfg.positions == "rope2d":
            grid = math.isqrt(cfg.seq_len)
            if grid * grid != cfg.seq_len:
                raise ValueError(f"positions=rope2d needs a square token grid, got {cfg.seq_len} codes")
            cos, sin = rope2d_tables(grid, head_dim, prefix=p)
        if cfg.positions != "learned":
            self.register_buffer("rope_cos", cos, persistent=False)
            self.register_buffer("rope_sin", sin, persistent=False)
        self.apply(self._init)
        if cfg.block == "llama":  # LlamaGen: a zero output head, so every code starts equally likely
            nn.init.zeros_(self.head.weight)
        else:
            for name, p in self.named_parameters():  # GPT-2: scale residual projections by depth
                if name.endswith(("attn.proj.weight", "mlp.2.weight")):
                    nn.init.normal_(p, 0.0, 0.02 / math.sqrt(2 * cfg.layers))

    @staticmethod
    def _init(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0.0, 0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, 0.0, 0.02)

    def embed_prefix(self, cond: Tensor | None, batch: int, drop: Tensor | None = None) -> Tensor:
        """The condition as ``[batch, prefix_len, dim]``: class labels ``[B]``, caption word ids
        ``[B, L]`` or features ``[B, L, F]``, or condition codes ``[B, P]``; None (or ``drop``
        true for a row) gives the null prefix."""
        if self.cls_emb is not None:
            return self.class_prefix(cond, batch, drop)
        assert self.prefix is not None
        if cond is None:
            return self.prefix.null_prefix(batch)
        return self.prefix(cond, drop)

    def forward(
        self,
        tokens: Tensor,
        labels: Tensor | None = None,
        cache: KVCache | None = None,
        *,
        prefix: Tensor | None = None,
        drop: Tensor | None = None,
    ) -> Tensor:
        """Logits ``[B, P - 1 + T + 1, vocab]``: the last ``T + 1`` positions predict codes ``0..T``
        from the condition prefix (``P`` positions) and the codes before them.

        Without a cache (training), ``tokens [B, T]`` are the first ``T <= seq_len`` codes; with a
        cache, only the new positions are computed: the first call passes the prefix alone
        (``tokens`` of length 0). The condition is ``labels`` (any kind :meth:`embed_prefix` takes;
        rows where ``drop`` is true become the null prefix) or its embedding ``prefix`` already made
        (sampling makes it once).
        """
        b = tokens.shape[0]
        start = 0 if cache is None else cache.length
        parts = []
        if start == 0:
            parts.append(self.embed_prefix(labels, b, drop) if prefix is None else prefix)
        if tokens.shape[1] > 0:
            parts.append(self.tok_emb(tokens))
        x = self.token_dropout(torch.cat(parts, dim=1) if len(parts) > 1 else parts[0])
        t = x.shape[1]
        total = self.prefix_len + self.cfg.seq_len
        if start + t > total:
            raise ValueError(f"sequence of {start + t} positions exceeds prefix + seq_len = {total}")
        rope = None
        if self.pos_emb is not None:
            x = x + self.pos_emb[start : start + t]
        else:
            rope = (self.rope_cos[start : start + t], self.rope_sin[start : start + t])
        for i, block in enumerate(self.blocks):
            x = block(x, rope, cache, i)
        if cache is not None:
            cache.length += t
        return self.head(self.ln_f(x))

    def new_cache(self, batch: int, device: torch.device, dtype: torch.dtype = torch.float32) -> KVCache:
        c = self.cfg
        return KVCache(c.layers, batch, c.heads, self.prefix_len + c.seq_len, c.dim // c.heads, device, dtype)


def _filter(logits: Tensor, top_k: int, top_p: float) -> Tensor:
    """Keep the ``top_k`` largest logits and the smallest set whose probability reaches ``top_p``."""
    if top_k > 0:
        kth = torch.topk(logits, min(top_k, logits.shape[-1]), dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if 0.0 < top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        cum = sorted_logits.softmax(-1).cumsum(-1)
        remove = cum - sorted_logits.softmax(-1) >= top_p  # keep the token that crosses top_p
        sorted_logits = sorted_logits.masked_fill(remove, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    return logits


def _guided_prefix(
    model: TokenPrior, cond: Tensor | None, batch: int, cfg_scale: float
) -> tuple[Tensor, bool]:
    """The prefix to sample from: ``[batch]`` rows, or ``[2 * batch]`` (conditional, then null) for
    classifier-free guidance."""
    guided = cfg_scale != 1.0 and cond is not None
    prefix = model.embed_prefix(cond, batch)
    if guided:
        prefix = torch.cat([prefix, model.embed_prefix(None, batch).to(prefix.dtype)])
    return prefix, guided


def _next_code(
    logits: Tensor,
    batch: int,
    guided: bool,
    cfg_scale: float,
    temperature: float,
    top_k: int,
    top_p: float,
    generator: torch.Generator | None,
) -> Tensor:
    logits = logits.float()
    if guided:
        cond, uncond = logits[:batch], logits[batch:]
        logits = uncond + cfg_scale * (cond - uncond)
    logits = _filter(logits / max(temperature, 1e-6), top_k, top_p)
    return torch.multinomial(logits.softmax(-1), 1, generator=generator)


@torch.no_grad()
def generate(
    model: TokenPrior,
    labels: Tensor | None,
    batch: int,
    *,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    cfg_scale: float = 1.0,
    use_cache: bool = True,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Sample ``[batch, seq_len]`` codes given the condition ``labels`` (any kind
    :meth:`TokenPrior.embed_prefix` takes; None: unconditional). ``cfg_scale != 1`` mixes the
    conditional and null-prefix logits: ``uncond + s * (cond - uncond)`` (both halves run in one
    batch). ``use_cache=False`` recomputes the whole prefix at every step (the reference path the
    KV-cache test compares against)."""
    device = next(model.parameters()).device
    was = model.training
    model.eval()
    try:
        prefix, guided = _guided_prefix(model, labels, batch, cfg_scale)
        out = torch.empty(batch, 0, dtype=torch.long, device=device)
        cache = model.new_cache(prefix.shape[0], device, prefix.dtype) if use_cache else None
        for _ in range(model.cfg.seq_len):
            seq = torch.cat([out, out]) if guided else out
            if cache is not None:
                new = seq[:, -1:] if cache.length > 0 else seq[:, :0]
                logits = model(new, cache=cache, prefix=prefix)[:, -1]
            else:
                logits = model(seq, prefix=prefix)[:, -1]
            nxt = _next_code(logits, batch, guided, cfg_scale, temperature, top_k, top_p, generator)
            out = torch.cat([out, nxt], dim=1)
    finally:
        model.train(was)
    return out


def window_start(i: int, size: int, window: int) -> int:
    """Where a ``window``-long window over ``size`` positions starts so that it holds position ``i``
    at its centre where it can (taming's sliding-window sampling), clamped to the grid."""
    return min(max(i - window // 2, 0), size - window)


@torch.no_grad()
def generate_windowed(
    model: TokenPrior,
    labels: Tensor | None,
    batch: int,
    grid: tuple[int, int],
    *,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    cfg_scale: float = 1.0,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Sample a code grid ``[batch, H, W]`` larger than the training grid (Esser et al. 2021, sec.
    4.3): each code is drawn by the prior looking at a training-sized window of the grid around it
    (centred where the grid allows), in raster order, so the window always holds the codes drawn
    before it and the prior sees sequences of the length and layout it was trained on. The condition
    prefix is the same for every window. On the training grid itself every window is the whole grid
    and this is :func:`generate` without a cache, draw for draw."""
    side = math.isqrt(model.cfg.seq_len)
    if side * side != model.cfg.seq_len:
        raise ValueError(
            f"windowed sampling needs a square token grid, the prior has {model.cfg.seq_len} codes"
        )
    h, w = grid
    if h < side or w < side:
        raise ValueError(f"the grid {h}x{w} is smaller than the training grid {side}x{side}")
    device = next(model.parameters()).device
    was = model.training
    model.eval()
    try:
        prefix, guided = _guided_prefix(model, labels, batch, cfg_scale)
        codes = torch.zeros(batch, h, w, dtype=torch.long, device=device)
        for i in range(h):
            i0 = window_start(i, h, side)
            for j in range(w):
                j0 = window_start(j, w, side)
                seen = codes[:, i0 : i0 + side, j0 : j0 + side].reshape(batch, -1)
                seen = seen[:, : (i - i0) * side + (j - j0)]
                seq = torch.cat([seen, seen]) if guided else seen
                logits = model(seq, prefix=prefix)[:, -1]
                nxt = _next_code(logits, batch, guided, cfg_scale, temperature, top_k, top_p, generator)
                codes[:, i, j] = nxt[:, 0]
    finally:
        model.train(was)
    return codes


__all__ = [
    "GPTArch",
    "KVCache",
    "PriorConfig",
    "NextCodePrior",
    "TokenPrior",
    "build_gpt",
    "generate",
    "generate_windowed",
    "window_start",
]


@dataclass
class GPTArch:
    """``model.arch`` of the prior; the defaults are LlamaGen's GPT-B (c2i)."""

    block: str = option("llama", "llama: LlamaGen's (RMSNorm, SwiGLU, no biases) | gpt2: LayerNorm, GELU MLP")
    dim: int = option(768, "model width")
    layers: int = option(12, "transformer blocks")
    heads: int = option(12, "attention heads")
    mlp_ratio: float = option(4.0, "MLP width / dim (block=gpt2; llama: 2/3 * 4 * dim up to ffn_multiple_of)")
    ffn_multiple_of: int = option(256, "SwiGLU hidden size rounded up to this (block=llama)")
    dropout: float = option(
        0.1, "llama: after attention and FFN (resid/ffn_dropout_p) | gpt2: attention, MLP"
    )
    token_dropout: float = option(0.1, "dropout on the input embeddings (LlamaGen's token_dropout_p)")
    positions: str = option("rope2d", "rope2d: rotary over the code grid, as LlamaGen | rope: 1-D | learned")
    label_dropout: float = option(0.1, "P(class -> the null class) in training, for classifier-free guidance")
    vocab: int = option(0, "codebook size, used only without token shards (bigtrain info); dataset.json wins")
    token_grid: int = option(0, "token grid side, used only without token shards; dataset.json wins")


@register_model(
    "gpt", kind="prior", arch=GPTArch, help="decoder-only transformer over codes (VQGAN, LlamaGen)"
)
def build_gpt(
    *, vocab: int, seq_len: int, num_classes: int, arch: GPTArch, condition: Condition | None = None
) -> TokenPrior:
    """The prior over ``seq_len`` codes of a ``vocab``-code tokenizer, conditioned on a class
    (``num_classes``; the default) or on ``condition`` (text, a condition image's codes)."""
    return TokenPrior(
        PriorConfig(
            vocab=vocab,
            seq_len=seq_len,
            num_classes=num_classes,
            dim=arch.dim,
            layers=arch.layers,
            heads=arch.heads,
            mlp_ratio=float(arch.mlp_ratio),
            dropout=float(arch.dropout),
            positions=arch.positions,
            label_dropout=float(arch.label_dropout),
            block=arch.block,
            token_dropout=float(arch.token_dropout),
            ffn_multiple_of=int(arch.ffn_multiple_of),
        ),
        condition,
    )
