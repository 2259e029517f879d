"""The prior's condition prefix (class, caption, condition codes) and sampling beyond the training
grid: what each prefix feeds the codes, that classifier-free guidance's null prefix is what dropout
trains, that the KV cache and the sliding window draw exactly what the plain path draws."""

from __future__ import annotations

import pytest
import torch

from bigtrain.models.prior_prefix import Condition
from bigtrain.models.transformer import (
    PriorConfig,
    TokenPrior,
    generate,
    generate_windowed,
    rope2d_tables,
    window_start,
)

GRID = 4  # a 4x4 code grid: 16 codes


def _prior(condition: Condition, positions: str = "rope", block: str = "gpt2") -> TokenPrior:
    torch.manual_seed(0)
    cfg = PriorConfig(
        vocab=12,
        seq_len=GRID * GRID,
        num_classes=condition.num_classes,
        dim=32,
        layers=2,
        heads=4,
        positions=positions,
        block=block,
        label_dropout=0.5,
    )
    prior = TokenPrior(cfg, condition)
    with torch.no_grad():  # LlamaGen's zero head would make every draw uniform
        prior.head.weight.normal_(0, 0.5)
    if prior.prefix is not None and getattr(prior.prefix, "encoder", None) is not None:
        prior.prefix.encoder.set_vocabulary(["<pad>", "<unk>", "a", "one", "seven", "thick", "thin"])
    return prior.eval()


TEXT = Condition("text", text_vocab=16, text_len=5, text_layers=1, text_heads=4)
IMAGE = Condition("image", cond_vocab=9, cond_len=GRID * GRID)
CLASS = Condition("class", num_classes=3)


def _cond(condition: Condition, prior: TokenPrior, n: int) -> torch.Tensor:
    if condition.kind == "text":
        captions = ["a thick seven", "a thin one", "seven", "a one"][:n]
        return prior.prefix.encoder.tokenize(captions, pad_to=condition.text_len)  # type: ignore[union-attr]
    if condition.kind == "image":
        return torch.randint(
            0, condition.cond_vocab, (n, condition.cond_len), generator=torch.Generator().manual_seed(1)
        )
    return torch.tensor([0, 2, 1, 0][:n])


@pytest.mark.parametrize("condition", [CLASS, TEXT, IMAGE], ids=["class", "text", "image"])
@pytest.mark.parametrize("positions", ["rope", "rope2d", "learned"])
def test_cache_and_window_draw_what_the_plain_path_draws(condition: Condition, positions: str) -> None:
    prior = _prior(condition, positions, "llama" if positions == "rope2d" else "gpt2")
    cond = _cond(condition, prior, 3)
    draws = {}
    for name, fn in {
        "plain": lambda g: generate(prior, cond, 3, use_cache=False, cfg_scale=2.0, generator=g),
        "cache": lambda g: generate(prior, cond, 3, use_cache=True, cfg_scale=2.0, generator=g),
        "window": lambda g: generate_windowed(
            prior, cond, 3, (GRID, GRID), cfg_scale=2.0, generator=g
        ).flatten(1),
    }.items():
        draws[name] = fn(torch.Generator().manual_seed(5))
    assert torch.equal(draws["plain"], draws["window"])  # on the training grid: draw for draw
    assert torch.equal(draws["plain"], draws["cache"])


def test_the_condition_changes_what_is_drawn() -> None:
    for condition in (TEXT, IMAGE):
        prior = _prior(condition)
        cond = _cond(condition, prior, 2)
        logits = prior(torch.zeros(2, 3, dtype=torch.long), cond)
        assert logits.shape == (2, condition.prefix_len + 3, 12)
        assert not torch.allclose(logits[0], logits[1])  # two conditions, same codes: other predictions


def test_dropout_gives_the_null_prefix_sampling_guides_with() -> None:
    for condition in (CLASS, TEXT, IMAGE):
        prior = _prior(condition)
        cond = _cond(condition, prior, 2)
        dropped = prior.embed_prefix(cond, 2, torch.tensor([True, False]))
        null = prior.embed_prefix(None, 2)
        assert dropped.shape == (2, condition.prefix_len, 32)
        assert torch.equal(dropped[0], null[0])
        assert torch.equal(dropped[1], prior.embed_prefix(cond, 2)[1])
    # a caption of padding only (no caption) is the null prefix too
    prior = _prior(TEXT)
    assert torch.equal(
        prior.embed_prefix(torch.zeros(1, 5, dtype=torch.long), 1), prior.embed_prefix(None, 1)
    )


def test_training_logits_line_up_with_the_codes() -> None:
    """``code_logits``' position t predicts code t whatever the prefix length: the same codes and a
    longer prefix give logits over the same seq_len positions."""
    for condition in (CLASS, TEXT, IMAGE):
        prior = _prior(condition)
        tokens = torch.randint(0, 12, (2, GRID * GRID))
        logits = prior.code_logits(tokens, _cond(condition, prior, 2))
        assert logits.shape == (2, GRID * GRID, 12)
        # causal: changing code 5 changes no prediction of codes 0..5
        other = tokens.clone()
        other[:, 5] = (other[:, 5] + 1) % 12
        again = prior.code_logits(other, _cond(condition, prior, 2))
        assert torch.allclose(logits[:, :6], again[:, :6], atol=1e-6)
        assert not torch.allclose(logits[:, 6:], again[:, 6:])


def test_windowed_sampling_makes_a_larger_grid_deterministically() -> None:
    prior = _prior(CLASS)
    labels = torch.tensor([1, 2])
    a = generate_windowed(prior, labels, 2, (2 * GRID, 2 * GRID), generator=torch.Generator().manual_seed(3))
    b = generate_windowed(prior, labels, 2, (2 * GRID, 2 * GRID), generator=torch.Generator().manual_seed(3))
    assert a.shape == (2, 8, 8) and torch.equal(a, b)
    assert int(a.min()) >= 0 and int(a.max()) < 12
    with pytest.raises(ValueError, match="smaller than the training grid"):
        generate_windowed(prior, labels, 2, (GRID - 1, GRID))


def test_the_window_centres_where_the_grid_allows() -> None:
    # an 8-wide grid, a 4-wide window: starts 0, 0, 0, 1, 2, 3, 4, 4 (clamped at both ends)
    assert [window_start(i, 8, 4) for i in range(8)] == [0, 0, 0, 1, 2, 3, 4, 4]
    assert all(window_start(i, 4, 4) == 0 for i in range(4))  # the training grid: one window


def test_rope2d_prefix_rows() -> None:
    """LlamaGen's one class position keeps its zero row; a longer prefix is not rotated."""
    cos1, sin1 = rope2d_tables(GRID, 8, prefix=1)
    cos5, sin5 = rope2d_tables(GRID, 8, prefix=5)
    assert cos1.shape == (1 + GRID * GRID, 4) and cos5.shape == (5 + GRID * GRID, 4)
    assert torch.all(cos1[0] == 0) and torch.all(sin1[0] == 0)
    assert torch.all(cos5[:5] == 1) and torch.all(sin5[:5] == 0)
    assert torch.equal(cos1[1:], cos5[5:])


def test_a_condition_without_sizes_is_refused() -> None:
    with pytest.raises(ValueError, match="text_len"):
        Condition("text")
    with pytest.raises(ValueError, match="condition tokenizer"):
        Condition("image", cond_vocab=4)
    with pytest.raises(ValueError, match="unknown prior condition"):
        Condition("audio")
