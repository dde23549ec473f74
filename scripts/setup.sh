#!/usr/bin/env bash
# Create (if missing) the project virtualenv at .venv and install the pinned
# dev requirements plus keras-dreg itself (editable, --no-deps).
#
# Idempotent: a stamp in .venv records what was installed; when
# requirements-dev.txt, pyproject.toml and the repo path are unchanged the
# pip steps are skipped, so re-running takes well under a second.
#
# Usable both as `bash scripts/setup.sh` and `source scripts/setup.sh`; when
# sourced, it leaves .venv/bin first on PATH (VIRTUAL_ENV set).
#
# Environment:
#   PYTHON            interpreter used to create the venv (default: python3)
#   KERAS_DREG_VENV   venv location (default: <repo>/.venv)
#   KERAS_DREG_FORCE_SETUP=1   re-run the pip steps even if the stamp matches

_kd_setup() {
    set -euo pipefail
    local repo venv py stamp want
    repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
    venv="${KERAS_DREG_VENV:-$repo/.venv}"
    py="${PYTHON:-python3}"

    if [[ ! -x "$venv/bin/python" ]]; then
        echo "[setup] creating virtualenv at $venv (with $("$py" --version))"
        "$py" -m venv "$venv"
    fi

    stamp="$venv/.keras-dreg-setup.stamp"
    want="$(
        {
            echo "repo=$repo"
            "$venv/bin/python" --version
            cat "$repo/requirements-dev.txt" "$repo/requirements-hub.txt" \
                "$repo/pyproject.toml"
        } | sha256sum | cut -d' ' -f1
    )"

    if [[ "${KERAS_DREG_FORCE_SETUP:-0}" != "1" && -f "$stamp" \
        && "$(cat "$stamp")" == "$want" ]]; then
        echo "[setup] $venv is up to date (delete $stamp to force a reinstall)"
    else
        rm -f "$stamp"
        # Quiet pip unless in CI, where the full log helps diagnose failures.
        local q=(-q)
        [[ "${CI:-}" == "true" ]] && q=()
        echo "[setup] installing requirements-dev.txt into $venv"
        "$venv/bin/python" -m pip install "${q[@]}" --upgrade pip
        # One resolve with the exact torch pin (listed first in the file), so
        # nothing can pull a CUDA build of torch.
        "$venv/bin/python" -m pip install "${q[@]}" -r "$repo/requirements-dev.txt"
        # KerasHub without its tensorflow-text (see requirements-hub.txt);
        # it needs Python >= 3.11, and its tests skip without it.
        if "$venv/bin/python" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
            echo "[setup] installing requirements-hub.txt (--no-deps)"
            "$venv/bin/python" -m pip install "${q[@]}" --no-deps \
                -r "$repo/requirements-hub.txt"
        else
            echo "[setup] Python < 3.11: no keras-hub, its tests will skip"
        fi
        echo "[setup] installing keras-dreg (editable, --no-deps)"
        "$venv/bin/python" -m pip install "${q[@]}" --no-deps -e "$repo"
        # Catch a dependency that slipped in a CUDA torch or broke pins;
        # the one accepted gap is keras-hub's tensorflow-text.
        local problems
        problems="$("$venv/bin/python" -m pip check 2>&1 \
            | grep -v '^keras-hub .* requires tensorflow-text' || true)"
        if [[ -n "$problems" && "$problems" != "No broken requirements." ]]; then
            echo "$problems" >&2
            return 1
        fi
        "$venv/bin/python" - <<'PY'
import torch
assert not torch.version.cuda, f"CUDA torch installed: {torch.__version__}"
print(f"[setup] torch {torch.__version__} (CPU build) OK")
PY
        echo "$want" > "$stamp"
    fi
}

if [[ "${BASH_SOURCE[0]}" != "$0" ]]; then
    # Sourced: run in a subshell so `set -euo pipefail` does not leak into the
    # caller's shell, then put the venv on PATH in the caller.
    # Progress goes to stderr so that a caller's stdout (e.g. the demo's
    # output) stays clean.
    ( _kd_setup ) >&2 || return $?
    _kd_repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
    export VIRTUAL_ENV="${KERAS_DREG_VENV:-$_kd_repo/.venv}"
    export PATH="$VIRTUAL_ENV/bin:$PATH"
    unset _kd_repo
    unset -f _kd_setup
else
    _kd_setup
fi
