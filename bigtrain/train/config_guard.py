"""The resume check: a run continues only under the config its checkpoint was trained with.

Before any state is loaded, the checkpoint's ``config.yaml`` (on today's schema) is compared with
the run's resolved config over the keys that make the run (``bigtrain.config.fingerprint``). A
difference stops every rank in one line that names each key with its old and new value and the two
ways on; a difference the user allowed (``allow_changes=[key, ...]``) is logged, recorded in every
later checkpoint's ``meta.json`` (``config_changes``), tagged on the MLflow run, and the config
it replaces is kept beside the new ``config.yaml``.
"""

from __future__ import annotations

import fnmatch
import logging
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from bigtrain.checkpoint.io import Checkpoint
from bigtrain.config.fingerprint import changes, describe, fingerprint, flatten, may_change
from bigtrain.errors import ConfigError
from bigtrain.train.snapshot import checkpoint_config

log = logging.getLogger("bigtrain")


class ConfigGuard:
    def __init__(self, cfg: DictConfig):
        self.cfg = cfg
        self.allowed = [str(p) for p in cfg.allow_changes]
        keys = flatten(cfg)
        unknown = [p for p in self.allowed if not any(fnmatch.fnmatchcase(k, p) for k in keys)]
        if unknown:
            raise ConfigError(f"allow_changes: {', '.join(unknown)} names no key of this config")
        self.fingerprint = fingerprint(cfg)
        self.history: list[dict[str, Any]] = []  # every accepted change, oldest first
        self.accepted: dict[str, tuple[Any, Any]] = {}  # this resume's accepted changes
        self.previous_yaml: str | None = None  # the checkpoint's config.yaml when it changed
        self.resumed_step = -1

    def check(self, ck: Checkpoint) -> None:
        """Refuse ``ck`` (raise :class:`ConfigError`) when the config changed beyond what is allowed."""
        diff = changes(checkpoint_config(ck), self.cfg)
        refused = {k: v for k, v in diff.items() if not may_change(k, self.allowed)}
        if refused:
            raise ConfigError(
                f"the config changed since {ck.path} (step {ck.step}): {describe(refused)}; "
                f"to start a new run give another run.dir, to continue this one with the change add "
                f"allow_changes=[{','.join(refused)}]"
            )
        self.history = list(ck.meta.get("config_changes", []))
        self.resumed_step = ck.step
        if diff:
            self.accepted = diff
            self.history.append({"step": ck.step, "changes": {k: [a, b] for k, (a, b) in diff.items()}})
            self.previous_yaml = (ck.path / "config.yaml").read_text()
            log.warning("resuming step %d with allowed config changes: %s", ck.step, describe(diff, limit=50))

    def meta(self) -> dict[str, Any]:
        """What each checkpoint records: the fingerprint and the accepted changes so far."""
        return {"config_fingerprint": self.fingerprint, "config_changes": self.history}

    def keep_previous(self, run_dir: Path) -> Path | None:
        """The replaced config as ``config.until-step-N.yaml`` in the run folder (main process)."""
        if self.previous_yaml is None:
            return None
        path = run_dir / f"config.until-step-{self.resumed_step:08d}.yaml"
        path.write_text(self.previous_yaml)
        return path

    def tags(self) -> dict[str, str]:
        if not self.accepted:
            return {}
        return {f"config_change.step-{self.resumed_step:08d}": describe(self.accepted, limit=100)[:5000]}


__all__ = ["ConfigGuard"]
