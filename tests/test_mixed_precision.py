"""The penalty is computed in float32 under mixed-precision policies."""

import keras
import numpy as np
import pytest

import keras_dreg

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
