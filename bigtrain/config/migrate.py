"""Read a ``config.yaml`` saved by an older bigtrain as today's schema expects it.

Checkpoints outlive the code that wrote them: ``bigtrain sample`` / ``evaluate`` / ``tokenize`` on a
checkpoint from before the task config groups must still work. Each rule maps one old layout to
the new one and says when it was introduced.
"""

from __future__ import annotations

from typing import Any

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


__all__ = ["upgrade"]
