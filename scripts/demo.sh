#!/usr/bin/env bash
# Set up .venv if needed, then run the keras-dreg demo.
#
# Usage: bash scripts/demo.sh [demo args...]
#   KERAS_BACKEND=jax bash scripts/demo.sh      # pick a backend
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=scripts/setup.sh
source "$repo/scripts/setup.sh"

exec python -m keras_dreg.demo "$@"
