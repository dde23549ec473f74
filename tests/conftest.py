"""Helpers shared by the test modules (import them from here)."""

import keras
import numpy as np

LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
"""The classification loss most tests train with (integer labels)."""

TINY_GRID_ARGS = [
    "--activations",
    "gelu",
    "--regularizers",
    "none,dreg",
    "--datasets",
    "breast_cancer",
    "--train-fractions",
    "0.25",
    "--seeds",
    "1",
]
"""`keras-dreg study run` arguments of a two-run grid (the CLI tests)."""


def to_numpy(x) -> np.ndarray:
    """A backend tensor (or anything array-like) as a NumPy array."""
    return np.asarray(keras.ops.convert_to_numpy(x))


def fake_result(config, accuracy=0.5, wall_time=0.0, **versions):
    """The `RunResult` of `config` without training (for the stand-ins of
    `keras_dreg.study.runner.train_run`): `accuracy`, half of it under
    noise, no penalty value, all epochs run; `versions` as given."""
    from keras_dreg.study.store import RunResult

    return RunResult(
        config=config,
        messy=False,
        accuracy=accuracy,
        noisy_accuracy=accuracy / 2,
        penalty=None,
        epochs_run=config.epochs,
        wall_time=wall_time,
        versions=versions,
    )
