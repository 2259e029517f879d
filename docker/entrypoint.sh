#!/bin/bash
# Container entry point: `docker run IMAGE COMMAND ARGS` runs `bigtrain COMMAND ARGS`; a first
# argument that is an executable on PATH (bash, python, torchrun, accelerate) runs as itself, so
# the same image serves `docker run ... bash` and SLURM's `srun --container-image ... torchrun ...`.
set -euo pipefail
mkdir -p "${BIGTRAIN_CACHE:-/cache}"
if [[ $# -gt 0 ]] && command -v "$1" >/dev/null 2>&1 && [[ "$1" != "bigtrain" ]]; then
  exec "$@"
fi
[[ "${1:-}" == "bigtrain" ]] && shift
exec bigtrain "$@"
