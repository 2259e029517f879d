"""The ceiling of ``class_agreement``: how often a feature network's class head reads the *real*
images of a split as their own label. A generated image cannot be read more reliably than the real
ones, so this is what a model's class agreement compares with (and it shows when a classifier
cannot read a domain at all, as the digits classifier and the thick inverted digits of
``builtin:mnist5k-domains``)::

    python benchmarks/class_agreement_ceiling.py data=data/mnist5k-edges
    python benchmarks/class_agreement_ceiling.py data=data/mnist5k-domains domain=B

Prints one JSON line: ``{"data", "domain", "split", "feature", "images", "agreement"}``.
"""

from __future__ import annotations

import torch
from _common import emit, parse_args

from bigtrain.data.manifest import DatasetManifest
from bigtrain.data.read import iter_labelled
from bigtrain.eval.features import build_feature_extractor


def main() -> None:
    args = parse_args({"data": "data/mnist5k-edges", "domain": "", "split": "val", "feature": "digits"})
    manifest = DatasetManifest.load(args["data"])
    if args["domain"]:
        manifest = manifest.domain_view(args["domain"])
    net = build_feature_extractor(args["feature"], torch.device("cpu"))
    if net.probs is None:
        raise SystemExit(f"feature={args['feature']} has no class head")
    hits = total = 0
    for images, labels in iter_labelled(manifest, args["split"], 250, resolution=net.input_size):
        x = torch.from_numpy(images).permute(0, 3, 1, 2).float()
        x = x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x  # [0, 255] RGB, clean-fid's convention
        with torch.no_grad():
            hits += int((net.probs(x).argmax(1).numpy() == labels).sum())
        total += len(labels)
    emit({"data": args["data"], "domain": args["domain"], "split": args["split"], "feature": args["feature"],
          "images": total, "agreement": round(hits / max(total, 1), 4)})  # fmt: skip


if __name__ == "__main__":
    main()
