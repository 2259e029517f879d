"""DiffAugment (Zhao et al. 2020): the same random, differentiable augmentations applied to real
and generated images wherever D sees them, so D cannot memorise a small dataset while G still gets
gradients through the augmentation. Policies: ``color`` (brightness, saturation, contrast),
``translation`` (shift up to 1/8 of the side, zero fill), ``cutout`` (a zeroed square of half the
side). Images are in [-1, 1]. Randomness comes from the global torch RNG of the images' device,
which checkpoints capture, so resumed runs augment identically.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

POLICIES = ("color", "translation", "cutout")


def _color(x: Tensor) -> Tensor:
    b = x.shape[0]
    u = lambda: torch.rand(b, 1, 1, 1, device=x.device, dtype=x.dtype)  # noqa: E731
    x = x + (u() - 0.5)  # brightness
    mean = x.mean(dim=1, keepdim=True)
    x = (x - mean) * (u() * 2) + mean  # saturation
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return (x - mean) * (u() + 0.5) + mean  # contrast


def _translation(x: Tensor, ratio: float = 0.125) -> Tensor:
    b, c, h, w = x.shape
    sh, sw = int(h * ratio + 0.5), int(w * ratio + 0.5)
    ti = torch.randint(-sh, sh + 1, (b, 1, 1), device=x.device)
    tj = torch.randint(-sw, sw + 1, (b, 1, 1), device=x.device)
    gi, gj = torch.meshgrid(torch.arange(h, device=x.device), torch.arange(w, device=x.device), indexing="ij")
    si, sj = gi[None] - ti, gj[None] - tj  # output pixel (i, j) reads input (i - ti, j - tj)
    inside = ((si >= 0) & (si < h) & (sj >= 0) & (sj < w)).to(x.dtype)
    idx = (si.clamp(0, h - 1) * w + sj.clamp(0, w - 1)).view(b, 1, h * w).expand(b, c, h * w)
    return x.flatten(2).gather(2, idx).view(b, c, h, w) * inside[:, None]


def _cutout(x: Tensor, ratio: float = 0.5) -> Tensor:
    b, _, h, w = x.shape
    ch, cw = int(h * ratio + 0.5), int(w * ratio + 0.5)
    ci = torch.randint(0, h, (b, 1, 1), device=x.device)
    cj = torch.randint(0, w, (b, 1, 1), device=x.device)
    gi, gj = torch.meshgrid(torch.arange(h, device=x.device), torch.arange(w, device=x.device), indexing="ij")
    top, left = ci - ch // 2, cj - cw // 2
    cut = (gi[None] >= top) & (gi[None] < top + ch) & (gj[None] >= left) & (gj[None] < left + cw)
    return x * (~cut).to(x.dtype)[:, None]


_OPS: dict[str, Callable[[Tensor], Tensor]] = {
    "color": _color,
    "translation": _translation,
    "cutout": _cutout,
}


def parse_policy(policy: str) -> tuple[str, ...]:
    names = tuple(p.strip() for p in policy.split(",") if p.strip())
    unknown = [n for n in names if n not in _OPS]
    if unknown:
        raise ValueError(f"unknown DiffAugment policy '{unknown[0]}'; choose from {', '.join(POLICIES)}")
    return names


def diff_augment(x: Tensor, policy: tuple[str, ...]) -> Tensor:
    """Apply ``policy`` in order; the output keeps the input's memory format (channels_last runs)."""
    nhwc = x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
    for name in policy:
        x = _OPS[name](x)
    return x.contiguous(memory_format=torch.channels_last) if nhwc else x
