#!/usr/bin/env bash
# Set up .venv if needed, then run the main job: the quick DREG study.
#
# Usage: bash scripts/demo.sh [keras-dreg study run args...]
#   KERAS_BACKEND=jax bash scripts/demo.sh      # pick a backend
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=scripts/setup.sh
source "$repo/scripts/setup.sh"

# Less TensorFlow start-up noise, as in the tests, unless the caller asked
# for it (Keras imports TensorFlow, when installed, on every backend).
export TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-2}"
# TensorFlow 2.21 prints its oneDNN notice (two lines, once per process)
# before that level applies, and on the TensorFlow backend each worker
# warns about tf.function retracing as it predicts with its n-th new model
# (expected: every run builds its own model). Only those lines are dropped
# from stderr; everything else passes through, and the exit status is
# the command's.
noise='^WARNING: All log messages before absl::InitializeLog\(\) is called'
noise+='|^I[0-9]{4} [0-9:.]+ +[0-9]+ port\.cc:[0-9]+\] oneDNN custom operations'
noise+='|^WARNING:tensorflow:.* triggered tf\.function retracing'
drop_noise() { grep --line-buffered -v -E "$noise" || [[ $? == 1 ]]; }
quietly() { { "$@" 2>&1 1>&3 3>&- | drop_noise >&2 3>&-; } 3>&1; }

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
