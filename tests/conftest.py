"""Helpers shared by the test modules (import them from here)."""

import keras
import numpy as np

LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
"""The classification loss most tests train with (integer labels)."""


def to_numpy(x) -> np.ndarray:
    """A backend tensor (or anything array-like) as a NumPy array."""
    return np.asarray(keras.ops.convert_to_numpy(x))
