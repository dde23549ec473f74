#!/usr/bin/env bash
# Set up .venv if needed, then run the main job: the quick DREG study.
#
# Usage: bash scripts/demo.sh [keras-dreg study run args...]
#   KERAS_BACKEND=jax bash scripts/demo.sh      # pick a backend
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=scripts/setup.sh
source "$repo/scripts/setup.sh"

# The main job: the study's `quick` preset on offline data (about 10
# minutes on a 2-core CPU; rerunning resumes and skips finished runs),
# then its report. Extra arguments go to `keras-dreg study run`.
out="${KERAS_DREG_OUT:-$repo/study_quick}"
mkdir -p "$out"
python -m keras_dreg.cli study run --preset quick --db "$out/results.sqlite" "$@"
python -m keras_dreg.cli study report --db "$out/results.sqlite" --out "$out"
echo
echo "Report: $out/report.md"
# The headline table: mean accuracy per regularizer and regime.
awk '/^\| regularizer/{show=1} show&&!/^\|/{exit} show' "$out/report.md"
