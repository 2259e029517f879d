"""``bigtrain inspect CKPT [--json]``: the step, a SHA-256 content digest of each component, the
config fingerprint and the config changes allowed on resume (``bigtrain.config.fingerprint``).

Digests are recomputed from the files (and compared with those recorded at save time), so two
runs that reached the same state print the same digests.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from bigtrain.checkpoint.best import read_best
from bigtrain.checkpoint.digest import digest
from bigtrain.checkpoint.io import CheckpointError, open_checkpoint


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="bigtrain inspect", description=__doc__)
    p.add_argument("ckpt", help="a checkpoint folder (run.dir/checkpoints/step-XXXXXXXX)")
    p.add_argument(
        "--json",
        action="store_true",
        help='print {"step": N, "digests": {...}, "config_fingerprint": ..., "config_changes": [...]}',
    )
    a = p.parse_args(argv)
    ck = open_checkpoint(a.ckpt)
    digests = {name: digest(ck.load(name)) for name in ck.component_names()}
    bad = [n for n, d in digests.items() if d != ck.meta["digests"][n]]
    if bad:
        raise CheckpointError(
            f"{ck.path}: components {', '.join(bad)} differ from the digests recorded at save time"
        )
    folder = ck.path.resolve()  # checkpoints/best is a link to the folder
    best = read_best(folder.parent.parent)
    rank = next((i for i, e in enumerate(best["best"]) if Path(e["path"]).name == folder.name), None)
    best_info = None
    if rank is not None:
        metric = best["metric"] or "the headline metric"
        best_info = {
            "rank": rank + 1,
            "of": len(best["best"]),
            "metric": metric,
            "value": best["best"][rank]["value"],
        }
    fingerprint = ck.meta.get("config_fingerprint")  # absent in checkpoints written before issue 14
    history = ck.meta.get("config_changes", [])
    if a.json:
        print(
            json.dumps(
                {
                    "step": ck.step,
                    "digests": digests,
                    "config_fingerprint": fingerprint,
                    "config_changes": history,
                    "best": best_info,
                }
            )
        )
    else:
        print(f"{ck.path}  step {ck.step}  config {fingerprint or '(not recorded)'}")
        if best_info is not None:
            print(
                f"  best checkpoint {best_info['rank']} of {best_info['of']} by {best_info['metric']}: {best_info['value']:.4f}"
            )
        width = max(map(len, digests), default=0)
        for name, d in digests.items():
            print(f"  {name.ljust(width)}  {d}")
        for change in history:
            keys = ", ".join(f"{k}: {old!r} -> {new!r}" for k, (old, new) in change["changes"].items())
            print(f"  config changed on resume at step {change['step']}: {keys}")
    return 0
