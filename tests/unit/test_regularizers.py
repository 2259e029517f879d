"""BigGAN's orthogonal regulariser: zero for orthogonal filters, and its gradient is the reference's
in-place update ``2β (W Wᵀ ⊙ (1 − I)) W``."""

from __future__ import annotations

import torch
from torch import nn

from bigtrain.losses.regularizers import orthogonal_penalty


def test_zero_for_orthogonal_rows_of_any_norm() -> None:
    lin = nn.Linear(8, 4, bias=False)
    q, _ = torch.linalg.qr(torch.randn(8, 4))
    with torch.no_grad():
        lin.weight.copy_(q.t() * torch.tensor([[1.0], [2.0], [3.0], [0.5]]))  # orthogonal, unequal norms
    assert orthogonal_penalty(lin, 1e-4).item() < 1e-10


def test_gradient_equals_reference_update_and_embeddings_are_exempt() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Embedding(10, 6), nn.Conv2d(3, 5, 3), nn.Linear(6, 4))
    beta = 1e-2
    orthogonal_penalty(net, beta, blacklist=[net[0]]).backward()
    assert net[0].weight.grad is None  # exempt
    for p in (net[1].weight, net[2].weight):
        w = p.detach().reshape(p.shape[0], -1)
        mask = 1 - torch.eye(w.shape[0])
        expected = 2 * beta * ((w @ w.t()) * mask) @ w
        torch.testing.assert_close(p.grad.reshape(p.shape[0], -1), expected, rtol=1e-5, atol=1e-7)
    assert net[1].bias.grad is None and net[2].bias.grad is None  # 1-d parameters are not penalised
