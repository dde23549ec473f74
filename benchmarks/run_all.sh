#!/usr/bin/env bash
# Runs benchmarks/step_time.py on TensorFlow, JAX and PyTorch, each in its
# own process (the backend is fixed at the first `import keras`).
# Arguments are passed on: benchmarks/run_all.sh --steps 50
# THREADS=1 limits each backend to one compute thread:
#   THREADS=1 benchmarks/run_all.sh --clock cpu
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ -n "${THREADS:-}" ]]; then
    export OMP_NUM_THREADS="$THREADS" MKL_NUM_THREADS="$THREADS"
    export TF_NUM_INTRAOP_THREADS="$THREADS" TF_NUM_INTEROP_THREADS=1
    export XLA_FLAGS="--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=$THREADS"
fi
for backend in tensorflow jax torch; do
    KERAS_BACKEND="$backend" PYTHONPATH=".${PYTHONPATH:+:$PYTHONPATH}" \
        python benchmarks/step_time.py "$@"
done
