"""``bigtrain prepare SRC OUT``: an image folder (one sub-folder per class, or flat for an unlabelled
set) or a built-in (builtin:mnist5k, builtin:mnist5k-edges, builtin:mnist5k-domains,
builtin:mnist5k-captions) -> WebDataset shards. ``--pairs SRC_DIR TGT_DIR OUT``: paired images
(<key>.src.png + <key>.tgt.png samples, files matched by path without suffix) for image-to-image
translation; ``--domains A_DIR B_DIR OUT``: two unpaired sets, each in its own shards
(train-A-*.tar, train-B-*.tar, ...). ``--shard-range i/n`` writes one part of a SLURM array's
output; ``bigtrain prepare --merge OUT`` joins the parts. The shards are byte-identical for any
--workers and any split into parts."""

from __future__ import annotations

import argparse
import logging

from bigtrain.data.manifest import DatasetManifest
from bigtrain.data.prepare import RESIZE_CHOICES, Domains, Input, Pairs, PrepareOptions, merge, prepare


def _shard_range(text: str) -> tuple[int, int]:
    i, sep, n = text.partition("/")
    try:
        value = (int(i), int(n))
    except ValueError:
        value = (-1, 0)
    if not sep or not 0 <= value[0] < value[1]:
        raise argparse.ArgumentTypeError(f"expected i/n with 0 <= i < n (e.g. 0/4), got '{text}'")
    return value


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="bigtrain prepare",
        usage="bigtrain prepare SRC OUT [options] | bigtrain prepare --pairs SRC_DIR TGT_DIR OUT [options] | "
        "bigtrain prepare --domains A_DIR B_DIR OUT [options] | bigtrain prepare --merge OUT",
        description=__doc__,
    )
    p.add_argument("src", nargs="?", help="an image folder (SRC/<class>/... or flat), or builtin:NAME")
    p.add_argument("out", nargs="?", help="output folder for train-*.tar, val-*.tar and dataset.json")
    p.add_argument(
        "--pairs",
        nargs=2,
        metavar=("SRC_DIR", "TGT_DIR"),
        default=None,
        help="paired images instead of SRC: each image of TGT_DIR (the target; class folders give "
        "labels) with the file of SRC_DIR at the same path without suffix (the source: a/b.png with "
        "a/b.jpg); then OUT alone",
    )
    p.add_argument(
        "--domains",
        nargs=2,
        metavar=("A_DIR", "B_DIR"),
        default=None,
        help="two unpaired image folders instead of SRC (each flat or with class folders): domains A "
        "and B, each with its own train/val split and shards (train-A-*.tar, ...); then OUT alone",
    )
    p.add_argument(
        "--resolution", type=int, default=None, help="target side in pixels (required for folders)"
    )
    p.add_argument(
        "--val-fraction", type=float, default=0.1, help="share of images held out as 'val' (default 0.1)"
    )
    p.add_argument("--samples-per-shard", type=int, default=1000, help="images per tar shard (default 1000)")
    p.add_argument("--channels", type=int, choices=(1, 3), default=None, help="1 = grayscale, 3 = RGB")
    p.add_argument("--seed", type=int, default=0, help="seed of the train/val split")
    p.add_argument(
        "--workers", type=int, default=1, help="processes (default 1; 0 = one per CPU); output is the same"
    )
    p.add_argument(
        "--format", choices=("png", "jpg", "webp"), default="png", help="image format (default png)"
    )
    p.add_argument("--quality", type=int, default=95, help="jpg/webp quality 1..100 (default 95)")
    p.add_argument(
        "--resize",
        choices=RESIZE_CHOICES,
        default="center",
        help="center: shorter side to R, centre crop (default); pad: longer side to R, black bars; "
        "shorter: shorter side to R only (the training stream crops)",
    )
    p.add_argument(
        "--captions",
        default=None,
        help="captions instead of sidecar .txt files: a folder mirroring SRC, or a .jsonl "
        '({"file": REL, "caption": TEXT} per line), .csv or .tsv (REL, TEXT) file',
    )
    p.add_argument(
        "--shard-range",
        type=_shard_range,
        default=None,
        metavar="i/n",
        help="write only shard jobs j with j %% n == i, and OUT/dataset.part-i-of-n.json "
        "(one task of a SLURM array)",
    )
    p.add_argument("--merge", metavar="OUT", default=None, help="join OUT's parts into OUT/dataset.json")
    p.add_argument("--no-progress", action="store_true")
    return p


def _input(p: argparse.ArgumentParser, a: argparse.Namespace) -> tuple[Input, str]:
    """What to prepare and where: SRC OUT, or --pairs / --domains folders and OUT."""
    if a.pairs is not None and a.domains is not None:
        p.error("--pairs and --domains exclude each other")
    if a.pairs is None and a.domains is None:
        if a.src is None or a.out is None:
            p.error(
                "SRC and OUT are required (or --pairs SRC_DIR TGT_DIR OUT, --domains A_DIR B_DIR OUT, --merge OUT)"
            )
        return a.src, a.out
    flag = "--pairs SRC_DIR TGT_DIR" if a.pairs is not None else "--domains A_DIR B_DIR"
    if a.src is None or a.out is not None:
        p.error(f"{flag} takes exactly one more argument, OUT")
    return (Pairs(*a.pairs) if a.pairs is not None else Domains(tuple(a.domains))), a.src


def _counts(m: DatasetManifest) -> str:
    """E.g. "train: 4500 images in 9 shards", with each domain's count for a domains dataset."""
    out = []
    for k, v in m.splits.items():
        per = " + ".join(f"{m.count(k, d)} {d}" for d in m.domains)
        out.append(f"{k}: {m.count(k)} images{f' ({per})' if per else ''} in {len(v)} shards")
    return ", ".join(out)


def main(argv: list[str]) -> int:
    p = _parser()
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if a.merge is not None:
        if a.src is not None or a.pairs is not None or a.domains is not None:
            p.error("--merge OUT takes no SRC/OUT, --pairs or --domains arguments")
        m = merge(a.merge)
        print(f"merged {m.root / 'dataset.json'} ({_counts(m)})")
        return 0
    src, out = _input(p, a)
    opts = PrepareOptions(
        resolution=a.resolution,
        val_fraction=a.val_fraction,
        samples_per_shard=a.samples_per_shard,
        channels=a.channels,
        seed=a.seed,
        progress=not a.no_progress,
        workers=a.workers,
        format=a.format,
        quality=a.quality,
        resize=a.resize,
        shard_range=a.shard_range,
        captions=a.captions,
    )
    try:
        m = prepare(src, out, opts)
    except ValueError as exc:  # a bad option value (resolution, quality, an unknown built-in, ...)
        p.error(str(exc))
    counts = _counts(m)
    shape = f"{m.resolution}px, {m.channels} channel(s), {m.num_classes} classes"
    if m.layout != "images":
        shape += f", layout {m.layout}"
    if a.shard_range is not None:
        i, n = a.shard_range
        print(f"wrote part {i}/{n} of {m.root} ({shape}; {counts}); when all {n} are done: "
              f"bigtrain prepare --merge {m.root}")  # fmt: skip
    else:
        print(f"wrote {m.root} ({shape}; {counts})")
    return 0
