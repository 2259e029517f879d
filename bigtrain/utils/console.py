"""Progress bars that stay out of log files.

A tqdm bar redraws itself with carriage returns: on a terminal that is one moving line, in a SLURM
log (or any file or pipe) it is hundreds of lines glued together. Every bar in bigtrain therefore
draws only when asked for *and* writing to a terminal; the training loop logs a line every
``trainer.log_every`` steps instead when its bar is off.
"""

from __future__ import annotations


def bar_disable(wanted: bool) -> bool | None:
    """tqdm's ``disable`` argument: ``True`` when not wanted, else ``None`` (tqdm then draws only
    when its stream is a terminal)."""
    return None if wanted else True


__all__ = ["bar_disable"]
