"""`DREGMonitor`'s per-layer scalars, read back from TensorBoard files.

The event files are read with TensorBoard's own loader
(`EventAccumulator`), the code the TensorBoard server uses, and compared
with `model.dreg_penalty(..., per_layer=True)` and
`model.mean_squared_derivatives(...)` on the probe after training.
"""

import csv

import keras
import numpy as np
import pytest

import keras_dreg

pytest.importorskip("tensorflow", reason="TensorBoard files need TensorFlow")
event_accumulator = pytest.importorskip(
    "tensorboard.backend.event_processing.event_accumulator",
    reason="tensorboard is not installed (pip install keras-dreg[tensorboard])",
)
from tensorboard.util import tensor_util  # noqa: E402

RNG = np.random.default_rng(5)
X = RNG.normal(size=(48, 6)).astype("float32")
Y = (X[:, 0] + X[:, 1] > 0).astype("int32")
PROBE = X[:16]
EPOCHS = 3
LAYERS = ("first", "second")


def _model():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((6,))
    x = keras.layers.Dense(8, activation="gelu", name="first")(inputs)
    x = keras.layers.Dense(8, activation="tanh", name="second")(x)
    outputs = keras.layers.Dense(2, name="head")(x)
    model = keras_dreg.DREGRegularizedModel(inputs, outputs, lam=0.1)
    model.compile(
        keras.optimizers.SGD(0.1),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    return model


def read_scalars(run_dir):
    """`{tag: [(step, value), ...]}` of every scalar in `run_dir`."""
    accumulator = event_accumulator.EventAccumulator(
        str(run_dir), size_guidance={event_accumulator.TENSORS: 0}
    )
    accumulator.Reload()
    return {
        tag: [
            (event.step, float(tensor_util.make_ndarray(event.tensor_proto)))
            for event in accumulator.Tensors(tag)
        ]
        for tag in accumulator.Tags()["tensors"]
    }


def final_values(model):
    penalties = model.dreg_penalty(PROBE, per_layer=True)
    derivatives = model.mean_squared_derivatives(PROBE)
    return {
        name: {
            "penalty": float(keras.ops.convert_to_numpy(penalties[name])),
            "mean_sq_derivative": float(
                keras.ops.convert_to_numpy(derivatives[name])
            ),
        }
        for name in LAYERS
    }


def test_log_dir_writes_each_layer_per_epoch(tmp_path):
    model = _model()
    # Placed last on purpose: `log_dir` does not depend on the order.
    callbacks = [
        keras.callbacks.History(),
        keras_dreg.callbacks.DREGMonitor(PROBE, log_dir=str(tmp_path)),
    ]
    model.fit(X, Y, epochs=EPOCHS, verbose=0, callbacks=callbacks)
    scalars = read_scalars(tmp_path / "dreg")
    expected = final_values(model)
    assert sorted(scalars) == sorted(
        f"dreg/{name}/{quantity}"
        for name in LAYERS
        for quantity in ("penalty", "mean_sq_derivative")
    )
    for name in LAYERS:
        for quantity, value in expected[name].items():
            points = scalars[f"dreg/{name}/{quantity}"]
            assert [step for step, _ in points] == list(range(EPOCHS))
            np.testing.assert_allclose(points[-1][1], value, rtol=1e-5)
    # The penalty changes while training: one value per epoch, not a copy.
    penalties = [v for _, v in scalars["dreg/first/penalty"]]
    assert len(set(penalties)) == EPOCHS


def test_keras_tensorboard_and_csv_logger_pick_up_the_logs(tmp_path):
    model = _model()
    csv_path = tmp_path / "log.csv"
    callbacks = [
        keras_dreg.callbacks.DREGMonitor(PROBE),
        keras.callbacks.TensorBoard(str(tmp_path / "tb")),
        keras.callbacks.CSVLogger(str(csv_path)),
    ]
    model.fit(X, Y, epochs=EPOCHS, verbose=0, callbacks=callbacks)
    expected = final_values(model)
    scalars = read_scalars(tmp_path / "tb" / "train")
    with open(csv_path) as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == EPOCHS
    for name in LAYERS:
        for quantity, value in expected[name].items():
            key = f"dreg/{name}/{quantity}"
            points = scalars[f"epoch_{key}"]
            assert [step for step, _ in points] == list(range(EPOCHS))
            np.testing.assert_allclose(points[-1][1], value, rtol=1e-5)
            np.testing.assert_allclose(float(rows[-1][key]), value, 1e-5)
