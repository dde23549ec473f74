#!/usr/bin/env bash
# Continue the `paper` study (docs/study/paper/) where it stopped, then
# regenerate its report.
#
# Usage: bash scripts/paper_study.sh [keras-dreg study run args...]
#   bash scripts/paper_study.sh --max-hours 2     # one slice of 2 hours
#
# The runs are trained by the code of PAPER_COMMIT, checked out in a git
# worktree beside this checkout: a run's key includes a hash of the
# training code (keras_dreg.study.provenance), so resuming at another
# commit would run the whole grid again, and one study must be one code.
# The report is written by this checkout's analysis code (which is left
# out of that hash). On JAX, two workers, as the published slices.
set -euo pipefail

PAPER_COMMIT=d3d27b510a4c94292726d61456f414aeda672bcd

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=scripts/setup.sh
source "$repo/scripts/setup.sh"
# shellcheck source=scripts/quiet_tf.sh
source "$repo/scripts/quiet_tf.sh"

code="${KERAS_DREG_PAPER_CODE:-$repo/../keras-dreg-paper-$PAPER_COMMIT}"
if [[ ! -d "$code" ]]; then
    git -C "$repo" worktree add --detach "$code" "$PAPER_COMMIT"
fi
if [[ "$(git -C "$code" rev-parse HEAD)" != "$PAPER_COMMIT" ]]; then
    echo "$code is not at $PAPER_COMMIT; remove it or set KERAS_DREG_PAPER_CODE." >&2
    exit 2
fi
out="${KERAS_DREG_PAPER_OUT:-$repo/docs/study/paper}"
mkdir -p "$out"
(
    cd "$code"
    KERAS_BACKEND=jax PYTHONPATH="$code" quietly python -m keras_dreg.cli \
        study run --preset paper --backend jax --workers 2 \
        --db "$out/results.sqlite" "$@"
)
quietly python -m keras_dreg.cli study report --db "$out/results.sqlite" \
    --out "$out"
