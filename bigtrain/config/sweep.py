"""Run folders of a sweep's jobs, named by what the job is, not by its position in the sweep.

Hydra numbers multirun jobs (``run.dir/0``, ``run.dir/1``): a second sweep of the same preset
with other values reuses those folders, and its jobs resume the first sweep's checkpoints. A job's
folder is instead its swept values, readable (``loss=hinge``), followed by a short hash of its
overrides, so two sweeps that differ in any value never share a folder, and the same sweep
submitted again finds and resumes its own jobs. Fixed overrides of keys that may change on resume
(``trainer.max_steps``, paths, cadence: ``bigtrain.config.fingerprint.MAY_CHANGE``) are left out
of the hash, so the sweep submitted again for longer resumes too. The MLflow run name follows it.

``bigtrain train -m`` tells the jobs which overrides are fixed (not swept) through Hydra's own
``hydra.job.config.override_dirname.exclude_keys``, so the information travels with each job's
config (also to SLURM jobs started by the submitit launcher).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence

from bigtrain.config.fingerprint import may_change

# keys that never name a job: where it writes, and Hydra's own settings
NOT_IDENTITY = ("run.dir", "run.name")
MAX_READABLE = 80  # characters of swept values in a folder name


def sanitize(text: str) -> str:
    """Safe in one path component on any file system: letters, digits and ``._=,+-``."""
    return re.sub(r"[^A-Za-z0-9._=,+-]+", "_", text).strip("_") or "_"


def _key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def job_dirname(overrides: Sequence[str], fixed: Sequence[str] = ()) -> str:
    """``<swept k=v,...>-<hash of every override>`` for a job with ``overrides`` (``key=value``
    strings, Hydra's ``hydra.overrides.task``); ``fixed`` are the keys the sweep did not vary."""
    own = sorted(o for o in overrides if _key(o) not in NOT_IDENTITY and not _key(o).startswith("hydra."))
    swept = [o for o in own if _key(o) not in set(fixed)]
    # a fixed key that may change on resume (trainer.max_steps, paths, cadence) is not the job's
    # identity: the same sweep submitted again for longer resumes its jobs
    identity = [o for o in own if o in swept or not may_change(_key(o))]
    digest = hashlib.sha256("\n".join(identity).encode()).hexdigest()[:8]
    readable = sanitize(",".join(swept))[:MAX_READABLE] if swept else "job"
    return f"{readable}-{digest}"


def fixed_keys(overrides: Sequence[str]) -> list[str]:
    """The keys of command-line ``overrides`` that are not sweeps (``loss=hinge,lsgan`` is one)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(list(overrides))
    return sorted({o.key_or_group for o in parsed if not o.is_sweep_override()})


__all__ = ["NOT_IDENTITY", "fixed_keys", "job_dirname", "sanitize"]
