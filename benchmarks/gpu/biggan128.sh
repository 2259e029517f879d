#!/usr/bin/env bash
# BigGAN 128x128 (imagenet128_biggan preset, G 70.4M / D 88.0M, real and fake through D as one batch)
# at batch 256 on one GPU, 1 D step + 1 G step + EMA per iteration (accumulation 1, as the reference
# is timed): fp32 eager (the first-iteration losses bf16 is held to), then bf16 + channels_last +
# torch.compile with issue 19's levers switched on one at a time in one process
# (benchmarks/gan_levers.py: the model compiles once), then the full config path with every lever.
# One call of about 7 minutes (compilation ~150 s the first time). One JSON line per configuration.
#   bash benchmarks/gpu/biggan128.sh [BATCH [next | mode NAME]]
set -u
B=${1:-256}
PY=${PY:-python3}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
$PY -c "import torch; print('torch', torch.__version__)"
common="experiment=imagenet128_biggan batch=$B device=cuda trainer.accumulation=1"
if [ -z "${2:-}" ]; then  # the first session's measurements; `next` and `mode` below run alone
timeout 150 $PY benchmarks/biggan_step.py $common precision=fp32 iters=3 warmup=1 2>&1 | tail -3
timeout 330 $PY benchmarks/gan_levers.py $common precision=bf16 channels_last=true compile=true \
  iters=8 warmup=2 rounds=2 sync_every=100 2>&1 | tail -3
timeout 200 $PY benchmarks/biggan_step.py $common precision=bf16 channels_last=true compile=true \
  optim.d.fused=true optim.g.fused=true trainer.sync_every=100 iters=16 warmup=3 2>&1 | tail -3
fi
# `bash benchmarks/gpu/biggan128.sh 256 next` (~9 min; not yet run): the levers added after the
# first H200 session, each against the full-lever step (797 img/s then), and where the time goes:
# cuDNN's algorithm timing (trainer.cudnn_benchmark, now on by default) off then on, the fused
# attention kernel, and the profile of the step by kernel kind (benchmarks/step_profile.py). The
# step's model FLOPs are counted on any CPU: python benchmarks/step_flops.py trainer.accumulation=1.
if [ "${2:-}" = next ]; then
  full="$common precision=bf16 channels_last=true compile=true optim.d.fused=true optim.g.fused=true trainer.sync_every=100"
  timeout 200 $PY benchmarks/biggan_step.py $full trainer.cudnn_benchmark=false iters=16 warmup=3 2>&1 | tail -1
  timeout 80 $PY benchmarks/biggan_step.py $full iters=16 warmup=3 2>&1 | tail -1
  timeout 150 $PY benchmarks/biggan_step.py $full trainer.attention_kernel=sdpa iters=16 warmup=3 2>&1 | tail -1
  timeout 90 $PY benchmarks/step_profile.py $full iters=4 warmup=3 top=30 2>&1 | tail -1
fi
# `bash benchmarks/gpu/biggan128.sh 256 mode NAME` (not yet run): the full-lever step compiled in
# torch.compile's mode NAME (reduce-overhead: CUDA graphs; max-autotune-no-cudagraphs), which
# compiles anew: up to 7 minutes, so one mode per device call.
if [ "${2:-}" = mode ]; then
  timeout 420 $PY benchmarks/biggan_step.py $common precision=bf16 channels_last=true compile=true \
    trainer.compile_mode=${3:?name a compile mode} optim.d.fused=true optim.g.fused=true \
    trainer.sync_every=100 iters=16 warmup=3 2>&1 | tail -3
fi
