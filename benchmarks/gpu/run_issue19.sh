#!/usr/bin/env bash
# One device call for issue 19 (the device README: carry .whl, the wheels the GPU image lacks):
#   PART=1: biggan128.sh and prior_gpt_b.sh (~8 min); PART=2: fid50k.sh standin (~4 min);
#   PART=3: biggan128.sh 256 next (~9 min: cuDNN timing, fused attention, the step's profile);
#   PART=4 / PART=5: biggan128.sh 256 mode reduce-overhead / max-autotune-no-cudagraphs (<= 7 min).
# Run on 2026-12-04 (H200): PART=1 and 2, benchmarks/gpu/results/h200-2026-12-04.log. Next: 3, 4, 5.
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 PY=python3
O=${OUT:-/tmp/out}; mkdir -p "$O"
if [ "${PART:-1}" = 3 ]; then
  bash benchmarks/gpu/biggan128.sh 256 next 2>&1 | tee "$O/biggan128_next.log"
elif [ "${PART:-1}" = 4 ]; then
  bash benchmarks/gpu/biggan128.sh 256 mode reduce-overhead 2>&1 | tee "$O/biggan128_reduce_overhead.log"
elif [ "${PART:-1}" = 5 ]; then
  bash benchmarks/gpu/biggan128.sh 256 mode max-autotune-no-cudagraphs 2>&1 | tee "$O/biggan128_autotune.log"
elif [ "${PART:-1}" = 1 ]; then
  bash benchmarks/gpu/biggan128.sh 2>&1 | tee "$O/biggan128.log"
  bash benchmarks/gpu/prior_gpt_b.sh 2>&1 | tee "$O/prior.log"
else
  bash benchmarks/gpu/fid50k.sh standin 2>&1 | tee "$O/fid50k.log"
  # first-iteration losses with no update (lr 0): G's loss then reads the same D in both precisions
  c="experiment=imagenet128_biggan batch=256 device=cuda trainer.accumulation=1 optim.d.lr=0 optim.g.lr=0 iters=1 warmup=1"
  timeout 60 python3 benchmarks/biggan_step.py $c precision=fp32 2>&1 | tail -1 | tee -a "$O/losses.log"
  timeout 90 python3 benchmarks/biggan_step.py $c precision=bf16 channels_last=true compile=true 2>&1 | tail -1 | tee -a "$O/losses.log"
fi
