#!/usr/bin/env bash
# Creates a virtual environment in the repository and installs envtune-jax for one accelerator.
# Run on every machine that will run envtune (tpu_pod.sh does this on each TPU worker).
set -euo pipefail

PYTHON="${PYTHON:-python3}"                    # interpreter for the venv; 3.11+ (else uv fetches 3.12)
VENV="${VENV:-.venv}"                          # relative to the repository root
EXTRAS="${EXTRAS:-}"                           # package extras, e.g. "test" for the test dependencies
JAX_RANGE=">=0.10.0,<0.13"                     # keep in step with pyproject.toml
BFCL_PINS=("bfcl-eval==2026.3.23" "mpmath==1.3.0")  # installed --no-deps, as in the Makefile

usage() {
  cat <<EOF
usage: launch/setup_env.sh ACCELERATOR

ACCELERATOR is one of: tpu, cuda12, cuda13, cpu (the jax extra to install).
Creates \$VENV (default .venv) in the repository root if missing, then installs the package
(editable), jax[ACCELERATOR] ${JAX_RANGE}, and ${BFCL_PINS[*]} with --no-deps.

variables: PYTHON=${PYTHON} VENV=${VENV} EXTRAS=${EXTRAS:-<none>}
example:   PYTHON=python3.12 launch/setup_env.sh cuda12
EOF
}

case "${1:-}" in
  -h | --help) usage; exit 0 ;;
  tpu | cuda12 | cuda13 | cpu) accelerator="$1" ;;
  *) usage >&2; exit 2 ;;
esac

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo_root"

if [[ ! -x "$VENV/bin/python" ]]; then
  if "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
    "$PYTHON" -m venv "$VENV"
  else
    # TPU VM images ship Python 3.10; jax 0.10 needs 3.11+. uv downloads a managed interpreter.
    echo "$PYTHON is older than 3.11: creating the venv with uv and Python 3.12" >&2
    "$PYTHON" -m pip install --user --quiet uv
    "$PYTHON" -m uv venv --seed --python 3.12 "$VENV"
  fi
fi

pip=("$VENV/bin/python" -m pip)
"${pip[@]}" install --quiet --upgrade pip
package="."
if [[ -n "$EXTRAS" ]]; then
  package=".[${EXTRAS}]"
fi
"${pip[@]}" install --quiet -e "$package" "jax[${accelerator}]${JAX_RANGE}"
"${pip[@]}" install --quiet --no-deps "${BFCL_PINS[@]}"
# Only imports: touching the devices here would block on a multi-host TPU slice.
"$VENV/bin/python" -c 'import jax, envtune_jax; print("envtune-jax ready, jax", jax.__version__)'
