"""The stage-2 transformer prior: causality, the KV cache, sampling filters and guidance."""

from __future__ import annotations

import pytest
import torch

from bigtrain.models.transformer import PriorConfig, TokenPrior, _filter, generate

CLASSES = 10


VARIANTS = [("gpt2", "rope"), ("gpt2", "learned"), ("llama", "rope2d"), ("llama", "rope")]


def _model(positions: str = "rope", block: str = "gpt2", **kw: object) -> TokenPrior:
    torch.manual_seed(0)
    cfg = PriorConfig(
        vocab=32,
        seq_len=16,
        num_classes=CLASSES,
        dim=64,
        layers=2,
        heads=4,
        positions=positions,
        block=block,
        **kw,
    )  # type: ignore[arg-type]
    m = TokenPrior(cfg)
    if block == "llama":  # its head starts at zero (every logit 0): give the tests something to see
        torch.nn.init.normal_(m.head.weight, 0.0, 0.02)
    return m.eval()


def test_gpt_b_size() -> None:
    """LlamaGen's GPT-B (768 wide, 12 layers, 12 heads) over a 16,384-code tokenizer's 256 tokens has
    110,888,448 parameters when built from LlamaGen's own gpt.py (GPT_B(vocab_size=16384), c2i, 1,000
    classes); the GPT-2-style block of the same shape has 110,990,592."""
    with torch.device("meta"):
        llama = TokenPrior(
            PriorConfig(vocab=16384, seq_len=256, num_classes=1000, block="llama", positions="rope2d")
        )
        gpt2 = TokenPrior(PriorConfig(vocab=16384, seq_len=256, num_classes=1000))
    assert sum(p.numel() for p in llama.parameters()) == 110_888_448
    assert sum(p.numel() for p in gpt2.parameters()) == 110_990_592
    assert llama.blocks[0].mlp.w1.out_features == 2048  # 2/3 * 4 * 768, a multiple of 256
    assert all(p.ndim == 2 or "ln" in n for n, p in llama.named_parameters())  # no biases anywhere


def test_rope2d_rotates_by_row_and_column_and_zeroes_the_class_token() -> None:
    """LlamaGen's table: the code at (r, c) of a 4x4 grid turns by r * f in the first half of the pairs
    and by c * f in the second; the class token's row is zero (its query and key vanish)."""
    from bigtrain.models.transformer import rope2d_tables

    cos, sin = rope2d_tables(4, 16)
    assert (
        cos.shape == (17, 8) and torch.equal(cos[0], torch.zeros(8)) and torch.equal(sin[0], torch.zeros(8))
    )
    f = 1.0 / 10000 ** (torch.arange(0, 8, 2).float() / 8)
    r, c = 2, 3
    angles = torch.cat([r * f, c * f])
    torch.testing.assert_close(cos[1 + r * 4 + c], angles.cos())
    torch.testing.assert_close(sin[1 + r * 4 + c], angles.sin())


@pytest.mark.parametrize(("block", "positions"), VARIANTS)
def test_causal_a_token_only_sees_its_past(block: str, positions: str) -> None:
    m = _model(positions, block)
    toks = torch.randint(0, 32, (2, 16))
    y = torch.tensor([1, 2])
    base = m(toks[:, :-1], y)
    changed = toks.clone()
    changed[:, 9] = (changed[:, 9] + 1) % 32
    other = m(changed[:, :-1], y)
    # Position p predicts token p from tokens < p: outputs up to p = 9 are unchanged.
    torch.testing.assert_close(base[:, :10], other[:, :10])
    assert not torch.allclose(base[:, 10:], other[:, 10:])
    assert base.shape == (2, 16, 32)


@pytest.mark.parametrize(("block", "positions"), VARIANTS)
def test_kv_cache_gives_the_same_logits_and_tokens(block: str, positions: str) -> None:
    m = _model(positions, block)
    y = torch.arange(4)
    for kw in ({}, {"top_k": 8, "top_p": 0.9, "temperature": 0.8}, {"cfg_scale": 3.0}):
        a = generate(m, y, 4, use_cache=True, generator=torch.Generator().manual_seed(7), **kw)  # type: ignore[arg-type]
        b = generate(m, y, 4, use_cache=False, generator=torch.Generator().manual_seed(7), **kw)  # type: ignore[arg-type]
        assert torch.equal(a, b), kw
        assert a.shape == (4, 16) and a.max() < 32
    toks = a
    cache = m.new_cache(4, torch.device("cpu"))
    steps = [m(toks[:, :0], y, cache)[:, -1]]
    steps += [m(toks[:, i : i + 1], y, cache)[:, -1] for i in range(15)]
    torch.testing.assert_close(torch.stack(steps, 1), m(toks[:, :-1], y), atol=1e-5, rtol=1e-5)


def test_filters() -> None:
    logits = torch.tensor([[1.0, 3.0, 2.0, 0.0]])
    assert torch.isinf(_filter(logits, 2, 1.0)).tolist() == [[True, False, False, True]]
    # softmax ~ [0.09, 0.64, 0.24, 0.03]: top-p 0.7 keeps the top two (0.64 alone is below 0.7)
    assert torch.isinf(_filter(logits, 0, 0.7)).tolist() == [[True, False, False, True]]
    assert not torch.isinf(_filter(logits, 0, 1.0)).any()


def test_guidance_pushes_towards_the_class_and_label_dropout_uses_the_null_class() -> None:
    m = _model(label_dropout=1.0)
    m.train()
    toks = torch.randint(0, 32, (8, 16))
    y = torch.randint(0, CLASSES, (8,))
    # With dropout 1.0 every label becomes the null class: the loss equals the unconditional one.
    torch.testing.assert_close(m.loss(toks, y), m.loss(toks, None))
    m.eval()
    assert m(toks[:, :0], torch.full((1,), CLASSES)).shape == (1, 1, 32)
    with pytest.raises(ValueError, match="exceeds"):
        m(torch.zeros(1, 17, dtype=torch.long), torch.zeros(1, dtype=torch.long))


def test_loss_learns_a_fixed_sequence() -> None:
    m = _model()
    m.train()
    toks = torch.randint(0, 32, (1, 16)).repeat(4, 1)
    y = torch.zeros(4, dtype=torch.long)
    opt = torch.optim.Adam(m.parameters(), lr=3e-3)
    first = m.loss(toks, y).item()
    for _ in range(60):
        opt.zero_grad()
        m.loss(toks, y).backward()
        opt.step()
    assert m.loss(toks, y).item() < 0.1 * first
    m.eval()
    sampled = generate(m, y[:1], 1, temperature=0.01, generator=torch.Generator().manual_seed(0))
    assert torch.equal(sampled[0], toks[0])  # near-greedy sampling reproduces what it learned
