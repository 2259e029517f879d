"""DiffAugment: each policy does what it says, stays differentiable, and is seeded by torch's RNG."""

from __future__ import annotations

import pytest
import torch

from bigtrain.train.augment import diff_augment, parse_policy


def test_translation_shifts_content_with_zero_fill() -> None:
    x = torch.zeros(64, 1, 16, 16)
    x[:, :, 8, 8] = 1.0
    torch.manual_seed(0)
    y = diff_augment(x, ("translation",))
    pos = [divmod(int(img.flatten().argmax()), 16) for img in y]
    assert all(abs(i - 8) <= 2 and abs(j - 8) <= 2 for i, j in pos)  # at most 1/8 of 16 = 2 pixels
    assert len(set(pos)) > 5 and torch.allclose(y.sum(dim=(1, 2, 3)), torch.ones(64))


def test_cutout_zeroes_a_square_of_half_the_side() -> None:
    torch.manual_seed(0)
    y = diff_augment(torch.ones(32, 3, 16, 16), ("cutout",))
    zeros = (y[:, 0] == 0).sum(dim=(1, 2))
    assert zeros.max() == 64 and zeros.min() > 0  # 8x8 when fully inside, less at the border
    assert torch.equal(y[:, 0] == 0, y[:, 2] == 0)  # same region in every channel


def test_color_changes_statistics_per_sample() -> None:
    torch.manual_seed(0)
    x = torch.rand(16, 3, 8, 8) * 2 - 1
    y = diff_augment(x, ("color",))
    assert not torch.allclose(x.mean(dim=(1, 2, 3)), y.mean(dim=(1, 2, 3)))


def test_differentiable_reproducible_and_validated() -> None:
    x = torch.rand(4, 3, 16, 16, requires_grad=True)
    policy = parse_policy("color, translation,cutout")
    torch.manual_seed(5)
    a = diff_augment(x, policy)
    a.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    torch.manual_seed(5)
    assert torch.equal(a, diff_augment(x, policy))
    assert parse_policy("") == ()
    with pytest.raises(ValueError, match="unknown DiffAugment policy 'rotate'"):
        parse_policy("color,rotate")
