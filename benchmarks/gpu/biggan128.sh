#!/usr/bin/env bash
# BigGAN 128x128 (imagenet128_biggan preset, G 70.4M / D 88.0M) at batch 256 on one GPU:
# 1 D step + 1 G step + EMA per iteration (accumulation 1, as the reference is timed), in
# fp32 eager, bf16, bf16 + channels_last, bf16 + channels_last + torch.compile.
# One call of under 8 minutes. Prints one JSON line per configuration.
#   bash benchmarks/gpu/biggan128.sh [BATCH]
set -u
B=${1:-256}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python -c "import torch; print('torch', torch.__version__)"
run() {
  timeout "$1" python benchmarks/biggan_step.py experiment=imagenet128_biggan batch="$B" device=cuda \
    trainer.accumulation=1 "${@:2}" 2>&1 | tail -1
}
run 150 precision=fp32 iters=8 warmup=2
run 150 precision=bf16 iters=8 warmup=2
run 150 precision=bf16 channels_last=true iters=8 warmup=2
run 330 precision=bf16 channels_last=true compile=true iters=8 warmup=3
