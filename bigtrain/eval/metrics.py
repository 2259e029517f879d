"""Inception Score and improved precision/recall, beside FID, from the same feature network.

* Inception Score (Salimans et al. 2016): ``exp(E_x KL(p(y|x) || p(y)))`` over 10 splits, from the
  feature network's class probabilities (Inception's 1008-way head; the digits classifier's 10).
* Precision and recall (Kynkäänniemi et al. 2019): each set's manifold is the union of balls
  around its points with radius the distance to the point's k-th nearest neighbour (k = 3).
  Precision is the share of generated samples inside the real manifold (fidelity), recall the
  share of real samples inside the generated one (coverage). Computed in the FID feature space,
  on equal numbers of real and generated points.
* Kernel Inception Distance (Bińkowski et al. 2018): the unbiased estimate of the squared MMD
  between real and generated features under the cubic polynomial kernel
  ``k(x, y) = (x.y / d + 1)^3``, averaged over random subsets (100 of up to 1,000 points each);
  clean-fid's ``kernel_distance`` computes it, with its subsets drawn from ``eval.seed``. Unlike
  FID it has no bias that shrinks with the sample count, so small evaluations compare fairly.
"""

from __future__ import annotations

import numpy as np
import torch

from bigtrain.utils.rng import preserve_rng


def inception_score(probs: np.ndarray, splits: int = 10) -> tuple[float, float]:
    """Mean and standard deviation of the IS over ``splits`` equal parts of ``probs`` [N, classes]."""
    p = np.asarray(probs, dtype=np.float64)
    scores = []
    for part in np.array_split(p, min(splits, len(p))):
        py = part.mean(axis=0, keepdims=True)
        kl = (part * (np.log(part + 1e-12) - np.log(py + 1e-12))).sum(axis=1).mean()
        scores.append(np.exp(kl))
    return float(np.mean(scores)), float(np.std(scores))


def _kth_radii(x: torch.Tensor, k: int, chunk: int) -> torch.Tensor:
    radii = []
    for i in range(0, len(x), chunk):
        d = torch.cdist(x[i : i + chunk], x)
        radii.append(d.kthvalue(k + 1, dim=1).values)  # k+1: the point itself is at distance 0
    return torch.cat(radii)


def _coverage(points: torch.Tensor, centers: torch.Tensor, radii: torch.Tensor, chunk: int) -> float:
    inside = []
    for i in range(0, len(points), chunk):
        d = torch.cdist(points[i : i + chunk], centers)
        inside.append((d <= radii[None, :]).any(dim=1))
    return float(torch.cat(inside).float().mean())


def precision_recall(
    real: np.ndarray, fake: np.ndarray, k: int = 3, chunk: int = 1024
) -> tuple[float, float]:
    """Improved precision and recall of ``fake`` against ``real`` features (equal counts are used)."""
    n = min(len(real), len(fake))
    if n <= k:
        raise ValueError(f"precision/recall need more than k={k} points per set, got {n}")
    r = torch.from_numpy(np.asarray(real[:n], dtype=np.float32))
    f = torch.from_numpy(np.asarray(fake[:n], dtype=np.float32))
    precision = _coverage(f, r, _kth_radii(r, k, chunk), chunk)
    recall = _coverage(r, f, _kth_radii(f, k, chunk), chunk)
    return precision, recall


def kernel_distance(
    real: np.ndarray, fake: np.ndarray, subsets: int = 100, subset_size: int = 1000, seed: int = 0
) -> float:
    """KID of ``fake`` against ``real`` features (clean-fid's ``kernel_distance``). Its subsets
    come from NumPy's global generator: seeded here, and every global RNG is left as it was."""
    from cleanfid.fid import kernel_distance as clean_kernel_distance

    if min(len(real), len(fake)) < 2:
        raise ValueError(
            f"KID needs at least 2 points per set, got {len(real)} real and {len(fake)} generated"
        )
    with preserve_rng():
        np.random.seed(seed)
        return clean_kernel_distance(
            np.asarray(real, dtype=np.float64), np.asarray(fake, dtype=np.float64), subsets, subset_size
        )
