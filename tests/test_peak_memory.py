"""`benchmarks/peak_memory.py`: the peak memory of one training step.

On a small Dense model (two GELU layers of 64 units, batch 32), DREG's
step needs more memory than the plain step, both more than nothing,
where the backend measures on this machine (JAX, PyTorch, TensorFlow on
a GPU); where it cannot, `step_memory` returns `None` for the reason
`unmeasured_reason` gives. On PyTorch, the profiler's figure for one
Dense layer's forward and backward pass is checked against the tensors
counted by hand.
"""

import keras
import numpy as np
import pytest

import keras_dreg
from benchmarks import peak_memory
from keras_dreg import backend
from tests.conftest import LOSS

BACKEND = keras.backend.backend()
MEASURED = BACKEND in ("jax", "torch") or backend.gpu_available()
"""Whether `step_memory` measures here: TensorFlow only on a GPU."""


def small_model(regularizer: str, jit_compile="auto") -> keras.Model:
    """Two GELU layers of 64 units on 32 inputs, 10 classes, compiled."""
    inputs = keras.Input((32,))
    x = inputs
    for _ in range(2):
        x = keras.layers.Dense(64, activation="gelu")(x)
    model = keras.Model(inputs, keras.layers.Dense(10)(x))
    model = keras_dreg.regularize(model, regularizer)
    model.compile(optimizer="sgd", loss=LOSS, jit_compile=jit_compile)
    return model


def batch() -> tuple:
    """32 examples: inputs and integer labels, as backend tensors."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(32, 32)).astype("float32")
    y = rng.integers(0, 10, size=(32,))
    return keras.ops.convert_to_tensor(x), keras.ops.convert_to_tensor(y)


@pytest.mark.skipif(not MEASURED, reason="TensorFlow measures on a GPU only")
def test_dreg_step_needs_more_memory_than_plain_step():
    x, y = batch()
    plain = peak_memory.step_memory(small_model("none"), x, y)
    dreg = peak_memory.step_memory(small_model("dreg"), x, y)
    assert 0 < plain < dreg, (plain, dreg)


@pytest.mark.skipif(MEASURED, reason="measured here")
def test_tensorflow_without_gpu_is_not_measured():
    model = small_model("dreg")
    assert peak_memory.unmeasured_reason(model).startswith("no GPU")
    assert peak_memory.step_memory(model, *batch()) is None


@pytest.mark.skipif(BACKEND != "jax", reason="JAX's uncompiled step")
def test_jax_step_without_jit_is_not_measured():
    model = small_model("dreg", jit_compile=False)
    assert "jit_compile=False" in peak_memory.unmeasured_reason(model)
    assert peak_memory.step_memory(model, *batch()) is None


@pytest.mark.skipif(BACKEND != "torch", reason="torch's profiler")
def test_profiled_peak_of_a_dense_layer_is_its_tensors():
    """Forward and backward through Dense(1024) on 256 x 1024 inputs
    allocates its output (1 MiB), the kernel's gradient (4 MiB) and the
    bias's (4 KiB); the profiler's peak is within a factor 2 of that."""
    layer = keras.layers.Dense(1024)
    layer.build((None, 1024))
    x = keras.ops.convert_to_tensor(
        np.random.default_rng(0).normal(size=(256, 1024)).astype("float32")
    )
    counted = 4 * (256 * 1024 + 1024 * 1024 + 1024)
    peak = peak_memory.profiled_peak(lambda: keras.ops.sum(layer(x)).backward())
    assert counted / 2 <= peak <= 2 * counted, (peak, counted)
