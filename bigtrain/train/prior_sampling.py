"""How a token prior is sampled into images: labels, the sampling settings, then the tokenizer's decoder.

Shared by the training task (``task=prior``) and the inference model (``bigtrain.load`` of a prior:
no optimizer, no engine), so one seed gives the same images through either."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from bigtrain.errors import ConfigError
from bigtrain.models.transformer import generate, generate_windowed

SETTINGS = ("temperature", "top_k", "top_p", "cfg_scale")


class PriorSampling:
    """``model()`` is the prior to sample from (an engine may gather it first), ``vq()`` the frozen
    tokenizer that decodes its codes; ``defaults`` are the run's ``prior.*`` sampling settings."""

    def __init__(
        self,
        model: Callable[[], nn.Module],
        vq: Callable[[], nn.Module],
        *,
        num_classes: int,
        seq_len: int,
        device: torch.device,
        defaults: Mapping[str, Any],
    ) -> None:
        self.model, self.vq = model, vq
        self.num_classes, self.seq_len, self.device = int(num_classes), int(seq_len), device
        self.grid_size = int(round(seq_len**0.5))
        self.defaults = {
            "temperature": float(defaults["temperature"]),
            "top_k": int(defaults["top_k"]),
            "top_p": float(defaults["top_p"]),
            "cfg_scale": float(defaults["cfg_scale"]),
        }

    def tokens(
        self,
        labels: torch.Tensor | None,
        n: int,
        generator: torch.Generator,
        size: float | None = None,
        **overrides: Any,
    ) -> torch.Tensor:
        """``[n, seq_len]`` codes with the run's sampling settings (or ``overrides``), given the
        condition ``labels`` (classes, caption ids or features, condition codes). ``size``: a
        multiple of the training grid's side, > 1 sampled through a sliding window -> ``[n, H, W]``."""
        opts = self.defaults | {k: v for k, v in overrides.items() if v is not None}
        if generator.device != self.device:  # derive a generator where the model samples
            generator = torch.Generator(self.device).manual_seed(seed_of(generator))
        if labels is not None:
            labels = labels.to(self.device)
        if size is not None and float(size) != 1.0:
            side = round(self.grid_size * float(size))
            if float(size) < 1.0 or side * 1.0 != self.grid_size * float(size):
                raise ConfigError(
                    f"--size {size}x: a prior samples whole codes of a {self.grid_size}x{self.grid_size} grid; "
                    f"give a multiple >= 1 that makes a whole grid (e.g. 2x -> {2 * self.grid_size}x{2 * self.grid_size})"
                )
            return generate_windowed(self.model(), labels, n, (side, side), generator=generator, **opts)
        return generate(self.model(), labels, n, generator=generator, **opts)

    @torch.no_grad()
    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """Codes ``[n, seq_len]`` (the training grid) or ``[n, H, W]`` -> images in [-1, 1] on the CPU."""
        if codes.dim() == 2:
            codes = codes.view(-1, self.grid_size, self.grid_size)
        images = self.vq().decode_indices(codes.to(self.device))
        return images.float().clamp(-1, 1).cpu()

    def images(
        self, labels: torch.Tensor | None, n: int, generator: torch.Generator, **overrides: Any
    ) -> torch.Tensor:
        return self.decode(self.tokens(labels, n, generator, **overrides))

    def labels(self, n: int, generator: torch.Generator, classes: list[int] | None) -> torch.Tensor | None:
        """Uniform over ``classes`` (default: all), from a generator derived from ``generator``."""
        if not self.num_classes:
            return None
        pool = torch.tensor(classes if classes else range(self.num_classes))
        return pool[
            torch.randint(0, len(pool), (n,), generator=torch.Generator().manual_seed(seed_of(generator)))
        ]

    def grid(self, seed: int, rows: int) -> tuple[torch.Tensor, int]:
        """``rows`` samples per row; when conditional, one row per class for the first
        min(classes, max(rows, 10)) classes."""
        g = torch.Generator(self.device).manual_seed(seed)
        if self.num_classes:
            nrows = min(self.num_classes, max(rows, 10))
            labels = torch.arange(nrows).repeat_interleave(rows)
        else:
            nrows, labels = rows, None
        return self.images(labels, nrows * rows, g), rows

    def sample(
        self, n: int, generator: torch.Generator, *, classes: list[int] | None = None, **options: Any
    ) -> torch.Tensor:
        """Decoded samples with labels drawn uniformly from ``classes`` (default: all)."""
        return self.images(self.labels(n, generator, classes), n, generator, **options)

    def for_labels(self, labels: torch.Tensor, generator: torch.Generator, **options: Any) -> torch.Tensor:
        return self.images(labels if self.num_classes else None, len(labels), generator, **options)


def seed_of(generator: torch.Generator) -> int:
    """A seed drawn from ``generator`` (for a generator on another device)."""
    return int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device))


__all__ = ["SETTINGS", "PriorSampling", "seed_of"]
