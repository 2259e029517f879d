"""The gated PixelCNN as the prior over codes (`model=pixelcnn_prior`): each position's logits see
only the codes before it in raster order, the logits of a prefix are those of the whole sequence,
the transformer's sampler draws from it (with classifier-free guidance, through its row cache: the
full pass's logits) and it learns."""

from __future__ import annotations

import pytest
import torch

from bigtrain.models import build_model
from bigtrain.models.prior_prefix import Condition
from bigtrain.models.transformer import generate


def _prior(
    classes: int = 3, grid: int = 4, vocab: int = 7, layers: int = 3, kernel: int = 3, input_kernel: int = 3
) -> torch.nn.Module:
    torch.manual_seed(0)
    arch = {"layers": layers, "width": 8, "dim": 8, "kernel": kernel, "input_kernel": input_kernel}
    model = build_model("pixelcnn_prior", arch, vocab=vocab, seq_len=grid * grid, num_classes=classes)
    torch.nn.init.normal_(model.head.weight, std=0.5)  # the zero-initialised head would hide everything
    return model.double()


def test_each_position_sees_only_the_codes_before_it() -> None:
    model = _prior()
    g = torch.Generator().manual_seed(1)
    codes = torch.randint(0, 7, (2, 16), generator=g)
    labels = torch.tensor([0, 2])
    full = model(codes[:, :-1], labels)  # positions 0..15
    assert full.shape == (2, 16, 7)
    for t in range(16):
        changed = codes.clone()
        changed[:, t:] = torch.randint(0, 7, (2, 16 - t), generator=g)
        again = model(changed[:, :-1], labels)
        assert torch.equal(again[:, : t + 1], full[:, : t + 1]), t  # what t predicts ignores codes >= t
        assert torch.equal(model(codes[:, :t], labels), full[:, : t + 1])  # a prefix's logits: the same
    # the class matters, and a dropped class is the null class's prefix
    assert not torch.equal(model(codes[:, :-1], torch.tensor([1, 2])), full)
    dropped = model(codes[:, :-1], labels, drop=torch.tensor([True, False]))
    assert torch.allclose(dropped[0], model(codes[:1, :-1], torch.tensor([model.null_class]))[0], atol=1e-12)


def test_the_transformers_sampler_draws_from_it_with_guidance() -> None:
    model = _prior()
    labels = torch.tensor([0, 1, 2])
    a = generate(model, labels, 3, cfg_scale=2.0, generator=torch.Generator().manual_seed(3))
    b = generate(model, labels, 3, cfg_scale=2.0, generator=torch.Generator().manual_seed(3))
    assert a.shape == (3, 16) and torch.equal(a, b) and int(a.max()) < 7
    # draw for draw what the logits of the partial sequence give
    g = torch.Generator().manual_seed(3)
    out = torch.empty(3, 0, dtype=torch.long)
    with torch.no_grad():
        for _ in range(16):
            cond, null = model(out, labels)[:, -1], model(out, None)[:, -1]
            logits = (null + 2.0 * (cond - null)).float()
            out = torch.cat([out, torch.multinomial(logits.softmax(-1), 1, generator=g)], 1)
    assert torch.equal(out, a)


def test_it_learns_and_refuses_what_it_cannot_do() -> None:
    model = _prior().float()
    labels = torch.arange(16) % 3
    codes = (
        labels[:, None] + torch.arange(16)[None]
    ) % 7  # each code follows from the class and the one before
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(30):
        loss = model.loss(codes, labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss))
    assert losses[-1] < 0.3 * losses[0]
    with pytest.raises(ValueError, match="conditions on a class only"):
        build_model(
            "pixelcnn_prior",
            {},
            vocab=7,
            seq_len=16,
            num_classes=0,
            condition=Condition("image", cond_vocab=7, cond_len=16),
        )
    with pytest.raises(ValueError, match="square code grid"):
        build_model("pixelcnn_prior", {}, vocab=7, seq_len=12, num_classes=0)
    cache = model.new_cache(16, torch.device("cpu"))
    model(codes[:, :15], labels, cache=cache)  # the last position predicted: nothing after it
    with pytest.raises(ValueError, match="no position after 15 to predict"):
        model(codes[:, 15:], labels, cache=cache)


@pytest.mark.parametrize(
    ("grid", "layers", "kernel", "input_kernel"),
    [
        (4, 3, 3, 3),  # every column within reach
        (6, 2, 3, 3),  # 2 columns of 6 reach a code
        (8, 2, 3, 5),  # the preset's kernels: the first layer keeps 3 rows, reach 3 of 8
        (7, 3, 5, 3),  # wider later layers: 3 rows kept, reach 5 of 7
    ],
)
def test_the_row_cache_gives_the_full_passes_logits_at_every_position(
    grid: int, layers: int, kernel: int, input_kernel: int
) -> None:
    """Sampling's cache: each layer's vertical stack advanced a row at a time, the horizontal stack
    run over the code's own row: the logits of the full pass at every position, CFG halves and all."""
    model = _prior(grid=grid, layers=layers, kernel=kernel, input_kernel=input_kernel)
    n = grid * grid
    g = torch.Generator().manual_seed(4)
    codes = torch.randint(0, 7, (4, n), generator=g)
    prefix = model.embed_prefix(torch.tensor([0, 2, 1, 1]), 4, drop=torch.tensor([False, False, True, True]))
    full = model(codes[:, :-1], prefix=prefix)  # [4, n, vocab]
    cache = model.new_cache(4, torch.device("cpu"))
    with torch.no_grad():
        steps = [model(codes[:, :0], prefix=prefix, cache=cache)]
        steps += [model(codes[:, t : t + 1], prefix=prefix, cache=cache) for t in range(n - 1)]
    assert cache.fed == n - 1 and cache.length == n  # the class position and the codes
    torch.testing.assert_close(torch.cat(steps, 1), full.detach(), rtol=0, atol=1e-12)
    # several codes at once (a prefill) land in the same state
    again = model.new_cache(4, torch.device("cpu"))
    with torch.no_grad():
        last = model(codes[:, : n - 1], prefix=prefix, cache=again)
    torch.testing.assert_close(last, full[:, -1:].detach(), rtol=0, atol=1e-12)
