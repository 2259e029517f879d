"""``bigtrain tokenize CKPT SHARDS OUT [--workers N] [--batch-size B] [--device cpu|cuda]``

Encode an image shard set (``bigtrain prepare``'s, or shards ``bigtrain index`` found) with a trained tokenizer checkpoint
into token shards at OUT (one per image shard, same keys; ``dataset.json`` records the token grid,
vocabulary and the tokenizer's identity). The prior (stage 2) trains from OUT. A paired set's
sources become condition codes (``--condition-tokenizer CKPT``, default the same tokenizer): a prior
trained on them draws targets for a condition image (``bigtrain sample --condition``).
"""

from __future__ import annotations

import argparse
import json

from bigtrain.data.read import ReadPolicy
from bigtrain.data.tokenize import tokenize_dataset
from bigtrain.train.snapshot import load_tokenizer


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="bigtrain tokenize", description=__doc__.split("\n\n")[1])
    p.add_argument("ckpt", help="a task=tokenizer checkpoint folder")
    p.add_argument("shards", help="the image dataset folder (with dataset.json)")
    p.add_argument("out", help="where to write the token shards")
    p.add_argument(
        "--condition-tokenizer",
        default=None,
        metavar="CKPT",
        help="a paired set's sources: encode them with this tokenizer (default: CKPT itself)",
    )
    p.add_argument("--workers", type=int, default=1, help="processes (each loads the tokenizer once)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--retries", type=int, default=3, help="retries of a failed remote shard read")
    p.add_argument(
        "--storage-options", default="{}", help="JSON for fsspec, as data.storage_options (remote shards)"
    )
    a = p.parse_args(argv)
    policy = ReadPolicy(a.retries, 1.0, json.loads(a.storage_options))
    m = tokenize_dataset(
        load_tokenizer,
        a.ckpt,
        a.shards,
        a.out,
        a.workers,
        a.batch_size,
        a.device,
        policy=policy,
        cond_ckpt=a.condition_tokenizer,
    )
    summary = {split: m.count(split) for split in m.splits}
    print(
        json.dumps({"out": str(m.root), "counts": summary, **{k: m.extra[k] for k in ("tokens", "skipped")}})
    )
    return 0
