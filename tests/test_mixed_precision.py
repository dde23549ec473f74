"""The penalties are computed in float32 under mixed-precision policies.

DREG in closed form; the input-gradient and Jacobian penalties by double
backpropagation, which every backend supports in `float16` and
`bfloat16` (also through attention).
"""

import keras
import numpy as np
import pytest

import keras_dreg
from keras_dreg.penalties import Batch
from tests.conftest import LOSS

RNG = np.random.default_rng(2)
X = RNG.normal(size=(32, 6)).astype("float32")
Y = RNG.integers(0, 2, size=(32,))


@pytest.fixture(params=["mixed_float16", "mixed_bfloat16"])
def policy(request):
    keras.config.set_dtype_policy(request.param)
    yield request.param
    keras.config.set_dtype_policy("float32")


def _model(lam=0.5):
    keras.utils.set_random_seed(0)
    inputs = keras.Input((6,))
    x = keras.layers.Dense(32, activation="gelu")(inputs)
    x = keras.layers.Dense(32, activation="silu")(x)
    outputs = keras.layers.Dense(2, dtype="float32")(x)
    return keras_dreg.DREGRegularizedModel(inputs, outputs, lam=lam)


def test_penalty_is_float32_and_close_to_full_precision(policy):
    model = _model()
    penalty = model.dreg_penalty(X)
    assert keras.backend.standardize_dtype(penalty.dtype) == "float32"
    keras.config.set_dtype_policy("float32")
    reference = _model()
    reference.set_weights(model.get_weights())
    expected = float(keras.ops.convert_to_numpy(reference.dreg_penalty(X)))
    # z comes from a low-precision matmul; the sum itself is float32.
    rtol = 1e-2 if policy == "mixed_bfloat16" else 2e-3
    np.testing.assert_allclose(float(penalty), expected, rtol=rtol)


def test_training_stays_finite_and_loss_is_scaled(policy):
    model = _model()
    model.compile(
        optimizer="adam",
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    if policy == "mixed_float16":
        assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
    history = model.fit(X, Y, epochs=3, batch_size=8, verbose=0)
    for key in ("loss", "dreg_penalty"):
        assert np.all(np.isfinite(history.history[key]))
    assert history.history["dreg_penalty"][0] > 0
    if policy == "mixed_float16":
        # The dynamic loss scale stays at its initial scale (no overflow
        # with the penalty added), so the gradients are scaled and
        # unscaled as without it.
        scale = float(
            keras.ops.convert_to_numpy(model.optimizer.scale_loss(1.0))
        )
        assert scale >= 2.0**10


def _base_model(attention):
    keras.utils.set_random_seed(0)
    inputs = keras.Input((6,))
    x = inputs
    if attention:
        x = keras.layers.Reshape((3, 2))(x)
        x = keras.layers.Flatten()(keras.layers.MultiHeadAttention(2, 4)(x, x))
    x = keras.layers.Dense(16, activation="gelu")(x)
    outputs = keras.layers.Dense(2, dtype="float32")(x)
    return keras.Model(inputs, outputs)


def _jax_on_cpu():
    import jax

    return jax.default_backend() == "cpu"


@pytest.mark.parametrize("attention", [False, True])
@pytest.mark.parametrize(
    "name, options", [("igpen", {}), ("jacobian", {"exact": True})]
)
def test_double_backprop_penalties(policy, name, options, attention):
    if (
        attention
        and policy == "mixed_float16"
        and keras.backend.backend() == "jax"
        and _jax_on_cpu()
    ):
        pytest.skip(
            "Keras's attention in float16 fails on JAX's CPU, also without "
            "a penalty: XLA:CPU has no float16 dot_general with float32 "
            "accumulation."
        )
    keras.config.set_dtype_policy("float32")
    reference = keras_dreg.regularize(_base_model(attention), name, **options)
    reference.compile(loss=LOSS)
    expected = reference.penalties[0](reference, Batch(X, Y, None))
    keras.config.set_dtype_policy(policy)
    base = _base_model(attention)
    model = keras_dreg.regularize(base, name, **options)
    model.compile(optimizer=keras.optimizers.SGD(0.01), loss=LOSS)
    model.set_weights(reference.get_weights())
    logs = model.train_on_batch(X, Y, return_dict=True)
    assert base.layers[-2].compute_dtype == policy.removeprefix("mixed_")
    # The penalty of the low-precision model is that of float32, and the
    # step's gradients were finite: the (loss-scaled) update was applied.
    rtol = 5e-2 if policy == "mixed_bfloat16" else 1e-2
    np.testing.assert_allclose(
        logs[f"{name}_penalty"],
        keras.ops.convert_to_numpy(expected),
        rtol=rtol,
    )
    assert np.isfinite(logs["loss"])
    for v, w in zip(model.trainable_variables, reference.trainable_variables):
        assert np.all(np.isfinite(v.numpy()))
        assert not np.array_equal(v.numpy(), w.numpy()), v.path
