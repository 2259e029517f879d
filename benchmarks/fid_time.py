"""FID-50k time: bigtrain's evaluation path against clean-fid's own, on the same generator and images.

    python benchmarks/fid_time.py experiment=imagenet128_biggan num=50000 batch=250 device=cuda [standin=true]

Both sides draw the same ``num`` samples from the preset's generator (random weights; the time does
not depend on them), batch by batch with bigtrain's per-batch seeds, and end with the features' mean
and covariance, what FID needs of the samples (the reference statistics are a cached file either way):

- ``bigtrain``: :func:`bigtrain.eval.fid.generator_features` and :func:`feature_stats`, what
  ``bigtrain evaluate`` and the training loop's evaluation run (sampling, quantisation, clean-fid's
  PIL-bicubic resize on :func:`resize_threads` threads, Inception features);
- ``cleanfid``: clean-fid's ``get_model_features`` with its ``build_feature_extractor("clean")``, then
  ``np.mean`` / ``np.cov``, which is what its ``compute_fid(gen=...)`` runs for a generator.

``standin=true`` writes a TorchScript network of torchvision's Inception-v3 architecture with random
weights, in the calling convention of clean-fid's ``inception-2015-12-05.pt``, where both look for
that file: for timing on a machine where the real file cannot be had (its features are then
meaningless, its cost the same). Prints one JSON line last: seconds and img/s of each side, their
ratio, and the largest difference between the two sides' features (0 when they agree).
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from _common import emit, parse_args
from task_step import build
from torch import Tensor, nn


class _StandIn(nn.Module):
    """torchvision's Inception-v3 trunk (random weights) behind the interface of clean-fid's file:
    ``layers`` maps ``(x - 128) / 128`` at 299 px to ``[B, 2048, 1, 1]``; ``forward`` resizes first."""

    def __init__(self) -> None:
        super().__init__()
        import torchvision

        net = torchvision.models.inception_v3(weights=None, aux_logits=False, init_weights=False)
        keep = [n for n, _ in net.named_children() if n not in ("AuxLogits", "dropout", "fc")]
        self.layers = nn.Sequential(*[getattr(net, n) for n in keep])
        self.output = nn.Linear(2048, 1008)

    def forward(self, x: Tensor, return_features: bool = False, no_output_bias: bool = False) -> Tensor:
        x = F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)
        f = self.layers((x - 128) / 128).flatten(1)
        if return_features:
            return f
        logits = F.linear(f, self.output.weight) if no_output_bias else self.output(f)
        return F.softmax(logits, dim=1)


def _write_standin() -> None:
    cache = Path(tempfile.mkdtemp(prefix="bigtrain-standin-"))
    os.environ["BIGTRAIN_CACHE"] = str(cache)
    scripted = torch.jit.script(_StandIn().eval())
    (cache / "weights").mkdir(parents=True)
    scripted.save(str(cache / "weights" / "inception-2015-12-05.pt"))
    scripted.save("/tmp/inception-2015-12-05.pt")  # where clean-fid's feature_extractor looks


def main() -> None:
    a = parse_args(
        {
            "experiment": "imagenet128_biggan",
            "num": 50000,
            "batch": 250,
            "device": "cuda",
            "precision": "fp32",
            "standin": False,
            "channels_last": False,
            "compile": False,
        }
    )
    if a["standin"]:
        _write_standin()
    from cleanfid import fid as cfid
    from cleanfid.features import build_feature_extractor as cleanfid_extractor

    from bigtrain.eval.features import build_feature_extractor
    from bigtrain.eval.fid import (
        batch_seed,
        feature_stats,
        generator_features,
        quantize_images,
        resize_threads,
    )

    _, task, _, _ = build(a)
    device = torch.device(a["device"])
    cuda = device.type == "cuda"
    seed = 1234

    def sample(n: int, generator: torch.Generator) -> Tensor:
        return task.sample(n, generator)

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize()

    # bigtrain's path
    extractor = build_feature_extractor("inception", device)
    generator_features(sample, a["batch"], a["batch"], extractor, device, seed, progress=False)  # warm-up
    sync()
    t = time.perf_counter()
    ours = generator_features(sample, a["num"], a["batch"], extractor, device, seed, progress=False)
    mu, sigma = feature_stats(ours)
    sync()
    ours_s = time.perf_counter() - t

    # clean-fid's path on the same images: its generator call ignores z and returns bigtrain's batch k
    model = cleanfid_extractor("clean", device)
    counter = iter(range(10**9))

    def gen(z: Tensor) -> Tensor:
        k = next(counter)
        g = torch.Generator(device=device).manual_seed(batch_seed(seed, k))
        with torch.no_grad():
            return quantize_images(sample(z.shape[0], g))

    cfid.get_model_features(gen, model, mode="clean", z_dim=8, num_gen=a["batch"], batch_size=a["batch"],
                            device=device, verbose=False)  # fmt: skip
    counter = iter(range(10**9))
    sync()
    t = time.perf_counter()
    theirs = cfid.get_model_features(gen, model, mode="clean", z_dim=8, num_gen=a["num"], batch_size=a["batch"],
                                     device=device, verbose=False)  # fmt: skip
    mu2, sigma2 = np.mean(theirs, axis=0), np.cov(theirs, rowvar=False)
    sync()
    theirs_s = time.perf_counter() - t
    emit(
        {
            "bench": "fid_time",
            "experiment": a["experiment"],
            "device": torch.cuda.get_device_name() if cuda else "cpu",
            "cpu_cores": len(os.sched_getaffinity(0)),
            "resize_threads": resize_threads(),
            "num": a["num"],
            "batch": a["batch"],
            "standin_inception": a["standin"],
            "bigtrain_s": round(ours_s, 2),
            "cleanfid_s": round(theirs_s, 2),
            "bigtrain_img_per_s": round(a["num"] / ours_s, 1),
            "cleanfid_img_per_s": round(a["num"] / theirs_s, 1),
            "speedup": round(theirs_s / ours_s, 3),
            "features_max_abs_diff": float(np.abs(ours - theirs).max()),
            "mu_max_abs_diff": float(np.abs(mu - mu2).max()),
            "sigma_max_abs_diff": float(np.abs(sigma - sigma2).max()),
        }
    )


if __name__ == "__main__":
    main()
