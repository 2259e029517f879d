#!/usr/bin/env bash
# The transformer prior at GPT-B size (LlamaGen's block: 768 wide, 12 layers, 12 heads, 2-D RoPE;
# 111M parameters) over the 256 tokens of a 16,384-code tokenizer, on one GPU, bf16 + torch.compile
# with fused AdamW, at batch 64 and 256 per GPU: tokens/s and MFU (6 N tokens/s over the card's
# measured bf16 matmul rate). One call of about 4 minutes; one JSON line per configuration.
#   bash benchmarks/gpu/prior_gpt_b.sh [full]   (full: also fp32, eager bf16 and KV-cached sampling)
set -u
PY=${PY:-python3}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
GPTB="dim=768 layers=12 heads=12 seq_len=256 vocab=16384 device=cuda"
for B in 64 256; do
  timeout 200 $PY benchmarks/prior_step.py $GPTB batch=$B precision=bf16 compile=true iters=20 warmup=5 2>&1 | tail -3
done
if [ "${1:-}" = full ]; then
  timeout 120 $PY benchmarks/prior_step.py $GPTB batch=64 precision=fp32 iters=10 warmup=3 2>&1 | tail -3
  timeout 120 $PY benchmarks/prior_step.py $GPTB batch=64 precision=bf16 iters=20 warmup=3 2>&1 | tail -3
  timeout 120 $PY benchmarks/prior_sampling.py dim=768 layers=12 heads=12 seq_len=256 vocab=16384 batch=32 device=cuda 2>&1 | tail -3
fi
