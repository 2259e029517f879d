"""Training throughput of the transformer prior and its model FLOPs utilisation (MFU).

    python benchmarks/prior_step.py dim=768 layers=12 heads=12 seq_len=256 vocab=16384 batch=64 \\
        device=cuda precision=bf16 compile=true iters=20 warmup=5

Times full optimisation steps (forward, next-token loss, backward, AdamW) on random tokens after
``warmup`` steps. MFU = 6 * N * tokens/s (N = parameters; the issue's definition, attention FLOPs
left out) over the card's *measured* dense bf16 (or fp32) matmul rate, timed here with an
8192^3 matmul, so the ratio is honest for whatever card runs it. Prints one JSON line last.
"""

from __future__ import annotations

import time

import torch
from _common import emit, parse_args, peak_mem_gib

from bigtrain.models.transformer import PriorConfig, TokenPrior


def matmul_tflops(device: str, dtype: torch.dtype, n: int = 8192, reps: int = 10) -> float:
    if not device.startswith("cuda"):
        n, reps = 1024, 3
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(2):
        a @ b
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(reps):
        a @ b
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return 2 * n**3 * reps / (time.perf_counter() - t) / 1e12


def main() -> None:
    a = parse_args(
        {
            "dim": 256, "layers": 4, "heads": 4, "seq_len": 256, "vocab": 1024, "classes": 1000,
            "batch": 8, "iters": 5, "warmup": 2, "device": "cpu", "precision": "fp32", "compile": False,
            "block": "llama",
        }
    )  # fmt: skip
    dev, bf16 = a["device"], a["precision"] == "bf16"
    torch.manual_seed(0)
    llama = a["block"] == "llama"  # LlamaGen's block with its dropouts (imagenet256_gpt_b's) or GPT-2's
    cfg = PriorConfig(vocab=a["vocab"], seq_len=a["seq_len"], num_classes=a["classes"], dim=a["dim"],
                      layers=a["layers"], heads=a["heads"], block=a["block"], positions="rope2d" if llama else "rope",
                      dropout=0.1 if llama else 0.0, token_dropout=0.1 if llama else 0.0)  # fmt: skip
    model = TokenPrior(cfg).to(dev).train()
    n_params = sum(p.numel() for p in model.parameters())
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.05,
                            fused=dev.startswith("cuda"))  # fmt: skip
    loss_fn = torch.compile(model.loss) if a["compile"] else model.loss  # forward + loss in one graph
    tokens = torch.randint(0, a["vocab"], (a["batch"], a["seq_len"]), device=dev)
    labels = torch.randint(0, a["classes"], (a["batch"],), device=dev)

    def step() -> float:
        opt.zero_grad(set_to_none=True)
        with torch.autocast(dev.split(":")[0], dtype=torch.bfloat16, enabled=bf16):
            loss = loss_fn(tokens, labels)
        loss.backward()
        opt.step()
        return float(loss.detach())

    first = step()
    for _ in range(a["warmup"] - 1):
        step()
    if dev.startswith("cuda"):
        torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(a["iters"]):
        step()
    if dev.startswith("cuda"):
        torch.cuda.synchronize()
    seconds = (time.perf_counter() - t) / a["iters"]
    tok_s = a["batch"] * a["seq_len"] / seconds
    peak = matmul_tflops(dev, torch.bfloat16 if bf16 else torch.float32)
    emit(
        {
            "benchmark": "prior_step",
            "block": a["block"],
            "params": n_params,
            "precision": a["precision"],
            "compile": a["compile"],
            "tokens_per_s": round(tok_s, 1),
            "sec_per_iter": round(seconds, 4),
            "model_tflops": round(6 * n_params * tok_s / 1e12, 3),
            "measured_matmul_tflops": round(peak, 2),
            "mfu": round(6 * n_params * tok_s / 1e12 / peak, 4),
            "first_loss": round(first, 4),
            "peak_mem_gib": round(peak_mem_gib(dev), 2),
        }
    )


if __name__ == "__main__":
    main()
