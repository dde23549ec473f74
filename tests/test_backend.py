"""`keras_dreg.backend.fast_path`: which backend has which fast path,
and `fast_paths(False)` turns them off (their agreement with the
`keras.ops` definitions: `tests/test_fast_paths.py`, on PyTorch)."""

import keras

from keras_dreg import backend
from keras_dreg import capture
from keras_dreg import derivatives
from keras_dreg import penalty

TORCH = keras.backend.backend() == "torch"

FAST_JOINTS = (
    [derivatives.describe_activation("gelu").value_and_derivatives]
    if TORCH
    else []
)
"""The joint evaluations with a fast path: PyTorch's exact GELU (torch's
fused kernels); TensorFlow and JAX have none."""

OTHER_JOINTS = [
    derivatives.describe_activation(name).value_and_derivatives
    for name in ("tanh", "sigmoid", "silu")
] + [derivatives.describe_activation(keras.ops.gelu).value_and_derivatives]
"""Joint evaluations without a fast path on any backend (the tanh GELU
has no fused torch kernel)."""


def test_fast_paths_are_found_and_can_be_turned_off():
    for joint in FAST_JOINTS:
        assert backend.fast_path(joint) is not None
    assert all(backend.fast_path(joint) is None for joint in OTHER_JOINTS)
    for reference in (
        penalty.mean_squared_slope,
        capture.activation_with_derivatives,
    ):
        assert (backend.fast_path(reference) is not None) == TORCH
    with backend.fast_paths(False):
        assert all(backend.fast_path(j) is None for j in FAST_JOINTS)
        assert backend.fast_path(capture.activation_with_derivatives) is None
    assert backend.fast_path(len) is None
