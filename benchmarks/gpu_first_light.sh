#!/usr/bin/env bash
# The first measurements on a GPU, in one command of a few minutes (docs/benchmarks-gpu.md has the plan):
#
#   OUT=DIR bash benchmarks/gpu_first_light.sh first [SECONDS]          # probe, parity, generate, ...
#   OUT=DIR bash benchmarks/gpu_first_light.sh rest [SECONDS] [FILE...]  # later: only what has no result yet
#
# SECONDS is the whole command's time (default 525 for `first`, 165 for `rest`); the suite gets what is
# left of it after the wheels are installed, less a margin to write the table. `rest` finds the earlier
# commands' results on this machine (the suite's state folder) or in the FILEs named (their results.jsonl,
# e.g. committed under benchmarks/results/). Results go to $OUT: results.jsonl, suite.log, RESULTS.md.
# Wheels in .whl/ (make gpu-bundle) are installed to /tmp/site first.
# Environment: PYTHON (default python3), WHEELS (default .whl), GPU_SUITE_ARGS (more suite options, e.g.
# "--tiny --state-dir DIR" for the CPU dry run of the test suite).
set -uo pipefail
part=${1:-first}
case "$part" in
  first) total=${2:-525}; extra=() ;;
  rest) total=${2:-165}; extra=(--resume "${@:3}") ;;
  *) echo "usage: $0 first|rest [SECONDS] [RESULTS.jsonl ...]" >&2; exit 2 ;;
esac
: "${OUT:?set OUT to the folder the results go to}"
cd "$(dirname "$0")/.." || exit 2
python=${PYTHON:-python3}
wheels=${WHEELS:-.whl}
if compgen -G "$wheels/*.whl" >/dev/null; then
  "$python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$wheels"/*.whl \
    || { echo "installing $wheels/ failed" >&2; exit 1; }
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
budget=$((total - SECONDS - 10))
if [ "$budget" -lt 30 ]; then
  echo "only ${budget}s left for the suite; nothing to do" >&2
  exit 1
fi
export PYTHONUNBUFFERED=1
# shellcheck disable=SC2086  # GPU_SUITE_ARGS is a list of options
exec "$python" benchmarks/gpu_suite.py --preset first-light --budget-s "$budget" --out "$OUT" ${GPU_SUITE_ARGS:-} \
  "${extra[@]}"
