"""The pieces the translation tasks share: the GAN term scaled as the reference scales it, the
history of generated images, and drawing a split's rows in order."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from bigtrain.losses import build_loss
from bigtrain.losses.translation import PatchObjective
from bigtrain.train.in_order import InOrder, first
from bigtrain.train.tasks.cyclegan import ImagePool


def test_patch_objective_is_the_references_gan_loss() -> None:
    """The reference's GANLoss: BCEWithLogits / MSE against targets 1 and 0; D's loss halved, G's not."""
    g = torch.Generator().manual_seed(0)
    real, fake = torch.randn(4, 1, 6, 6, generator=g) * 3, torch.randn(4, 1, 6, 6, generator=g) * 3
    ones, zeros = torch.ones_like(real), torch.zeros_like(real)
    bce, mse = PatchObjective("non_saturating"), PatchObjective("lsgan")
    ref_bce = 0.5 * (
        F.binary_cross_entropy_with_logits(real, ones) + F.binary_cross_entropy_with_logits(fake, zeros)
    )
    assert bce.d_loss(real, fake) == pytest.approx(float(ref_bce), abs=1e-6)
    assert bce.g_loss(fake) == pytest.approx(float(F.binary_cross_entropy_with_logits(fake, ones)), abs=1e-6)
    assert mse.d_loss(real, fake) == pytest.approx(
        float(0.5 * (F.mse_loss(real, ones) + F.mse_loss(fake, zeros)))
    )
    assert mse.g_loss(fake) == pytest.approx(float(F.mse_loss(fake, ones)))  # not the registry's 1/2
    # the BCE form is the GAN registry's non_saturating arithmetic, bit for bit
    ns = build_loss("non_saturating")
    assert torch.equal(bce.d_loss(real, fake), 0.5 * ns.d_loss(real, fake)) and torch.equal(
        bce.g_loss(fake), ns.g_loss(fake)
    )
    with pytest.raises(ValueError, match="choose non_saturating, lsgan"):
        PatchObjective("hinge")


def test_image_pool_fills_then_swaps_and_resumes_exactly() -> None:
    pool = ImagePool(3, seed=7)
    batches = [torch.full((2, 1, 2, 2), float(i)) for i in range(8)]
    assert torch.equal(pool.query(batches[0]), batches[0]) and len(pool.images) == 2  # filling: as given
    pool.query(batches[1])
    assert len(pool.images) == 3
    saved = pool.state_dict()
    straight = [pool.query(b) for b in batches[2:]]
    again = ImagePool(3, seed=123)  # another seed: the state carries the generator
    again.load_state_dict(saved)
    resumed = [again.query(b) for b in batches[2:]]
    assert all(torch.equal(a, b) for a, b in zip(straight, resumed, strict=True))
    shown = torch.cat(straight).flatten(1)[:, 0].tolist()
    assert any(v < i // 2 + 2 for i, v in enumerate(shown))  # some images came from the history
    assert torch.equal(ImagePool(0, 0).query(batches[5]), batches[5])  # size 0: only the newest


def test_in_order_continues_and_cycles() -> None:
    rows = torch.arange(10)

    def batches():  # the split: 10 rows in batches of 4
        return iter([(rows[i : i + 4], -rows[i : i + 4]) for i in range(0, 10, 4)])

    draw = InOrder(batches, "rows")
    a, b, c = draw.take(3), draw.take(5), draw.take(4)
    assert a[0].tolist() == [0, 1, 2] and b[0].tolist() == [3, 4, 5, 6, 7] and c[0].tolist() == [8, 9, 0, 1]
    assert c[1].tolist() == [-8, -9, 0, -1]  # every tensor of a row stays with it
    assert first(batches, 12, "rows")[0].tolist() == [*range(10), 0, 1]
    draw.rewind()  # a metric drawing the judged images again starts at the first row
    assert draw.take(5)[0].tolist() == [0, 1, 2, 3, 4]
    with pytest.raises(ValueError, match="no readable rows"):
        InOrder(lambda: iter(()), "rows").take(1)
