"""``bigtrain prepare SRC OUT``: image folder (one sub-folder per class) or builtin:mnist5k -> shards."""

from __future__ import annotations

import argparse
import logging

from bigtrain.data.prepare import PrepareOptions, prepare


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="bigtrain prepare", description=__doc__)
    p.add_argument("src", help="an image folder with one sub-folder per class, or builtin:mnist5k")
    p.add_argument("out", help="output folder for train-*.tar, val-*.tar and dataset.json")
    p.add_argument(
        "--resolution", type=int, default=None, help="square side in pixels (required for folders)"
    )
    p.add_argument(
        "--val-fraction", type=float, default=0.1, help="share of images held out as 'val' (default 0.1)"
    )
    p.add_argument("--samples-per-shard", type=int, default=1000, help="images per tar shard (default 1000)")
    p.add_argument("--channels", type=int, choices=(1, 3), default=None, help="1 = grayscale, 3 = RGB")
    p.add_argument("--seed", type=int, default=0, help="seed of the train/val split")
    p.add_argument("--no-progress", action="store_true")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    m = prepare(
        a.src,
        a.out,
        PrepareOptions(
            a.resolution, a.val_fraction, a.samples_per_shard, a.channels, a.seed, not a.no_progress
        ),
    )
    counts = ", ".join(f"{k}: {m.count(k)} images in {len(v)} shards" for k, v in m.splits.items())
    print(f"wrote {m.root} ({m.resolution}px, {m.channels} channel(s), {m.num_classes} classes; {counts})")
    return 0
