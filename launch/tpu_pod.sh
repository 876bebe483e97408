#!/usr/bin/env bash
# Runs envtune on every worker of a Cloud TPU VM slice at once (multi-controller JAX: the same
# program on each host; jax.distributed.initialize() finds the slice through the metadata server).
set -euo pipefail

TPU_NAME="${TPU_NAME:-}"                 # the TPU VM (slice) name, required
ZONE="${ZONE:-}"                         # its zone, required, e.g. us-east5-a (v5p), us-east1-d (v6e)
PROJECT="${PROJECT:-}"                   # gcloud project; empty: gcloud's default
REPO_URL="${REPO_URL:-}"                 # git URL cloned on each worker; empty: ship this checkout
REPO_REF="${REPO_REF:-HEAD}"             # branch / tag / commit to run (committed files only)
REMOTE_DIR="${REMOTE_DIR:-envtune-jax}"  # repository on each worker, relative to the login home
BACKGROUND="${BACKGROUND:-0}"            # 1: `run` starts detached (nohup), logging to REMOTE_DIR/logs/
EXTRA_ENV="${EXTRA_ENV:-}"               # extra "NAME=value ..." exported on every worker before `run`

usage() {
  cat <<EOF
usage: TPU_NAME=NAME ZONE=ZONE launch/tpu_pod.sh COMMAND [ARGS...]

commands:
  setup         put the code on every worker (git clone REPO_URL, or this checkout's REPO_REF
                via git archive) and install it there: launch/setup_env.sh tpu
  run ARGS...   run 'envtune ARGS...' on every worker at once, with ENVTUNE_DISTRIBUTED=1
  exec 'CMD'    run a shell command on every worker, inside the repository

Checkpoints, HF directories and run directories must be on storage every worker sees at the
same path (e.g. a Filestore / NFS or gcsfuse mount), or, for single-host slices, the local disk.

examples:
  TPU_NAME=et-v5p ZONE=us-east5-a launch/tpu_pod.sh setup
  TPU_NAME=et-v5p ZONE=us-east5-a launch/tpu_pod.sh run convert --hf /mnt/hf/Qwen3-4B-Instruct-2507 \\
      --out /mnt/ckpt/qwen3-4b --dtype bfloat16
  TPU_NAME=et-v5p ZONE=us-east5-a BACKGROUND=1 launch/tpu_pod.sh run train \\
      --config configs/recipes/qwen3_4b_instruct_2507.yaml model.ckpt=/mnt/ckpt/qwen3-4b
  TPU_NAME=et-v5p ZONE=us-east5-a launch/tpu_pod.sh exec 'tail -n 5 logs/envtune.log'

variables: TPU_NAME ZONE PROJECT REPO_URL REPO_REF REMOTE_DIR BACKGROUND EXTRA_ENV (see the top of this file)
EOF
}

die() {
  echo "tpu_pod.sh: $*" >&2
  exit 2
}

on_all_workers() {  # on_all_workers 'shell command'
  local flags=(--zone "$ZONE" --worker=all)
  if [[ -n "$PROJECT" ]]; then
    flags+=(--project "$PROJECT")
  fi
  gcloud compute tpus tpu-vm ssh "$TPU_NAME" "${flags[@]}" --command "$1"
}

copy_to_all_workers() {  # copy_to_all_workers LOCAL_FILE REMOTE_NAME
  local flags=(--zone "$ZONE" --worker=all)
  if [[ -n "$PROJECT" ]]; then
    flags+=(--project "$PROJECT")
  fi
  gcloud compute tpus tpu-vm scp "$1" "$TPU_NAME:$2" "${flags[@]}"
}

setup() {
  local dir fetch
  printf -v dir '%q' "$REMOTE_DIR"
  if [[ -n "$REPO_URL" ]]; then
    printf -v fetch '(test -d %s/.git || git clone --quiet %q %s) && git -C %s fetch --quiet origin %q && git -C %s checkout --quiet --detach FETCH_HEAD' \
      "$dir" "$REPO_URL" "$dir" "$dir" "$REPO_REF" "$dir"
  else
    local repo_root staging
    repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
    staging="$(mktemp -d)"
    trap 'rm -rf "$staging"' EXIT
    git -C "$repo_root" archive --format=tar.gz -o "$staging/envtune-jax.tar.gz" "$REPO_REF"
    copy_to_all_workers "$staging/envtune-jax.tar.gz" envtune-jax.tar.gz
    printf -v fetch 'mkdir -p %s && tar -xzf envtune-jax.tar.gz -C %s && rm envtune-jax.tar.gz' "$dir" "$dir"
  fi
  on_all_workers "set -e; ${fetch}; cd ${dir} && bash launch/setup_env.sh tpu"
}

run_envtune() {
  local dir args command
  printf -v dir '%q' "$REMOTE_DIR"
  printf -v args ' %q' "$@"
  command="export ENVTUNE_DISTRIBUTED=1 ${EXTRA_ENV} && exec .venv/bin/envtune${args}"
  if [[ "$BACKGROUND" == 1 ]]; then
    printf -v command 'mkdir -p logs && nohup bash -c %q > logs/envtune.log 2>&1 < /dev/null &' "$command"
  fi
  on_all_workers "cd ${dir} && ${command}"
}

case "${1:-}" in
  -h | --help) usage; exit 0 ;;
  setup | run | exec) ;;
  *) usage >&2; exit 2 ;;
esac
[[ -n "$TPU_NAME" ]] || die "set TPU_NAME (the TPU VM name); see --help"
[[ -n "$ZONE" ]] || die "set ZONE (the TPU's zone); see --help"
command -v gcloud > /dev/null || die "gcloud is not installed (https://cloud.google.com/sdk)"

case "$1" in
  setup) setup ;;
  run)
    shift
    [[ $# -gt 0 ]] || die "run needs an envtune command, e.g. run train --config FILE"
    run_envtune "$@"
    ;;
  exec)
    [[ $# -eq 2 ]] || die "exec takes one quoted shell command"
    printf -v dir_q '%q' "$REMOTE_DIR"
    on_all_workers "cd ${dir_q} && $2"
    ;;
esac
