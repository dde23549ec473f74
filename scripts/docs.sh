#!/usr/bin/env bash
# Build the docs site strictly (any warning, e.g. a broken link or a
# docstring mkdocstrings cannot parse, fails the build).
#
# Usage: bash scripts/docs.sh [mkdocs build args...]
#   bash scripts/docs.sh --site-dir /tmp/site
#   .venv/bin/mkdocs serve            # live preview while writing
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=scripts/setup.sh
source "$repo/scripts/setup.sh"
cd "$repo"

# Importing keras_dreg imports keras, which needs a backend; the API pages
# only read docstrings, so the lightest backend is enough.
export KERAS_BACKEND="${KERAS_BACKEND:-jax}"
mkdocs build --strict "$@"
