"""Sampling speed of a prior with and without its cache: the transformer's KV cache, or the
PixelCNN prior's row cache (``model=pixelcnn_prior``; the second line is ``mnist_pixelcnn_prior``'s
network: 8 layers of 128 features over 64-d embeddings of 256 codes on an 8x8 grid).

    python benchmarks/prior_sampling.py dim=256 layers=4 heads=4 seq_len=256 batch=8 device=cpu
    python benchmarks/prior_sampling.py model=pixelcnn_prior layers=8 seq_len=64 vocab=256 batch=100 cfg_scale=1.5

Builds a randomly initialised prior (sampling cost does not depend on the weights; the PixelCNN's
zero-initialised head is given random weights so the draws are not uniform), draws ``batch``
sequences of ``seq_len`` tokens both ways from the same seed (checking they agree) and prints one
JSON line with tokens/s for each and the speed-up.
"""

from __future__ import annotations

import time

import torch
from _common import emit, parse_args

from bigtrain.models import build_model
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
            "model": "gpt",  # or pixelcnn_prior
            "width": 128,  # pixelcnn_prior's: features per stack, code embedding, kernels
            "code_dim": 64,
            "kernel": 3,
            "input_kernel": 5,
        }
    )
    torch.manual_seed(0)
    if a["model"] == "pixelcnn_prior":
        arch = {"layers": a["layers"], "width": a["width"], "dim": a["code_dim"], "kernel": a["kernel"],
                "input_kernel": a["input_kernel"]}  # fmt: skip
        model = build_model("pixelcnn_prior", arch, vocab=a["vocab"], seq_len=a["seq_len"], num_classes=10)
        torch.nn.init.normal_(model.head.weight, std=0.05)
        _compare(a, model.to(a["device"]).eval())
        return
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
    _compare(a, TokenPrior(cfg).to(a["device"]).eval())


def _compare(a: dict, model: torch.nn.Module) -> None:
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
            "model": a["model"],
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
