"""``bigtrain evaluate CKPT``: FID (with IS and precision/recall from the same samples) of the
checkpoint's EMA generator with N samples, printed as one JSON line and logged to the run's MLflow
run as ``fid/<feature>/n<N>`` (``is/...``, ``precision/...``, ``recall/...``) at its step."""

from __future__ import annotations

import argparse
import json

from omegaconf import open_dict

from bigtrain.train.fid_hook import FIDEvaluator
from bigtrain.train.snapshot import load_snapshot


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="bigtrain evaluate", description=__doc__)
    p.add_argument("ckpt")
    p.add_argument("--num-samples", type=int, default=None, help="default: the run's eval.num_samples")
    p.add_argument("--feature", default=None, help="feature network (default: the run's eval.feature)")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--device", default=None)
    p.add_argument("--no-log", action="store_true", help="do not log to MLflow")
    a = p.parse_args(argv)
    snap = load_snapshot(a.ckpt, a.device)
    ecfg = snap.cfg.eval
    with open_dict(ecfg):
        if a.num_samples is not None:
            ecfg.num_samples = a.num_samples
        if a.feature is not None:
            ecfg.feature = a.feature
        if a.seed is not None:
            ecfg.seed = a.seed
    fid = FIDEvaluator(ecfg, getattr(snap.task, "eval_manifest", snap.manifest), snap.device)
    results = {f"{k}/n{ecfg.num_samples}": v for k, v in fid(snap.task.sampler()).items()}
    extra = getattr(snap.task, "eval_metrics", None)  # a tokenizer's PSNR, SSIM, codebook usage
    if extra is not None:
        results |= extra()
    key = f"{fid.metric_key}/n{ecfg.num_samples}"
    out = {
        "step": snap.checkpoint.step,
        "metric": key,
        "value": results[key],
        "num_samples": ecfg.num_samples,
        "metrics": results,
    }
    run_id = snap.checkpoint.meta.get("mlflow_run_id")
    uri = snap.checkpoint.meta.get("tracking_uri")
    if run_id and uri and not a.no_log:
        from mlflow.tracking import MlflowClient

        client = MlflowClient(uri)
        for k, v in results.items():
            client.log_metric(run_id, k, v, step=snap.checkpoint.step)
        out["mlflow_run_id"] = run_id
    print(json.dumps(out))
    return 0
