#!/usr/bin/env bash
# Run every example script (with --quick, CI sizes) and execute every
# notebook (nbmake), on one Keras backend, each in its own process, then
# print a table of times. Fails if any of them fails; all run regardless.
#
# Usage: bash scripts/examples.sh
#   KERAS_BACKEND=torch bash scripts/examples.sh   # another backend
#
# Environment:
#   KERAS_BACKEND   the backend (default: tensorflow, the fastest here:
#                   measured on a 2-core CPU, all of this took 116 s on
#                   tensorflow, 153 s on jax, and over twice as long on
#                   torch, whose steps suffer most from shared cores; at
#                   CI sizes compiling dominates). The notebooks keep it:
#                   their first cell only sets a default.
#
# The distributed recipes in examples/distributed/ are not run here:
# tests/test_distributed.py runs them on every backend in scripts/test.sh.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=scripts/setup.sh
source "$repo/scripts/setup.sh"
cd "$repo"

export KERAS_BACKEND="${KERAS_BACKEND:-tensorflow}"
# Less TensorFlow start-up noise (scripts/quiet_tf.sh): `quietly CMD`.
# shellcheck source=scripts/quiet_tf.sh
source "$repo/scripts/quiet_tf.sh"

# Every script but example_cli.py, the options the scripts share.
scripts=()
for script in examples/*.py; do
    [[ "$script" == examples/example_cli.py ]] || scripts+=("$script")
done
notebooks=(notebooks/*.ipynb)

failed=()
summary=()
# Runs "$@" as the job named $1's file; records its status and time.
run_job() {
    local name="$1"
    shift
    echo
    echo "======================================================================"
    echo "== $name (KERAS_BACKEND=$KERAS_BACKEND)"
    echo "======================================================================"
    local start=$SECONDS rc=0
    quietly "$@" || rc=$?
    local status="ok"
    if [[ "$rc" != 0 ]]; then
        status="FAILED (exit $rc)"
        failed+=("$name")
    fi
    summary+=("$(printf '  %-46s %-16s %4ds' "$name" "$status" \
        "$((SECONDS - start))")")
}

total_start=$SECONDS
for script in "${scripts[@]}"; do
    run_job "$script" python "$script" --quick
done
for notebook in "${notebooks[@]}"; do
    run_job "$notebook" python -m pytest -q -p no:cacheprovider \
        --nbmake --nbmake-timeout=600 "$notebook"
done

echo
echo "======================================================================"
echo "== examples and notebooks on $KERAS_BACKEND"
printf '%s\n' "${summary[@]}"
echo "  total: $((SECONDS - total_start))s"
echo "======================================================================"

if ((${#failed[@]})); then
    echo "FAILED: ${failed[*]}" >&2
    exit 1
fi
echo "all ${#scripts[@]} examples and ${#notebooks[@]} notebooks passed"
