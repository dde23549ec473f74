"""DREG's `sample_size`: the penalty of the first `k` examples of a batch."""

import keras
import numpy as np
import pytest

import keras_dreg
from keras_dreg import penalty
from tests.conftest import LOSS
from tests.conftest import to_numpy

BATCH = 16


def build_model(batch_norm=False):
    """GELU Dense and `padding="same"` Conv layers (position-dependent
    weight norms), optionally Conv -> BatchNormalization -> GELU."""
    inputs = keras.Input((6, 6, 2))
    x = keras.layers.Conv2D(4, 3, padding="same", activation="gelu")(inputs)
    x = keras.layers.Conv2D(3, 3, use_bias=not batch_norm)(x)
    if batch_norm:
        x = keras.layers.BatchNormalization()(x)
    x = keras.layers.Activation("gelu")(x)
    x = keras.layers.Flatten()(x)
    x = keras.layers.Dense(8, activation="tanh")(x)
    return keras.Model(inputs, keras.layers.Dense(3)(x))


def twin_models(*options, batch_norm=False):
    """One DREG model per `options` dict, all from the same weights."""
    keras.utils.set_random_seed(0)
    weights = build_model(batch_norm).get_weights()
    models = []
    for kwargs in options:
        base = build_model(batch_norm)
        base.set_weights(weights)
        models.append(keras_dreg.wrap(base, lam=1.0, **kwargs))
    return models


def batch(size=BATCH, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(size, 6, 6, 2)).astype("float32")
    return x, rng.integers(0, 3, size=(size,))


@pytest.mark.parametrize("sample_size", [BATCH, 3 * BATCH])
def test_sample_size_of_the_batch_is_bit_identical(sample_size):
    exact, sampled = twin_models({}, {"sample_size": sample_size})
    x, y = batch()
    assert to_numpy(sampled.dreg_penalty(x)) == to_numpy(exact.dreg_penalty(x))
    for model in (exact, sampled):
        model.compile(optimizer=keras.optimizers.SGD(0.1), loss=LOSS)
        model.train_on_batch(x, y)
    for a, b in zip(exact.get_weights(), sampled.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_sample_size_is_the_penalty_of_the_first_examples():
    exact, sampled = twin_models({}, {"sample_size": 5})
    x, _ = batch()
    first = to_numpy(exact.dreg_penalty(x[:5]))
    np.testing.assert_allclose(to_numpy(sampled.dreg_penalty(x)), first, 1e-6)
    assert not np.isclose(to_numpy(exact.dreg_penalty(x)), first, rtol=1e-3)


def test_sample_size_is_an_unbiased_estimate_on_shuffled_batches():
    exact, sampled = twin_models({}, {"sample_size": 4})
    x, _ = batch(size=64, seed=1)
    target = float(to_numpy(exact.dreg_penalty(x)))
    rng = np.random.default_rng(2)
    draws = np.array(
        [
            float(to_numpy(sampled.dreg_penalty(x[rng.permutation(64)])))
            for _ in range(300)
        ]
    )
    standard_error = draws.std(ddof=1) / np.sqrt(len(draws))
    assert draws.std() > 0.01 * target  # the draws do differ
    assert abs(draws.mean() - target) < 3 * standard_error


def test_sample_size_keeps_the_batch_norm_scale_of_the_whole_batch():
    (model,) = twin_models({"sample_size": 5}, batch_norm=True)
    state = model.penalty_state(model.dreg)
    x, _ = batch()
    with model.dreg.recording(state) as records:
        model.wrapped(x, training=True)  # the base model: no own recording
        terms = model.dreg.layer_terms(state, records)
        site = state.capture.sites[1]
        (record,) = records[1]
        scale = penalty.batch_norm_scale(
            site.batch_norm, record.batch_norm_inputs, True
        )
        z = record.pre_activation[:5]
        expected = penalty.layer_penalty(
            site.layer, z, site.activation.derivative, unit_scale=scale
        )
    assert site.batch_norm is not None
    np.testing.assert_allclose(
        to_numpy(terms[site.name]), to_numpy(expected), rtol=1e-5
    )


@pytest.mark.parametrize("value", [0, -2])
def test_sample_size_must_be_positive(value):
    with pytest.raises(ValueError, match="sample_size"):
        keras_dreg.penalties.DREG(sample_size=value)
    with pytest.raises(TypeError, match="sample_size"):
        keras_dreg.penalties.DREG(sample_size=2.5)


def test_sample_size_trains_and_round_trips_its_config():
    (model,) = twin_models({"sample_size": 4})
    model.compile(optimizer="adam", loss=LOSS)
    x, y = batch(size=32)
    history = model.fit(x, y, batch_size=16, epochs=2, verbose=0)
    assert np.all(np.isfinite(history.history["dreg_penalty"]))
    assert model.get_config()["sample_size"] == 4
    assert (
        keras_dreg.penalties.DREG(sample_size=4).get_config()["sample_size"]
        == 4
    )
