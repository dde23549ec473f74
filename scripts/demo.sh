#!/usr/bin/env bash
# Set up .venv if needed, then run the main job: the quick DREG study.
#
# Usage: bash scripts/demo.sh [keras-dreg study run args...]
#   KERAS_BACKEND=jax bash scripts/demo.sh      # pick a backend
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=scripts/setup.sh
source "$repo/scripts/setup.sh"

# Less TensorFlow start-up noise (scripts/quiet_tf.sh): `quietly CMD`.
# shellcheck source=scripts/quiet_tf.sh
source "$repo/scripts/quiet_tf.sh"

# The main job: the study's `quick` preset on offline data, then its
# report. Extra arguments go to `keras-dreg study run`; rerunning resumes
# and skips finished runs. The backend is Keras's: KERAS_BACKEND, else
# ~/.keras/keras.json, else tensorflow.
# Measured: 1422 s (24 min: 288 runs 1383 s, report 39 s), tensorflow, 2 workers,
# on 2 CPU cores shared with other jobs (load average 10 at the end; earlier runs:
# 14-30 min); budget 15-30 minutes. A rerun resumes.
out="${KERAS_DREG_OUT:-$repo/study_quick}"
mkdir -p "$out"
quietly python -m keras_dreg.cli study run --preset quick \
    --db "$out/results.sqlite" "$@"
quietly python -m keras_dreg.cli study report --db "$out/results.sqlite" \
    --out "$out"
echo
echo "Report: $out/report.md"
# The headline table: mean accuracy per regularizer and regime.
awk '/^\| regularizer/{show=1} show&&!/^\|/{exit} show' "$out/report.md"
