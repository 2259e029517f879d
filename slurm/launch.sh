#!/bin/bash
# Shared body of the sbatch scripts (runs in the batch shell on the first node). Not submitted
# itself: train.sbatch and train_multinode.sbatch call it with the Hydra overrides as arguments.
#
# What it does, and why:
# - One SLURM task per node runs torchrun, which starts one training process per GPU. The
#   rendezvous comes from SLURM: the head node is the first of `scontrol show hostnames`, the node
#   rank is SLURM_NODEID, the port is derived from the job id (every node computes the same one).
# - The run folder is derived from the job id (ARRAYJOB_TASK for array jobs), so every rank and
#   every requeue of the job agree on it; a requeued job resumes from its latest checkpoint and
#   continues the same MLflow run (resume=auto).
# - The pre-timeout signal (#SBATCH --signal=B:USR2@<s>) reaches this shell only; the trap forwards
#   it to every process of the job step on every node. torchrun itself ignores it (it would
#   otherwise die of it); the training processes set a flag, save together at the next step
#   boundary, and rank 0 runs `scontrol requeue`. scancel's SIGTERM reaches every process: they
#   save and exit without requeue.
set -uo pipefail

NPROC_PER_NODE=${BIGTRAIN_NPROC_PER_NODE:-${SLURM_GPUS_ON_NODE:-1}}
if [[ -n "${SLURM_ARRAY_JOB_ID:-}" ]]; then
  JOB_KEY="${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID}"
else
  JOB_KEY="${SLURM_JOB_ID}"
fi
RUN_DIR=${BIGTRAIN_RUN_DIR:-${BIGTRAIN_RUNS:-runs}/${SLURM_JOB_NAME}-${JOB_KEY}}
PYTHON=${BIGTRAIN_PYTHON:-python}
HEAD_NODE=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
PORT=${BIGTRAIN_MASTER_PORT:-$((20000 + ${SLURM_JOB_ID} % 20000))}

echo "bigtrain: job ${JOB_KEY} (restart ${SLURM_RESTART_COUNT:-0}) on ${SLURM_JOB_NUM_NODES:-1} node(s) x ${NPROC_PER_NODE} processes; run dir ${RUN_DIR}; head ${HEAD_NODE}:${PORT}"

forward_usr2() {
  echo "bigtrain: USR2 received, forwarding to the training processes"
  scancel --signal=USR2 "${SLURM_JOB_ID}"
}
trap forward_usr2 USR2

# EDIT for containers (pyxis/enroot): add e.g. --container-image=... --container-mounts=... to srun.
srun --kill-on-bad-exit=1 --ntasks-per-node=1 \
  bash -c 'trap "" USR2; exec "$0" -m torch.distributed.run --nnodes="$SLURM_JOB_NUM_NODES" --node_rank="$SLURM_NODEID" \
    --nproc_per_node="$1" --master_addr="$2" --master_port="$3" -m bigtrain train run.dir="$4" "${@:5}"' \
  "$PYTHON" "$NPROC_PER_NODE" "$HEAD_NODE" "$PORT" "$RUN_DIR" "$@" &
child=$!
# `wait` returns early when a trapped signal arrives: keep waiting until srun itself has ended.
while true; do
  wait "$child"
  rc=$?
  kill -0 "$child" 2>/dev/null || break
done
echo "bigtrain: training step ended with exit code ${rc}"
exit "$rc"
