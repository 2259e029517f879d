"""Latent vector arithmetic (`bigtrain sample --arithmetic`): the expression grammar, and the rule
that picks each term's exemplars, on a latent space whose latents are the real validation digits
themselves (decoding is a reshape), read by the real digits classifier: the thick exemplars are
the thickest confident readings of their class, and the result is the decoded signed sum of the
terms' means."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from bigtrain.data.manifest import DatasetManifest
from bigtrain.data.read import iter_images
from bigtrain.errors import ConfigError
from bigtrain.train.latent_arithmetic import (
    CONFIDENT,
    LatentSpace,
    Pool,
    Term,
    arithmetic,
    digit_reader,
    parse_expression,
)


def test_expressions_parse_and_bad_ones_are_one_line() -> None:
    assert parse_expression("7:thick - 7:thin + 1:thin") == [
        Term(1, 7, "thick"), Term(-1, 7, "thin"), Term(1, 1, "thin"),
    ]  # fmt: skip
    assert parse_expression("-3:any+2:thick") == [Term(-1, 3, "any"), Term(1, 2, "thick")]
    for bad in ("7:fat - 1:thin", "7:thick -- 1:thin", "7:thick 1:thin", "", "7:thick -"):
        with pytest.raises(ConfigError, match="terms are CLASS:ATTRIBUTE"):
            parse_expression(bad)


def _pixel_space(mnist_shards: Path) -> LatentSpace:
    """Latents that are images: the validation digits in order, flattened; decoding reshapes."""
    real = np.concatenate(list(iter_images(DatasetManifest.load(mnist_shards), "val", 100, 300)))
    flat = torch.from_numpy(real).permute(0, 3, 1, 2).float().div(127.5).sub(1).flatten(1)
    cursor = [0]

    def draw(n: int, generator: torch.Generator) -> torch.Tensor:  # noqa: ARG001 - in order
        out = flat[cursor[0] : cursor[0] + n]
        cursor[0] += n
        return out

    return LatentSpace(flat.shape[1], draw, lambda z: z.view(-1, 1, 32, 32).clamp(-1, 1))


def test_terms_pick_their_exemplars_by_rule_and_the_result_is_the_signed_sum(mnist_shards: Path) -> None:
    space, read = _pixel_space(mnist_shards), digit_reader()
    g = torch.Generator().manual_seed(0)
    pool = Pool.draw(space, 300, g, read, batch=100)
    thick, thin = pool.members(Term(1, 7, "thick"), 3), pool.members(Term(-1, 7, "thin"), 3)
    sevens = (pool.classes == 7) & (pool.confidence >= CONFIDENT)
    assert sevens[thick].all() and sevens[thin].all()
    assert pool.thickness[thick].min() >= np.sort(pool.thickness[sevens])[-3]  # the three thickest
    assert pool.thickness[thin].max() <= np.sort(pool.thickness[sevens])[2]  # the three thinnest

    terms = parse_expression("7:thick - 7:thin + 1:thin")
    images, nrow, report = arithmetic(space, terms, pool, torch.Generator().manual_seed(1), read=read)
    assert nrow == 4 and images.shape == (4 * 4, 1, 32, 32)  # 3 exemplars + their mean, per term; results
    means = [pool.z[pool.members(t, 3)].mean(0) * t.sign for t in terms]
    assert torch.equal(images[12], space.decode(torch.stack(means).sum(0, keepdim=True))[0])
    assert report["terms"][0]["thickness"] > report["terms"][1]["thickness"]
    assert len(report["result_classes"]) == 4 and len(report["result_thickness"]) == 4
    with pytest.raises(ConfigError, match="read confidently as 7; raise --pool"):
        pool.members(Term(1, 7, "any"), 299)
