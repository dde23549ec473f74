#!/usr/bin/env bash
# Run the test suite once per Keras backend, each in its own process
# (KERAS_BACKEND must be set before the first `import keras`).
#
# Usage: bash scripts/test.sh [extra pytest args...]
#   e.g. bash scripts/test.sh -k penalty -x
#        bash scripts/test.sh tests/test_penalty.py
#
# Environment:
#   KERAS_DREG_BACKENDS       backends to run (default: "tensorflow jax torch")
#   KERAS_DREG_TEST_WORKERS   pytest-xdist workers per backend; 0 disables
#                             xdist. Default: 2 when CI=true, else 0. An
#                             explicit -n in the arguments overrides it.
#                             (Measured on 2 cores: -n 2 saved ~15% on an
#                             idle machine but was ~60% slower while other
#                             jobs shared the cores, hence serial locally.)
#   KERAS_DREG_TEST_SUMMARY   if set, a file to write the final
#                             "total: N passed, N failed, N skipped" line to.
#
# All backends run even when one fails; the exit status is non-zero if any
# backend failed, and also if a backend collected no tests (pytest exit 5):
# "no tests ran" is never reported as success.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=scripts/setup.sh
source "$repo/scripts/setup.sh"
cd "$repo"

read -r -a backends <<< "${KERAS_DREG_BACKENDS:-tensorflow jax torch}"
if [[ "${CI:-}" == "true" ]]; then
    workers="${KERAS_DREG_TEST_WORKERS:-2}"
else
    workers="${KERAS_DREG_TEST_WORKERS:-0}"
fi
xdist_args=()
if [[ "$workers" != "0" ]]; then
    xdist_args=(-n "$workers")
fi

# Less TensorFlow start-up noise (scripts/quiet_tf.sh): `quietly CMD`.
# shellcheck source=scripts/quiet_tf.sh
source "$repo/scripts/quiet_tf.sh"

results_dir="$(mktemp -d)"
trap 'rm -rf "$results_dir"' EXIT

failed=()
summary=()
for backend in "${backends[@]}"; do
    echo
    echo "======================================================================"
    echo "== KERAS_BACKEND=$backend"
    echo "======================================================================"
    start=$SECONDS
    rc=0
    # No explicit path: pytest then uses testpaths=["tests"] from
    # pyproject.toml, and a path given in "$@" selects just that path.
    KERAS_BACKEND="$backend" quietly python -m pytest -q -p no:cacheprovider \
        "${xdist_args[@]}" --junitxml="$results_dir/$backend.xml" "$@" \
        || rc=$?
    took=$((SECONDS - start))
    case "$rc" in
        0) status="ok" ;;
        5) status="FAILED (no tests collected, pytest exit 5)" ;;
        *) status="FAILED (pytest exit $rc)" ;;
    esac
    [[ "$rc" == 0 ]] || failed+=("$backend")
    summary+=("$(printf '  %-10s %-45s %4ds' "$backend" "$status" "$took")")
done

echo
echo "======================================================================"
echo "== test summary per backend"
printf '%s\n' "${summary[@]}"
# Totals over all backends, from the JUnit XML files pytest wrote.
total_line="$(python - "$results_dir" "${backends[@]}" <<'PY'
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

results_dir = Path(sys.argv[1])
totals = dict(tests=0, failures=0, errors=0, skipped=0)
for backend in sys.argv[2:]:
    path = results_dir / f"{backend}.xml"
    if not path.exists():
        continue
    root = ET.parse(path).getroot()
    suites = [root] if root.tag == "testsuite" else root.iter("testsuite")
    for suite in suites:
        for key in totals:
            totals[key] += int(suite.get(key, 0))
failed = totals["failures"] + totals["errors"]
passed = totals["tests"] - failed - totals["skipped"]
print(f"total: {passed} passed, {failed} failed, {totals['skipped']} skipped")
PY
)"
echo "$total_line"
if [[ -n "${KERAS_DREG_TEST_SUMMARY:-}" ]]; then
    echo "$total_line" > "$KERAS_DREG_TEST_SUMMARY"
fi
echo "======================================================================"

if ((${#failed[@]})); then
    echo "FAILED backends: ${failed[*]}" >&2
    exit 1
fi
echo "all backends passed: ${backends[*]}"
