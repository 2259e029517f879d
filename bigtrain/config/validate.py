"""Start-up checks that types alone cannot express; each failure is one line naming the keys."""

from __future__ import annotations

from omegaconf import DictConfig

from bigtrain.models.dcgan import D_NORMS
from bigtrain.train.augment import parse_policy


class ConfigError(ValueError):
    """An invalid combination of config values."""


def validate(cfg: DictConfig, num_classes: int, data_kind: str = "images") -> None:
    problems: list[str] = []
    if (data_kind == "tokens") != (cfg.task == "prior"):
        problems.append(
            f"task={cfg.task} cannot train on {data_kind} ({cfg.data.path}): "
            + (
                "task=prior trains on token shards (bigtrain tokenize)"
                if cfg.task == "prior"
                else "token shards are for task=prior"
            )
        )
    if cfg.task == "prior":
        if int(cfg.prior.zero_stage) not in (0, 1, 2, 3):
            problems.append(f"prior.zero_stage must be 0, 1, 2 or 3 (got {cfg.prior.zero_stage})")
        if cfg.prior.grad_clip < 0 or cfg.prior.temperature <= 0 or not 0 < cfg.prior.top_p <= 1:
            problems.append("prior: grad_clip >= 0, temperature > 0 and 0 < top_p <= 1 are required")
        if str(cfg.prior.engine) == "torch" and str(cfg.trainer.precision) == "fp16":
            problems.append("prior.engine=torch trains in fp32 or bf16 (fp16 needs prior.engine=deepspeed)")
    if cfg.data.batch_size < 1:
        problems.append(f"data.batch_size must be >= 1 (got {cfg.data.batch_size})")
    if cfg.data.num_workers < 0:
        problems.append("data.num_workers must be >= 0")
    if cfg.trainer.max_steps < 1:
        problems.append("trainer.max_steps must be >= 1")
    if cfg.trainer.accumulation < 1:
        problems.append("trainer.accumulation must be >= 1")
    if cfg.trainer.max_nonfinite_skips < 0:
        problems.append("trainer.max_nonfinite_skips must be >= 0")
    if cfg.loss.g_ortho < 0 or cfg.loss.d_ortho < 0:
        problems.append("loss.g_ortho and loss.d_ortho must be >= 0")
    if cfg.loss.d_steps < 1:
        problems.append("loss.d_steps must be >= 1")
    if cfg.model.d_norm not in D_NORMS:
        problems.append(f"model.d_norm must be one of {', '.join(D_NORMS)} (got '{cfg.model.d_norm}')")
    if str(cfg.loss.name) == "wgan_gp" and cfg.model.d_norm == "batch":
        problems.append(
            "loss=wgan_gp needs a critic without batchnorm (its penalty is per sample): set model.d_norm=layer"
        )
    if cfg.model.conditional and num_classes < 2:
        problems.append(f"model.conditional=true but the dataset has {num_classes} class(es)")
    if not 0.0 <= cfg.ema.decay < 1.0:
        problems.append("ema.decay must be in [0, 1)")
    for key in ("log_every", "sample_every", "ckpt_every"):
        if cfg.trainer[key] < 1:
            problems.append(f"trainer.{key} must be >= 1")
    if cfg.task == "tokenizer":
        if cfg.vq.rec_loss not in ("l1", "l2"):
            problems.append(f"vq.rec_loss must be l1 or l2 (got '{cfg.vq.rec_loss}')")
        if str(cfg.trainer.precision) == "fp16":
            problems.append("task=tokenizer trains in fp32 or bf16: set trainer.precision=bf16")
        if min(cfg.vq.rec_weight, cfg.vq.perceptual_weight, cfg.vq.codebook_weight, cfg.vq.disc_weight) < 0:
            problems.append("vq.*_weight must be >= 0")
    if cfg.stages.schedule and cfg.task not in ("gan", "tokenizer"):
        problems.append(
            f"stages.schedule is for images (task=gan with a growing model, task=tokenizer); "
            f"task={cfg.task} trains on token sequences of one length"
        )
    if int(cfg.stages.max_micro_batch) < 0:
        problems.append("stages.max_micro_batch must be >= 0 (0 = no cap)")
    sched = cfg.optim.schedule
    if sched.warmup_steps < 0 or not 0.0 <= sched.min_lr_ratio <= 1.0:
        problems.append("optim.schedule: warmup_steps >= 0 and 0 <= min_lr_ratio <= 1 are required")
    if cfg.eval.enabled and cfg.eval.num_samples < 2:
        problems.append("eval.num_samples must be >= 2")
    try:
        parse_policy(str(cfg.loss.diffaugment or ""))
    except ValueError as exc:
        problems.append(f"loss.diffaugment: {exc}")
    if problems:
        raise ConfigError("; ".join(problems))
