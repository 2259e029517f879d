"""Weight regularisers added to a network's loss.

BigGAN's orthogonal regularisation (Brock et al. 2019, sec. 3.1) penalises only the off-diagonal
of ``W Wᵀ``: filters are pushed towards mutual orthogonality without constraining their norms,
which made G amenable to the truncation trick. The reference implementation adds
``2 β (W Wᵀ ⊙ (1 − I)) W`` to each weight's gradient in place; here it is the loss whose gradient
that is, ``β/2 · ‖W Wᵀ ⊙ (1 − I)‖²_F``, so it composes with autograd, mixed precision and
gradient accumulation like any other term.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor, nn


def orthogonal_penalty(
    module: nn.Module, strength: float, blacklist: Iterable[Tensor | nn.Module] = ()
) -> Tensor:
    """``strength/2 · Σ_W ‖W Wᵀ ⊙ (1 − I)‖²_F`` over learnable weights with ≥ 2 dims, flattened to
    [out, -1] (for spectrally normalised layers, the raw weight, as in the reference).

    ``blacklist``: parameters, or modules whose parameters are all exempt; the reference exempts
    G's shared class embedding, whose rows are class codes, not filters. The gradient is exactly the
    reference's ``utils.ortho`` update, so ``strength`` means what its ``--G_ortho`` flag means (the
    paper's β is ``strength / 2``). Added to each of ``k`` accumulated micro-batch losses divided by
    ``k``, it totals the same as the reference's once-per-step update.
    """
    skip: set[int] = set()
    for item in blacklist:
        if isinstance(item, nn.Module):
            skip.update(id(p) for p in item.parameters())
        else:
            skip.add(id(item))
    total: Tensor | None = None
    for p in module.parameters():
        if p.ndim < 2 or not p.requires_grad or id(p) in skip:
            continue
        w = p.flatten(1)
        gram = w @ w.t()
        off = gram - torch.diag_embed(torch.diagonal(gram))
        term = off.pow(2).sum()
        total = term if total is None else total + term
    if total is None:
        return torch.zeros(())
    return 0.5 * strength * total
