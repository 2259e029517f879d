"""``bigtrain index SHARDS OUT``: a dataset.json for existing WebDataset shards, read where they are."""

from __future__ import annotations

import argparse
import json
import logging

from bigtrain.data.index import IndexOptions, index
from bigtrain.data.urls import is_url


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="bigtrain index", description=__doc__)
    p.add_argument(
        "shards",
        help="a folder of *.tar, a brace pattern (train-{000000..000099}.tar), http(s):// or s3:// URLs, "
        "or pipe:COMMAND; several joined by spaces or ::",
    )
    p.add_argument("out", help="folder for dataset.json (then: bigtrain train data.path=OUT)")
    p.add_argument(
        "--resolution",
        type=int,
        default=None,
        help="training side in pixels (default: the images' own, if all one square size)",
    )
    p.add_argument(
        "--label-key",
        default=None,
        help="where labels are: cls (a .cls member), json:FIELD (a field of the .json, dotted for nested) "
        "or none (default: cls when samples have one)",
    )
    p.add_argument("--val", default=None, help="shards of the val split (same forms as SHARDS)")
    p.add_argument(
        "--val-fraction", type=float, default=0.0, help="else hold out this share of the shards as val"
    )
    p.add_argument("--channels", type=int, choices=(1, 3), default=None, help="1 = grayscale, 3 = RGB")
    p.add_argument("--workers", type=int, default=8, help="shards read at once (threads; default 8)")
    p.add_argument(
        "--digests",
        choices=("auto", "yes", "no"),
        default="auto",
        help="sha256 of every shard (auto: local shards only; remote ones are named by URL and size)",
    )
    p.add_argument(
        "--retries", type=int, default=3, help="retries of a failed remote read (backoff 1, 2, 4 s)"
    )
    p.add_argument(
        "--storage-options",
        default="{}",
        help='JSON passed to fsspec for URLs, e.g. \'{"endpoint_url": "http://127.0.0.1:9000"}\'',
    )
    p.add_argument("--name", default=None, help="dataset name (default: OUT's folder name)")
    p.add_argument("--seed", type=int, default=0, help="seed of the --val-fraction choice")
    p.add_argument("--no-progress", action="store_true")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    opts = IndexOptions(
        resolution=a.resolution,
        label_key=a.label_key,
        val=a.val,
        val_fraction=a.val_fraction,
        channels=a.channels,
        workers=a.workers,
        digests={"auto": None, "yes": True, "no": False}[a.digests],
        retries=a.retries,
        storage_options=json.loads(a.storage_options),
        name=a.name,
        seed=a.seed,
        progress=not a.no_progress,
    )
    m = index(a.shards, a.out, opts)
    counts = ", ".join(f"{k}: {m.count(k)} samples in {len(v)} shards" for k, v in m.splits.items())
    where = "remote" if any(is_url(s.file) for v in m.splits.values() for s in v) else "local"
    labels = f"{m.num_classes} classes from {m.label_key}" if m.label_key else "no labels"
    extras = [x for x, on in (("captions", m.has_text), ("json metadata", m.has_meta)) if on]
    print(
        f"wrote {m.root / 'dataset.json'} ({where} shards, {m.resolution}px, {m.channels} channel(s), {labels}"
        f"{', ' + ' and '.join(extras) if extras else ''}; {counts})"
    )
    return 0
