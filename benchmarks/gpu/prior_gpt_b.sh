#!/usr/bin/env bash
# The transformer prior at GPT-B size (768 wide, 12 layers, 12 heads; 111M parameters) over the
# 256 tokens of a 16,384-code tokenizer, batch 64, on one GPU: fp32 eager, bf16, bf16 + compile,
# and KV-cached vs uncached sampling. One call of under 8 minutes; one JSON line per configuration.
#   bash benchmarks/gpu/prior_gpt_b.sh [BATCH]
set -u
B=${1:-64}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python -c "import torch; print('torch', torch.__version__)"
GPTB="dim=768 layers=12 heads=12 seq_len=256 vocab=16384 device=cuda"
timeout 120 python benchmarks/prior_step.py $GPTB batch="$B" precision=fp32 iters=10 warmup=3 2>&1 | tail -1
timeout 120 python benchmarks/prior_step.py $GPTB batch="$B" precision=bf16 iters=20 warmup=3 2>&1 | tail -1
timeout 240 python benchmarks/prior_step.py $GPTB batch="$B" precision=bf16 compile=true iters=20 warmup=5 2>&1 | tail -1
timeout 120 python benchmarks/prior_sampling.py dim=768 layers=12 heads=12 seq_len=256 vocab=16384 batch=32 device=cuda 2>&1 | tail -1
