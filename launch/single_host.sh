#!/usr/bin/env bash
# One machine (a single-host TPU VM such as v5p-8 or v6e-8, a GPU server, or a CPU box): installs
# the environment on first use, then runs one envtune command with all local devices.
set -euo pipefail

ACCELERATOR="${ACCELERATOR:-auto}"   # tpu | cuda12 | cuda13 | cpu | auto (nvidia-smi → cuda12, /dev/accel* or /dev/vfio → tpu)
VENV="${VENV:-.venv}"                # relative to the repository root
MEM_FRACTION="${MEM_FRACTION:-0.90}" # GPU only: share of memory JAX preallocates

usage() {
  cat <<EOF
usage: launch/single_host.sh ENVTUNE_ARGS...

Runs 'envtune ENVTUNE_ARGS...' from the repository root on this machine, creating \$VENV with
launch/setup_env.sh first if it does not exist.

variables: ACCELERATOR=${ACCELERATOR} VENV=${VENV} MEM_FRACTION=${MEM_FRACTION}
examples:
  launch/single_host.sh convert --hf ~/hf/Qwen3-4B-Instruct-2507 --out ckpt/qwen3-4b --dtype bfloat16
  launch/single_host.sh train --config configs/recipes/qwen3_4b_instruct_2507.yaml model.ckpt=ckpt/qwen3-4b
EOF
}

detect_accelerator() {
  if command -v nvidia-smi > /dev/null && nvidia-smi -L > /dev/null 2>&1; then
    echo cuda12
  elif compgen -G "/dev/accel*" > /dev/null || [[ -d /dev/vfio ]]; then
    echo tpu
  else
    echo cpu
  fi
}

case "${1:-}" in
  -h | --help) usage; exit 0 ;;
  "") usage >&2; exit 2 ;;
esac

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo_root"
if [[ "$ACCELERATOR" == auto ]]; then
  ACCELERATOR="$(detect_accelerator)"
fi
if [[ ! -x "$VENV/bin/envtune" ]]; then
  VENV="$VENV" bash launch/setup_env.sh "$ACCELERATOR"
fi
if [[ "$ACCELERATOR" == cuda* ]]; then
  export XLA_PYTHON_CLIENT_MEM_FRACTION="$MEM_FRACTION"
fi
export TOKENIZERS_PARALLELISM=false
exec "$VENV/bin/envtune" "$@"
