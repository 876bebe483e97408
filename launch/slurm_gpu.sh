#!/usr/bin/env bash
#SBATCH --job-name=envtune
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=8
#SBATCH --gres=gpu:8
#SBATCH --cpus-per-task=12
#SBATCH --time=48:00:00
#SBATCH --output=envtune-%j.out
# Multi-node GPU run under SLURM: `sbatch launch/slurm_gpu.sh ENVTUNE_ARGS...`.
# srun starts the processes; inside a job step JAX reads SLURM_* and jax.distributed.initialize()
# (called by envtune_jax.mesh.initialize_distributed) connects them. Adjust the #SBATCH lines above
# (or override them on the sbatch command line) to your nodes: --ntasks-per-node must equal the GPUs
# per node when PROCESS_PER=gpu.
set -euo pipefail

REPO_DIR="${REPO_DIR:-${SLURM_SUBMIT_DIR:-$PWD}}"  # checkout visible on every node (shared filesystem)
VENV="${VENV:-$REPO_DIR/.venv}"                    # made by: launch/setup_env.sh cuda12
PROCESS_PER="${PROCESS_PER:-gpu}"                  # gpu: one process per GPU; node: one per node, all its GPUs
GPUS_PER_NODE="${GPUS_PER_NODE:-${SLURM_GPUS_ON_NODE:-8}}"
MEM_FRACTION="${MEM_FRACTION:-0.90}"               # share of each GPU's memory JAX preallocates

usage() {
  cat <<EOF
usage: sbatch [SBATCH OPTIONS] launch/slurm_gpu.sh ENVTUNE_ARGS...

Runs 'envtune ENVTUNE_ARGS...' on every allocated node with srun, as one JAX program.

  PROCESS_PER=gpu   (default) one process per GPU: --ntasks-per-node = GPUs per node and every task
                    sees all the node's GPUs (use --gres=gpu:N, not --gpus-per-task: JAX picks GPU
                    number SLURM_LOCALID among the visible ones).
  PROCESS_PER=node  one process per node driving all GPUS_PER_NODE GPUs (JAX_LOCAL_DEVICE_IDS).

variables: REPO_DIR VENV PROCESS_PER GPUS_PER_NODE MEM_FRACTION (see the top of this file)
examples:
  sbatch launch/slurm_gpu.sh train --config configs/recipes/qwen3_4b_instruct_2507.yaml model.ckpt=/shared/ckpt/qwen3-4b
  PROCESS_PER=node sbatch --nodes=4 --ntasks-per-node=1 launch/slurm_gpu.sh eval --split test --ckpt /shared/runs/x
EOF
}

case "${1:-}" in
  -h | --help) usage; exit 0 ;;
  "") usage >&2; exit 2 ;;
esac
[[ -n "${SLURM_JOB_ID:-}" ]] || { echo "slurm_gpu.sh: submit it with sbatch (no SLURM job here)" >&2; exit 2; }
[[ -x "$VENV/bin/envtune" ]] || { echo "slurm_gpu.sh: $VENV/bin/envtune missing; run launch/setup_env.sh cuda12" >&2; exit 2; }

export XLA_PYTHON_CLIENT_MEM_FRACTION="$MEM_FRACTION"
export TOKENIZERS_PARALLELISM=false
case "$PROCESS_PER" in
  gpu) tasks_per_node="$GPUS_PER_NODE" ;;
  node)
    tasks_per_node=1
    JAX_LOCAL_DEVICE_IDS="$(seq -s, 0 $((GPUS_PER_NODE - 1)))"
    export JAX_LOCAL_DEVICE_IDS
    ;;
  *) echo "slurm_gpu.sh: PROCESS_PER must be gpu or node, got '$PROCESS_PER'" >&2; exit 2 ;;
esac

cd "$REPO_DIR"
echo "envtune on ${SLURM_JOB_NUM_NODES:-?} nodes x ${tasks_per_node} processes: $*"
srun --kill-on-bad-exit=1 --ntasks-per-node="$tasks_per_node" --export=ALL "$VENV/bin/envtune" "$@"
