"""Vector arithmetic on a generator's latents (Radford et al. 2016, DCGAN, sec. 6.3 and fig. 7):
``mean(z of group A) - mean(z of B) + mean(z of C)``, decoded, should show C's content with what A
has and B lacks ("smiling woman - neutral woman + neutral man = smiling man").

The paper picked its exemplars by eye. Here a rule picks them, so the figure can be rerun and its
result measured:

1. draw ``pool`` latents from the prior, decode them, and have the evaluation's classifier read
   each image (the digits CNN: class and confidence) and measure its stroke thickness (pixel mass
   along the skeleton, :func:`bigtrain.data.digits.measure`);
2. a term ``D:thick`` (``D:thin``, ``D:any``) is the ``per_group`` confidently-``D`` samples with the
   thickest (thinnest, first) strokes; its latent is their mean;
3. the result is decoded from the signed sum of the terms' means, and again from that sum plus
   uniform noise in [-0.25, 0.25] per coordinate (the paper's variations); the classifier and the
   thickness measure report what the results show.

A latent space is what a task offers through :class:`LatentSpace` (a GAN's z, a VAE's prior);
models whose class is an input rather than part of z (conditional GANs) are refused.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from bigtrain.errors import ConfigError
from bigtrain.eval.fid import class_probs, quantize_images
from bigtrain.train.captions import measure_digits

ATTRIBUTES = ("thick", "thin", "any")
CONFIDENT = 0.9  # a pool sample counts as its class when the classifier gives it this probability
NOISE = 0.25  # the paper's uniform perturbation of the result latent


@dataclass(frozen=True)
class LatentSpace:
    """A model's latents: ``draw(n, generator)`` from the prior ``[n, dim]`` and ``decode(z)`` to
    images in [-1, 1] on the CPU (a VAE's decoder mean, a GAN's generator)."""

    dim: int
    draw: Callable[[int, torch.Generator], torch.Tensor]
    decode: Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class Term:
    sign: int  # +1 or -1
    digit: int
    attribute: str  # thick | thin | any

    def __str__(self) -> str:
        return f"{'+' if self.sign > 0 else '-'} {self.digit}:{self.attribute}"


_TERM = r"(\d+):(\w+)"
_EXPRESSION = re.compile(rf"\s*-?\s*{_TERM}(\s*[+-]\s*{_TERM})*\s*")


def parse_expression(text: str) -> list[Term]:
    """``"7:thick - 7:thin + 1:thin"`` -> its terms; a bad expression is one line."""
    terms = [
        Term(-1 if sign == "-" else 1, int(digit), attr)
        for sign, digit, attr in re.findall(rf"([+-]?)\s*{_TERM}", text)
    ]
    if not _EXPRESSION.fullmatch(text) or any(t.attribute not in ATTRIBUTES for t in terms):
        raise ConfigError(
            f"--arithmetic {text!r}: terms are CLASS:ATTRIBUTE ({', '.join(ATTRIBUTES)}) joined by + and -, "
            "as in '7:thick - 7:thin + 1:thin'"
        )
    return terms


@dataclass
class Pool:
    """Prior draws with what the classifier and the thickness measure read in their images."""

    z: torch.Tensor  # [N, dim]
    classes: np.ndarray  # [N] the classifier's argmax
    confidence: np.ndarray  # [N] its probability
    thickness: np.ndarray  # [N]

    @classmethod
    def draw(
        cls, space: LatentSpace, n: int, generator: torch.Generator, read: Callable[[torch.Tensor], np.ndarray],
        batch: int = 250,
    ) -> Pool:  # fmt: skip
        zs, probs, thick = [], [], []
        for start in range(0, n, batch):
            z = space.draw(min(batch, n - start), generator)
            images = space.decode(z)
            zs.append(z.cpu())
            probs.append(read(images))
            thick.append(measure_digits(quantize_images(images).numpy())["thickness"])
        p = np.concatenate(probs)
        return cls(torch.cat(zs), p.argmax(1), p.max(1), np.concatenate(thick))

    def members(self, term: Term, per_group: int) -> np.ndarray:
        """The indices of ``term``'s ``per_group`` exemplars."""
        idx = np.flatnonzero((self.classes == term.digit) & (self.confidence >= CONFIDENT))
        if len(idx) < per_group:
            raise ConfigError(
                f"--arithmetic: only {len(idx)} of {len(self.z)} samples read confidently as {term.digit}; "
                f"raise --pool or pick another class"
            )
        if term.attribute == "any":
            return idx[:per_group]
        order = np.argsort(self.thickness[idx], kind="stable")
        chosen = order[-per_group:][::-1] if term.attribute == "thick" else order[:per_group]
        return idx[chosen]


def arithmetic(
    space: LatentSpace,
    terms: list[Term],
    pool: Pool,
    generator: torch.Generator,
    *,
    per_group: int = 3,
    read: Callable[[torch.Tensor], np.ndarray],
) -> tuple[torch.Tensor, int, dict]:
    """The figure and its measurements. Rows: each term's exemplars followed by their mean's
    image, then the result followed by ``per_group`` noisy variations. Returns the images, the row
    length and a report (per term: the exemplars' mean thickness; the results' classes and
    thickness)."""
    rows, means, report_terms = [], [], []
    for term in terms:
        idx = pool.members(term, per_group)
        mean = pool.z[idx].mean(0, keepdim=True)
        means.append(term.sign * mean)
        rows.append(torch.cat([space.decode(pool.z[idx]), space.decode(mean)]))
        report_terms.append(
            {"term": str(term), "thickness": float(pool.thickness[idx].mean()), "indices": idx.tolist()}
        )
    total = torch.stack(means).sum(0)
    noise = (torch.rand(per_group, space.dim, generator=generator) * 2 - 1) * NOISE
    results = space.decode(torch.cat([total, total + noise]))
    rows.append(results)
    probs = read(results)
    report = {
        "expression": " ".join(str(t) for t in terms).removeprefix("+ "),
        "terms": report_terms,
        "result_classes": probs.argmax(1).tolist(),
        "result_thickness": measure_digits(quantize_images(results).numpy())["thickness"].tolist(),
    }
    return torch.cat(rows), per_group + 1, report


def digit_reader(device: torch.device | str = "cpu") -> Callable[[torch.Tensor], np.ndarray]:
    """The digits classifier's probabilities for ``[-1, 1]`` images (``eval.feature=digits``)."""
    from bigtrain.eval.features import build_feature_extractor

    extractor = build_feature_extractor("digits", device)
    return lambda images: class_probs(images, extractor, device)


__all__ = ["LatentSpace", "Pool", "Term", "arithmetic", "digit_reader", "parse_expression"]
