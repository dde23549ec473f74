"""`DREGMonitor` puts each layer's penalty and `mean(phi'^2)` in the logs."""

import keras
import numpy as np
import pytest

import keras_dreg

RNG = np.random.default_rng(3)
X = RNG.normal(size=(32, 5)).astype("float32")
Y = RNG.integers(0, 2, size=(32,))


def _model():
    inputs = keras.Input((5,))
    x = keras.layers.Dense(8, activation="gelu", name="first")(inputs)
    x = keras.layers.Dense(8, activation="sigmoid", name="second")(x)
    outputs = keras.layers.Dense(2, name="head")(x)
    model = keras_dreg.DREGRegularizedModel(inputs, outputs, lam=0.1)
    model.compile(
        "sgd", keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    )
    return model


def test_monitor_logs_per_layer_values_each_epoch():
    model = _model()
    probe = X[:8]
    history = model.fit(
        X,
        Y,
        epochs=2,
        verbose=0,
        callbacks=[keras_dreg.callbacks.DREGMonitor(probe)],
    )
    terms = model.dreg_penalty(probe, per_layer=True)
    for name in ("first", "second"):
        penalties = history.history[f"dreg/{name}/penalty"]
        derivatives = history.history[f"dreg/{name}/mean_sq_derivative"]
        assert len(penalties) == len(derivatives) == 2
        np.testing.assert_allclose(penalties[-1], float(terms[name]), 1e-5)
    # sigmoid' <= 1/4, so its mean squared derivative is at most 1/16.
    assert 0 < history.history["dreg/second/mean_sq_derivative"][-1] <= 1 / 16
    z = probe @ model.get_layer("first").get_weights()[0]
    z = z + model.get_layer("first").get_weights()[1]
    expected = keras.ops.convert_to_numpy(
        model.dreg_layers[0].activation.derivative(
            keras.ops.convert_to_tensor(z)
        )
    )
    np.testing.assert_allclose(
        history.history["dreg/first/mean_sq_derivative"][-1],
        np.mean(expected**2),
        rtol=1e-5,
    )


def test_monitor_needs_a_dreg_model():
    inputs = keras.Input((5,))
    plain = keras.Model(inputs, keras.layers.Dense(2)(inputs))
    plain.compile("sgd", "mse")
    with pytest.raises(TypeError, match="wrap"):
        plain.fit(
            X,
            np.zeros((32, 2)),
            verbose=0,
            callbacks=[keras_dreg.callbacks.DREGMonitor(X[:4])],
        )
