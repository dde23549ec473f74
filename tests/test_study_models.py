"""The study's models: shapes, training, DREG sites, determinism."""

import warnings

import keras
import numpy as np
import pytest
from keras.src.models.functional import Functional

import keras_dreg
from keras_dreg.study.datasets import Dataset
from keras_dreg.study.models import ACTIVATIONS
from keras_dreg.study.models import build_model

N = 16
RNG = np.random.default_rng(0)
SHAPES = {
    "tabular": (7,),
    "image": (8, 8, 1),
    "sequence": (40, 1),
    "text": (12,),
}


def _dataset(task, shape=None, num_classes=3):
    shape = SHAPES[task] if shape is None else shape
    if task == "text":
        x = RNG.integers(1, 30, size=(N, *shape)).astype(np.int32)
        x[: N // 2, -4:] = 0
    else:
        x = RNG.normal(size=(N, *shape)).astype(np.float32)
    y = (np.arange(N) % num_classes).astype(np.int32)
    return Dataset(
        name=f"tiny_{task}",
        task=task,
        x_train=x,
        y_train=y,
        x_test=x[:4],
        y_test=y[:4],
        num_classes=num_classes,
        vocab_size=30 if task == "text" else None,
    )


@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("task", list(SHAPES))
def test_builds_trains_and_is_found_by_dreg(task, activation):
    data = _dataset(task)
    model = build_model(data, activation, seed=0)
    assert isinstance(model, Functional)
    assert tuple(model.output.shape) == (None, data.num_classes)
    sites = keras_dreg.wrap(model).dreg_layers
    assert sites and {s.activation.name for s in sites} == {activation}
    if task == "text":
        assert "ff_hidden" in [s.name for s in sites]
    model.compile(
        optimizer="adam",
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    history = model.fit(
        data.x_train, data.y_train, batch_size=N, epochs=1, verbose=0
    )
    assert np.isfinite(float(history.history["loss"][0]))


@pytest.mark.parametrize("task", ["tabular", "image", "sequence", "text"])
def test_no_warning_when_wrapped(task):
    model = build_model(_dataset(task), "gelu")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert keras_dreg.wrap(model).dreg_layers


def test_sequence_accepts_two_dimensional_signals():
    data = _dataset("sequence", shape=(40,))
    model = build_model(data, "relu")
    assert model.predict(data.x_test, verbose=0).shape == (4, 3)


@pytest.mark.parametrize("task", list(SHAPES))
def test_spectral_normalization_can_rebuild_it(task):
    data = _dataset(task)
    model = keras_dreg.regularize(build_model(data, "gelu"), "spectral_norm")
    assert model(data.x_test).shape == (4, data.num_classes)


@pytest.mark.parametrize("task", list(SHAPES))
def test_same_seed_same_initial_weights(task):
    data = _dataset(task)
    first = build_model(data, "gelu", seed=3).get_weights()
    again = build_model(data, "gelu", seed=3).get_weights()
    other = build_model(data, "gelu", seed=4).get_weights()
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a, b)
    assert any(not np.array_equal(a, b) for a, b in zip(first, other))
