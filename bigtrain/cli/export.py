"""``bigtrain export CKPT OUT [--what generator|tokenizer|prior|density]``: a checkpoint's inference part as
``OUT/config.json`` + ``OUT/model.safetensors`` + ``OUT/README.md`` (a model card); a prior's
tokenizer goes into ``OUT/tokenizer/``. ``CKPT`` may be a run folder (its newest valid
checkpoint). ``bigtrain.load(OUT)`` samples from it without bigtrain's training code paths."""

from __future__ import annotations

import argparse
import json

from bigtrain.inference import export


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="bigtrain export", description=__doc__)
    p.add_argument("ckpt", help="a checkpoint folder (checkpoints/step-N) or a run folder")
    p.add_argument("out", help="the export folder to write (replaced if it is an earlier export)")
    p.add_argument("--what", choices=("generator", "tokenizer", "prior", "density"), default=None,
                   help="what to export (default: what the checkpoint's task trains)")  # fmt: skip
    a = p.parse_args(argv)
    out = export(a.ckpt, a.out, a.what)
    desc = json.loads((out / "config.json").read_text())
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    print(json.dumps({"out": str(out), "kind": desc["kind"], "model": desc["model"]["name"],
                      "step": desc["source"]["step"], "bytes": size}))  # fmt: skip
    return 0
