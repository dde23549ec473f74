"""Data-parallel training matches single-device training to 1e-5.

Each backend runs its recipe from `examples/distributed/` in a fresh
process (device flags must be set before the backend starts): JAX with
two virtual CPU devices (`DataParallel` and a `ModelParallel` layout),
TensorFlow with `MirroredStrategy` over two logical CPUs, PyTorch with
`DistributedDataParallel` over two gloo processes. The recipe compares
losses, penalties and weights after a few steps (and, under torch, each
step's gradients), for DREG and each penalty-based comparison
regularizer, and exits non-zero above 1e-5. A stuck run fails: the torch
recipe's workers dump their stacks and exit after `--timeout` seconds per
regularizer (as do its gloo collectives), and the test kills the recipe
after `TIMEOUT` seconds and shows its output.
"""

import json
import os
import subprocess
import sys

import keras
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECIPES = {
    "jax": "jax_data_parallel.py",
    "tensorflow": "tensorflow_mirrored.py",
    "torch": "torch_ddp.py",
}
REGULARIZERS = {"dreg", "weight_decay", "igpen", "jacobian"}
# Seconds per regularizer for the torch workers, then for the whole recipe.
WORKER_TIMEOUT = 120
TIMEOUT = 900


def test_data_parallel_matches_single_device():
    backend = keras.backend.backend()
    env = {
        **os.environ,
        "KERAS_BACKEND": backend,
        "PYTHONPATH": REPO,
        "XLA_FLAGS": "--xla_force_host_platform_device_count=2",
    }
    script = os.path.join(REPO, "examples", "distributed", RECIPES[backend])
    command = [
        sys.executable,
        script,
        "--check",
        "--regularizers",
        ",".join(sorted(REGULARIZERS)),
    ]
    if backend == "torch":
        command += ["--timeout", str(WORKER_TIMEOUT)]
    try:
        result = subprocess.run(
            command, env=env, capture_output=True, text=True, timeout=TIMEOUT
        )
    except subprocess.TimeoutExpired as error:
        pytest.fail(f"{error}\n{_text(error.stdout)}{_text(error.stderr)}")
    assert result.returncode == 0, result.stdout + result.stderr
    reports = [
        json.loads(line)
        for line in result.stdout.splitlines()
        if line.startswith("{")
    ]
    regularizers = {r["regularizer"].split("/")[0] for r in reports}
    assert regularizers == REGULARIZERS
    assert all(r["ok"] for r in reports)


def _text(output) -> str:
    """What a timed-out process wrote (bytes, text or nothing)."""
    if isinstance(output, bytes):
        return output.decode(errors="replace")
    return output or ""
