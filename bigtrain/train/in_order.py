"""A split's rows in order, drawn ``n`` at a time: what a task judges when its samples come from
real inputs (a translation's sources, a text model's captions) rather than from noise.

FID asks for its images batch by batch (``images(n, generator)``), so each draw continues where
the last stopped; past the split's end it starts over, so ``eval.num_samples`` may exceed the
split. The draws are a function of the split alone, which is why such sources are evaluated by
the main process (``EvalSource.splittable=False``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch

Rows = tuple[torch.Tensor, ...]


class InOrder:
    """``take(n)``: the next ``n`` rows of every tensor the batches hold (sources, targets, labels),
    continuing from the last draw and cycling; ``batches()`` reads the split from its start."""

    def __init__(self, batches: Callable[[], Iterator[Rows]], what: str) -> None:
        self.batches, self.what = batches, what
        self._it: Iterator[Rows] = iter(())
        self._stock: list[Rows] = []

    def take(self, n: int) -> Rows:
        have = sum(len(r[0]) for r in self._stock)
        restarted = False
        while have < n:
            try:
                rows = next(self._it)
            except StopIteration:
                if restarted:  # a whole pass of the split gave nothing
                    raise ValueError(f"no readable {self.what}") from None
                self._it, restarted = self.batches(), True
                continue
            restarted = False
            self._stock.append(rows)
            have += len(rows[0])
        joined = tuple(torch.cat(parts) for parts in zip(*self._stock, strict=True))
        self._stock = [tuple(t[n:] for t in joined)] if have > n else []
        return tuple(t[:n] for t in joined)

    def rewind(self) -> None:
        """Start again at the split's first row: a metric that draws the judged images a second
        time (``EvalSource.rewind``) must get the same rows in the same order."""
        self._it, self._stock = iter(()), []


def first(batches: Callable[[], Iterator[Rows]], n: int, what: str) -> Rows:
    """The split's first ``n`` rows (cycling when it has fewer)."""
    return InOrder(batches, what).take(n)


__all__ = ["InOrder", "Rows", "first"]
