#!/usr/bin/env bash
# FID-50k time on one GPU machine: bigtrain's evaluation path against clean-fid's get_model_features
# on the same 50,000 samples of the imagenet128_biggan generator (benchmarks/fid_time.py). Without the
# real Inception file (it cannot be downloaded there) pass standin: a random-weight TorchScript
# network of the same architecture, whose cost is the same. About 4 minutes; one JSON line.
#   bash benchmarks/gpu/fid50k.sh [standin]
set -u
PY=${PY:-python3}
nproc
S=false; [ "${1:-}" = standin ] && S=true
timeout 420 $PY benchmarks/fid_time.py experiment=imagenet128_biggan num=50000 batch=250 device=cuda standin=$S 2>&1 | tail -3
