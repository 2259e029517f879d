"""``bigtrain evaluate CKPT``: the run's metrics (``eval.metrics``: FID with IS and precision/recall
from the same samples; a tokenizer's rFID, PSNR, SSIM and codebook usage) of a checkpoint with N
samples, printed as one JSON line and logged to the run's MLflow run at its step. Sample-count
dependent keys get ``/n<N>`` (``fid/<feature>/n<N>``), so they never mix with training's curve.
Under ``torchrun`` every process samples and extracts features for its share of the batches.
``eval.KEY=VALUE`` overrides change how the checkpoint is sampled and judged (``eval.g_bn=standing``);
metrics computed under overrides are printed, not logged, since the run's curve was not."""

from __future__ import annotations

import argparse
import json

from omegaconf import open_dict

from bigtrain.config.validate import raise_problems
from bigtrain.eval.registry import METRICS, Evaluator, check_metrics
from bigtrain.train.snapshot import load_snapshot
from bigtrain.train.task import eval_metrics


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="bigtrain evaluate", description=__doc__)
    p.add_argument("ckpt")
    p.add_argument(
        "overrides",
        nargs="*",
        metavar="eval.KEY=VALUE",
        help="evaluate with these eval.* / sample.* settings (e.g. eval.g_bn=standing); not logged",
    )
    p.add_argument("--num-samples", type=int, default=None, help="default: the run's eval.num_samples")
    p.add_argument("--feature", default=None, help="feature network (default: the run's eval.feature)")
    p.add_argument(
        "--metric",
        dest="metrics",
        action="append",
        default=None,
        help=f"a metric to compute (repeatable; default: the run's eval.metrics): {', '.join(METRICS)}",
    )
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--device", default=None)
    p.add_argument("--no-log", action="store_true", help="do not log to MLflow")
    a = p.parse_args(argv)
    snap = load_snapshot(a.ckpt, a.device, a.overrides)
    ecfg = snap.cfg.eval
    with open_dict(ecfg):
        if a.num_samples is not None:
            ecfg.num_samples = a.num_samples
        if a.feature is not None:
            ecfg.feature = a.feature
        if a.seed is not None:
            ecfg.seed = a.seed
        if a.metrics:
            ecfg.metrics = a.metrics
    names = eval_metrics(snap.cfg)
    raise_problems(
        check_metrics(names, type(snap.task).provides(snap.cfg, snap.manifest), str(snap.cfg.task))
    )
    evaluator = Evaluator(ecfg, names, snap.device)
    snap.task.before_sampling()
    raw: dict[str, float] = {}
    for source in snap.task.eval_sources():  # under torchrun: every rank samples its share
        raw |= evaluator(source)
    from bigtrain import distributed as bdist

    if not bdist.is_main():
        return 0
    scaled = evaluator.sample_count_keys()
    results = {(f"{k}/n{ecfg.num_samples}" if k in scaled else k): v for k, v in raw.items()}
    headline = evaluator.headline(raw)
    key = f"{headline}/n{ecfg.num_samples}" if headline in scaled else headline
    out = {
        "step": snap.checkpoint.step,
        "metric": key,
        "value": results[key],
        "num_samples": ecfg.num_samples,
        "metrics": results,
    }
    run_id = snap.checkpoint.meta.get("mlflow_run_id")
    uri = snap.checkpoint.meta.get("tracking_uri")
    if a.overrides:
        out["overrides"] = list(a.overrides)
    if run_id and uri and not a.no_log and not a.overrides:
        from mlflow.tracking import MlflowClient

        client = MlflowClient(uri)
        for k, v in results.items():
            client.log_metric(run_id, k, v, step=snap.checkpoint.step)
        out["mlflow_run_id"] = run_id
    print(json.dumps(out))
    return 0
