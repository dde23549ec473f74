"""The model and batch behind the cross-backend parity fixture.

`python -m tests.parity_model` (any backend) rewrites
`tests/fixtures/parity.npz` with that backend's penalty, per-layer terms
and gradients; `tests/test_parity.py` compares every backend with it.
"""

import os

import keras
import numpy as np

import keras_dreg
from tests import autodiff

FIXTURE = os.path.join(os.path.dirname(__file__), "fixtures", "parity.npz")


def build():
    """A CNN covering own activations, Conv -> BN -> ReLU and Dense."""
    inputs = keras.Input((6, 6, 2))
    x = keras.layers.Conv2D(3, 3, activation="gelu", name="conv_gelu")(inputs)
    x = keras.layers.Conv2D(4, 2, use_bias=False, name="conv_bn")(x)
    x = keras.layers.BatchNormalization(name="bn")(x)
    x = keras.layers.ReLU(name="relu")(x)
    x = keras.layers.Flatten()(x)
    x = keras.layers.Dense(5, activation="tanh", name="dense_tanh")(x)
    outputs = keras.layers.Dense(2, name="head")(x)
    model = keras_dreg.DREGRegularizedModel(inputs, outputs, lam=0.1)
    rng = np.random.default_rng(7)
    model.set_weights(
        [
            rng.uniform(0.5, 1.5, w.shape).astype("float32")
            if "variance" in w.path or "gamma" in w.path
            else rng.normal(scale=0.5, size=w.shape).astype("float32")
            for w in model.weights
        ]
    )
    x = rng.normal(size=(4, 6, 6, 2)).astype("float32")
    return model, x


def measure(model, x):
    """Penalty, per-layer terms and gradients w.r.t. trainable weights."""
    value, grads = autodiff.value_and_gradients(
        model, lambda: model.dreg_penalty(x)
    )
    terms = {
        f"term_{name}": keras.ops.convert_to_numpy(v)
        for name, v in model.dreg_penalty(x, per_layer=True).items()
    }
    grads = {
        f"grad_{v.path}": g for v, g in zip(model.trainable_variables, grads)
    }
    return {"penalty": np.float32(value), **terms, **grads}


if __name__ == "__main__":
    model, x = build()
    np.savez(FIXTURE, backend=keras.backend.backend(), **measure(model, x))
    print(f"wrote {FIXTURE} on {keras.backend.backend()}")
