"""Tests of `keras_dreg.spectral_normalization`: which layers it wraps,
and that power iteration converges on every backend."""

import keras
import numpy as np
import pytest

import keras_dreg
from keras_dreg.spectral_normalization import SpectralNormalization
from keras_dreg.spectral_normalization import output_layers
from keras_dreg.spectral_normalization import spectral_normalized


def _wrapped(model):
    return [
        type(layer.layer).__name__
        for layer in model._flatten_layers()
        if isinstance(layer, SpectralNormalization)
    ]


def _cnn():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(8, 3, activation="relu")(inputs)
    x = keras.layers.Flatten()(x)
    x = keras.layers.Dense(16, activation="relu")(x)
    x = keras.layers.Dense(3)(x)
    outputs = keras.layers.Activation("softmax")(keras.layers.Dropout(0.1)(x))
    return keras.Model(inputs, outputs)


def test_the_output_layer_stays_unnormalized_by_default():
    model = _cnn()
    assert output_layers(model) == {id(model.layers[-3])}
    assert _wrapped(spectral_normalized(model)) == ["Conv2D", "Dense"]
    assert _wrapped(spectral_normalized(model, normalize_output=True)) == [
        "Conv2D",
        "Dense",
        "Dense",
    ]


def test_every_head_of_a_two_output_model_stays_unnormalized():
    inputs = keras.Input((4,))
    hidden = keras.layers.Dense(8, activation="relu")(inputs)
    model = keras.Model(
        inputs, [keras.layers.Dense(2)(hidden), keras.layers.Dense(1)(hidden)]
    )
    assert _wrapped(spectral_normalized(model)) == ["Dense"]


def test_a_sequential_model_keeps_its_head():
    model = keras.Sequential(
        [
            keras.Input((4,)),
            keras.layers.Dense(8, activation="relu"),
            keras.layers.Dense(2),
        ]
    )
    normalized = keras_dreg.regularize(model, "spectral_norm")
    assert _wrapped(normalized.wrapped) == ["Dense"]


def _effective_sigma(layer: SpectralNormalization) -> float:
    """Largest singular value of the kernel the layer infers with."""
    _, kernel = layer.normalized_weights()
    kernel = np.asarray(keras.ops.convert_to_numpy(kernel))
    return float(
        np.linalg.svd(kernel.reshape(-1, kernel.shape[-1]), compute_uv=False)[0]
    )


def test_power_iteration_converges_within_120_adam_steps():
    """One power iteration per step (the default), Adam at 1e-3: the
    kernel the layer uses has largest singular value <= 1.05."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 3))
    conv = SpectralNormalization(keras.layers.Conv2D(8, 3, activation="relu"))
    x = keras.layers.Flatten()(conv(inputs))
    model = keras.Model(inputs, keras.layers.Dense(2)(x))
    model.compile(
        keras.optimizers.Adam(1e-3),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    rng = np.random.default_rng(0)
    x = rng.normal(size=(960, 8, 8, 3)).astype("float32")
    y = rng.integers(0, 2, size=(960,))
    model.fit(x, y, batch_size=8, epochs=1, verbose=0)
    assert model.optimizer.iterations.numpy() == 120
    kernel = np.asarray(keras.ops.convert_to_numpy(conv.kernel.value))
    raw = np.linalg.svd(kernel.reshape(-1, 8), compute_uv=False)[0]
    assert abs(raw - 1.0) > 0.05  # the raw kernel is not normalized itself
    assert _effective_sigma(conv) <= 1.05


@pytest.mark.parametrize("normalize_output", [False, True])
def test_logits_can_grow_only_with_an_unnormalized_head(normalize_output):
    """With the head normalized too, the logits stay at the input's scale
    whatever the training; with the default they grow to fit."""
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((4,)),
            keras.layers.Dense(16, activation="relu"),
            keras.layers.Dense(2),
        ]
    )
    model = keras_dreg.regularize(
        model, "spectral_norm", normalize_output=normalize_output
    )
    model.compile(
        keras.optimizers.Adam(1e-2),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    rng = np.random.default_rng(0)
    x = rng.normal(size=(256, 4)).astype("float32")
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    y = (x[:, 0] > 0).astype("int32")
    model.fit(x, y, batch_size=32, epochs=30, verbose=0)
    logits = model.predict(x, verbose=0)
    margin = np.abs(logits[:, 1] - logits[:, 0]).max()
    if normalize_output:
        assert margin <= 2.0  # |f(x) - f(0)| <= |x| per logit
    else:
        assert margin > 4.0
