"""Sampling speed of the transformer prior with and without the KV cache.

    python benchmarks/prior_sampling.py dim=256 layers=4 heads=4 seq_len=256 batch=8 device=cpu

Builds a randomly initialised prior (sampling cost does not depend on the weights), draws
``batch`` sequences of ``seq_len`` tokens both ways from the same seed (checking they agree) and
prints one JSON line with tokens/s for each and the speed-up.
"""

from __future__ import annotations

import time

import torch
from _common import emit, parse_args

from bigtrain.models.transformer import PriorConfig, TokenPrior, generate


def main() -> None:
    a = parse_args(
        {
            "dim": 256,
            "layers": 4,
            "heads": 4,
            "seq_len": 256,
            "vocab": 1024,
            "batch": 8,
            "device": "cpu",
            "cfg_scale": 1.0,
            "block": "llama",
        }
    )
    torch.manual_seed(0)
    cfg = PriorConfig(
        vocab=a["vocab"],
        seq_len=a["seq_len"],
        num_classes=10,
        dim=a["dim"],
        layers=a["layers"],
        heads=a["heads"],
        block=a["block"],
        positions="rope2d" if a["block"] == "llama" else "rope",
    )
    model = TokenPrior(cfg).to(a["device"]).eval()
    labels = torch.arange(a["batch"], device=a["device"]) % 10
    out, rates = {}, {}
    for cached in (True, False):
        g = torch.Generator(a["device"]).manual_seed(0)
        t = time.perf_counter()
        out[cached] = generate(
            model, labels, a["batch"], use_cache=cached, generator=g, cfg_scale=a["cfg_scale"]
        )
        if a["device"].startswith("cuda"):
            torch.cuda.synchronize()
        rates[cached] = a["batch"] * a["seq_len"] / (time.perf_counter() - t)
    emit(
        {
            "benchmark": "prior_sampling",
            "params": sum(p.numel() for p in model.parameters()),
            "seq_len": a["seq_len"],
            "batch": a["batch"],
            "tokens_per_s_cached": round(rates[True], 1),
            "tokens_per_s_uncached": round(rates[False], 1),
            "speedup": round(rates[True] / rates[False], 2),
            "same_tokens": bool(torch.equal(out[True], out[False])),
        }
    )


if __name__ == "__main__":
    main()
