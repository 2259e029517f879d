"""``bigtrain train [HYDRA OVERRIDES]``: the Hydra app; parse config, build, fit, report."""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf, open_dict

from bigtrain.train.compose import CONFIG_DIR, register

register()


def summary(result) -> str:  # noqa: ANN001 - a TrainResult
    if result.stopped_by == "requeue":
        head = f"preempted: saved step {result.step}; " + (
            "the SLURM job is requeued and will resume from it"
            if result.requeued
            else "run the same command to resume"
        )
    elif result.stopped_by == "stop":
        head = f"stopped by a signal: saved step {result.step}; run the same command to resume"
    else:
        head = f"done: step {result.step} in {result.seconds:.0f} s ({result.img_per_s:.0f} img/s)"
    lines = [
        head,
        f"  run dir:    {result.run_dir}",
        f"  checkpoint: {result.last_checkpoint}",
        f"  grid:       {result.grid}",
    ]
    if result.fid:
        steps = sorted(result.fid)
        curve = ", ".join(f"{s}: {result.fid[s]:.2f}" for s in steps)
        key = result.headline or "fid"
        name = {"fid": "FID", "rfid": "rFID"}.get(key.split("/")[0], key)
        lines.append(f"  {name} by step: {curve}")
    if result.mlflow_run_id:
        lines.append(f"  MLflow run: {result.mlflow_run_id}")
        if result.tracking_uri and not result.tracking_uri.startswith("http"):
            lines.append(f"  look:       mlflow ui --backend-store-uri {result.tracking_uri}")
        else:
            lines.append(f"  look:       {result.tracking_uri}")
    tracker = getattr(result, "tracker", None)
    if tracker == "tensorboard":
        lines.append(f"  look:       tensorboard --logdir {result.tracker_run_id}")
    elif tracker == "wandb":
        lines.append(f"  W&B run:    {result.tracker_run_id}")
        lines.append(f"  offline:    wandb sync {Path(result.run_dir) / 'wandb'}/offline-run-*  (uploads it)")
    return "\n".join(lines)


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="train")
def app(cfg: DictConfig) -> None:
    from bigtrain import distributed as bdist
    from bigtrain.cli.main import user_errors_exit
    from bigtrain.config.launcher import apply_launcher
    from bigtrain.train.loop import train

    # In a multirun each job gets its own folder under run.dir (named by what it sweeps, and its
    # MLflow run after it); a plain run uses run.dir itself.
    hc = HydraConfig.get()
    with open_dict(cfg):
        cfg.run.dir = hc.runtime.output_dir
        if hc.mode == RunMode.MULTIRUN:
            cfg.run.name = f"{cfg.run.name}/{Path(hc.runtime.output_dir).name}"
    with user_errors_exit():
        apply_launcher(cfg)  # trainer.precision=auto: accelerate launch's --mixed_precision
        OmegaConf.set_readonly(cfg, True)
        result = train(cfg)
    if bdist.is_main():
        print(summary(result), flush=True)


USAGE = """usage: bigtrain train [OVERRIDES] [-m] [--help] [--hydra-help]

Train with the config composed from bigtrain/configs/train.yaml and OVERRIDES (Hydra syntax:
experiment=mnist_dcgan data.path=data/mnist5k trainer.max_steps=500; -m sweeps comma lists).
`bigtrain train OVERRIDES --help` shows the choices for that config, with the selected model
family's model.arch options; --hydra-help is Hydra's own help; --cfg job prints the config.
"""


def main(argv: list[str]) -> int:
    if any(a in ("-h", "--help") for a in argv):
        from bigtrain.cli.options import choices
        from bigtrain.errors import ConfigError
        from bigtrain.train.compose import compose_config

        try:
            cfg = compose_config([a for a in argv if a not in ("-h", "--help", "-m", "--multirun")])
        except ConfigError:
            cfg = None
        print(USAGE)
        print(choices(cfg))
        return 0
    if not any(a.startswith("-") for a in argv):  # not a sweep, not a Hydra flag (--cfg, --info, ...)
        from bigtrain.cli.main import user_errors_exit
        from bigtrain.config.validate import missing_values, raise_problems
        from bigtrain.train.compose import compose_config

        # Hydra's own settings stay out of the check, but hydra.searchpath (a user's preset folders) is needed
        own = [a for a in argv if not a.startswith(("hydra.", "hydra/")) or a.startswith("hydra.searchpath=")]
        with user_errors_exit():  # a bad override is one line and exit code 2, before any work
            raise_problems(missing_values(compose_config(own)))
    if any(a in ("-m", "--multirun") for a in argv):
        from bigtrain.config.sweep import fixed_keys

        # the jobs' folders name only what the sweep varies (bigtrain/config/sweep.py)
        fixed = fixed_keys(
            [a for a in argv if not a.startswith("-") and not a.startswith(("hydra.", "hydra/"))]
        )
        argv = [*argv, f"hydra.job.config.override_dirname.exclude_keys=[{','.join(fixed)}]"]
    sys.argv = ["bigtrain-train", *argv]
    app()
    return 0
