"""A GAN checkpoint's metrics under each choice of the EMA generator's BatchNorm statistics
(issue 13's "measure under each choice"), one evaluation per row, then one JSON line of all rows.

``ema.buffers`` decides which buffers G_ema holds (``average``: averaged with the weights, the
reference's ``utils.ema``; ``copy``: the live G's), ``eval.g_bn`` which statistics a sample uses
(``running``, ``batch``, ``standing``). The EMA weights do not depend on ``ema.buffers`` and the
live G is in the checkpoint, so a run trained with ``ema.buffers=average`` gives both: ``copy`` is
its G_ema with G's buffers loaded, exactly what a ``copy`` run holds at that step.

    python benchmarks/gan_bn_modes.py ckpt=runs/X/checkpoints/step-00002000 [num_samples=2000]
        [modes=running,batch,standing] [device=cpu]
"""

from __future__ import annotations

import time

from _common import emit, parse_args

from bigtrain.eval.registry import Evaluator
from bigtrain.train.snapshot import load_snapshot
from bigtrain.train.task import eval_metrics


def main() -> None:
    args = parse_args({"ckpt": "", "num_samples": 2000, "modes": "running,batch,standing", "device": "cpu"})
    if not args["ckpt"]:
        raise SystemExit("ckpt=PATH (a task=gan checkpoint trained with ema.buffers=average) is required")
    rows = []
    for buffers in ("average", "copy"):
        for mode in args["modes"].split(","):
            t0 = time.perf_counter()
            snap = load_snapshot(
                args["ckpt"], args["device"], [f"eval.g_bn={mode}", f"eval.num_samples={args['num_samples']}"]
            )
            task = snap.task
            if str(snap.cfg.ema.buffers) != "average" or task.ema is None:
                raise SystemExit(
                    f"{args['ckpt']}: trained with ema.buffers={snap.cfg.ema.buffers}; needs average"
                )
            if buffers == "copy":
                live = dict(task.G.named_buffers())
                for name, buf in task.ema.model.named_buffers():
                    buf.copy_(live[name])
            evaluator = Evaluator(snap.cfg.eval, eval_metrics(snap.cfg), snap.device)
            task.before_sampling()
            metrics = evaluator(task.eval_source())
            row = {
                "ema.buffers": buffers,
                "eval.g_bn": mode,
                **metrics,
                "sec": round(time.perf_counter() - t0, 1),
            }
            print(row, flush=True)
            rows.append(row)
    emit({"bench": "gan_bn_modes", "ckpt": args["ckpt"], "step": snap.checkpoint.step, "rows": rows})


if __name__ == "__main__":
    main()
