"""Every error a user can fix, in one module at the bottom of the package.

Each is raised with a one-line message naming what is wrong and how to fix it; the CLI turns any
of them into ``bigtrain: error: ...`` and an exit code, without a traceback. They live here, not
beside the code that raises them, so that any layer can raise or catch them without importing a
layer above it (a data loader catching a checkpoint error, the CLI catching all of them).
"""

from __future__ import annotations

from pathlib import Path


class ConfigError(ValueError):
    """An invalid config: an unknown key, a wrong type, or a combination of values that cannot run."""


class DatasetError(RuntimeError):
    """A dataset problem the user must fix (missing folder, manifest or shard)."""


class CheckpointError(RuntimeError):
    """A checkpoint could not be written or read; the message names the path."""


class MissingWeightsError(FileNotFoundError):
    """A network's weights (Inception for FID, VGG16 for LPIPS) are not in the cache, and bigtrain
    never downloads them. A :class:`FileNotFoundError`, so generic "missing file" handling catches
    it too; the message names the path and the command that fills it."""

    def __init__(self, message: str, path: Path) -> None:
        super().__init__(message)
        self.path = path

    def __str__(self) -> str:
        return str(self.args[0])


class NonFiniteLossError(RuntimeError):
    """A loss became NaN or inf; the step was not applied (``trainer.on_nonfinite=stop``)."""

    def __init__(self, name: str, step: int):
        super().__init__(name, step)
        self.name, self.step = name, step
        self.last_checkpoint: object | None = None  # filled in by the loop, which knows it

    def __str__(self) -> str:
        where = self.last_checkpoint or "none (no checkpoint was written yet)"
        return f"non-finite {self.name} loss at step {self.step}: run stopped; last good checkpoint: {where}"


USER_ERRORS: tuple[type[BaseException], ...] = (
    CheckpointError,
    ConfigError,
    DatasetError,
    MissingWeightsError,
)
"""What the CLI reports in one line with exit code 2 (a non-finite loss has its own code, 3)."""

__all__ = [
    "USER_ERRORS",
    "CheckpointError",
    "ConfigError",
    "DatasetError",
    "MissingWeightsError",
    "NonFiniteLossError",
]
