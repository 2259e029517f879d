"""Read a ``config.yaml`` saved by an older bigtrain as today's schema expects it.

Checkpoints outlive the code that wrote them: ``bigtrain sample`` / ``evaluate`` / ``tokenize`` on a
checkpoint from before the task config groups must still work. Each rule maps one old layout to
the new one and says when it was introduced.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError

from bigtrain.errors import CheckpointError

OWNED_SECTIONS = {"gan": ("loss", "ema"), "tokenizer": ("vq",), "prior": ("prior",)}


def upgrade(raw: dict[str, Any]) -> dict[str, Any]:
    """A plain-dict config, upgraded in place and returned."""
    task = str(raw.get("task", "gan"))
    # Task sections: every run used to carry all of them; now only its task's are set.
    for section in ("loss", "ema", "vq", "prior"):
        if section in raw and section not in OWNED_SECTIONS.get(task, (section,)):
            raw.pop(section)
    # Model keys: every run carried a GAN's latent size, widths and D norm; now only GANs do (the
    # rule is for the tasks of that time: later ones, such as pix2pix, have widths of their own).
    model = raw.get("model")
    if task in ("tokenizer", "prior") and isinstance(model, dict):
        for key in ("z_dim", "g_width", "d_width", "d_norm"):
            model.pop(key, None)
    # Optimizer blocks: the tokenizer's and the prior's optimizer used to be optim.g.
    optim = raw.get("optim")
    if isinstance(optim, dict):
        own = {"tokenizer": "vq", "prior": "prior"}.get(task)
        if own and own not in optim and "g" in optim:
            optim[own] = optim.pop("g")
        if task == "prior":
            optim.pop("d", None)
    # Metrics: eval.inception_score / eval.precision_recall switches became eval.metrics.
    ev = raw.get("eval")
    if isinstance(ev, dict) and ("inception_score" in ev or "precision_recall" in ev):
        metrics = ["fid"]
        if ev.pop("inception_score", True):
            metrics.append("is")
        if ev.pop("precision_recall", True):
            metrics.append("pr")
        if task == "tokenizer":
            metrics += ["psnr", "ssim", "codebook"]
        ev.setdefault("metrics", metrics)
    return raw


def on_schema(schema: type, raw: dict[str, Any], checkpoint: str | Path) -> DictConfig:
    """``raw`` (checkpoint ``checkpoint``'s saved config) upgraded and merged onto ``schema``, its
    task's config dataclass. A key that neither today's schema nor a rule above knows means the
    checkpoint was written by another bigtrain (usually a newer one); OmegaConf would raise it as a
    traceback, so it is one :class:`CheckpointError` line naming the key, the checkpoint and the fix."""
    task = str(raw.get("task", "gan"))
    try:
        return OmegaConf.merge(OmegaConf.structured(schema), upgrade(raw))  # type: ignore[return-value]
    except ConfigKeyError as exc:
        key = getattr(exc, "full_key", "") or exc.key or "?"
        raise CheckpointError(
            f"checkpoint {checkpoint}: its config.yaml has '{key}', which task={task}'s config does not "
            "have; likely cause: it was written by another bigtrain version (older layouts are upgraded "
            f"on reading; this key is not one of them); use that version, or remove '{key}' from "
            f"{Path(checkpoint) / 'config.yaml'} if the run does not need it"
        ) from None


__all__ = ["on_schema", "upgrade"]
