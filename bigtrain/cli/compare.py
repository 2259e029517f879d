"""``bigtrain compare [RUN_ID ...] [--experiment NAME] [--uri URI] [--metric KEY] [--out PNG] [--json]``

Reads the runs back from MLflow (a server or the local SQLite store), draws their metric curves
(default: the first ``fid/*`` they logged, else ``rfid/*``) into one PNG and prints a Markdown table of the
parameters that differ between them, with the last and best metric and each run's last
checkpoint. ``--experiment`` adds every run of an experiment (a sweep).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from bigtrain.errors import ConfigError
from bigtrain.tracking.compare import collect, plot, table
from bigtrain.tracking.mlflow_tracker import absolute_uri


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="bigtrain compare", description=__doc__.split("\n\n")[1])
    p.add_argument("runs", nargs="*", help="MLflow run ids")
    p.add_argument("--experiment", help="compare every run of this MLflow experiment")
    p.add_argument(
        "--uri", default="sqlite:///mlflow.db", help="MLflow tracking URI (default: sqlite:///mlflow.db)"
    )
    p.add_argument("--metric", help="metric to plot (default: the first fid/* key, else rfid/*)")
    p.add_argument("--out", type=Path, default=Path("compare.png"), help="PNG to write (default compare.png)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    args = p.parse_args(argv)
    try:
        metric, runs = collect(absolute_uri(args.uri), args.runs, args.experiment, args.metric)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    png = plot(metric, runs, args.out)
    if args.json:
        print(
            json.dumps(
                {
                    "metric": metric,
                    "png": str(png),
                    "runs": [
                        {
                            "run_id": r.run_id,
                            "name": r.name,
                            "status": r.status,
                            "curve": r.curve,
                            "last": r.last,
                            "best": r.best,
                        }
                        for r in runs
                    ],
                }
            )
        )
    else:
        print(table(metric, runs))
        print(f"\n{metric} curves: {png}")
    return 0
