"""DREG on a model you already have: `keras_dreg.wrap(model)`.

Builds an ordinary `keras.Sequential` convolutional network, with a
`Conv2D -> BatchNormalization -> ReLU` block as in ResNet, and trains
it with DREG by wrapping it: `keras_dreg.wrap(model)` returns a
`DREGRegularizedModel` that shares the model's layers and weights
(nothing is copied), so training the wrapper trains the model. DREG
follows the block through the normalization (the unit's weight norm is
scaled by the normalization's per-channel factor). Afterwards the
script checks that the original model carries the trained weights, and
saves and reloads it with plain Keras: it needs nothing from
keras-dreg. Data: scikit-learn's 8x8 handwritten digits (bundled,
nothing is downloaded).

Run it on any backend:

    KERAS_BACKEND=jax python examples/wrapping.py
    KERAS_BACKEND=tensorflow python examples/wrapping.py --epochs 5
    KERAS_BACKEND=torch python examples/wrapping.py --quick  # CI sizes
"""

import argparse
import os
import tempfile

import example_cli
import keras
import numpy as np

import keras_dreg
from keras_dreg.study.datasets import load_dataset

NUM_CLASSES = 10


def parse_args() -> argparse.Namespace:
    parser = example_cli.make_parser(__doc__, epochs=20)
    parser.add_argument("--lam", type=float, default=keras_dreg.DEFAULT_LAM)
    return example_cli.parse_args(parser)


def build_base_model() -> keras.Sequential:
    """A plain Keras model that knows nothing about DREG."""
    keras.utils.set_random_seed(0)
    return keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            keras.layers.Conv2D(16, 3, padding="same", use_bias=False),
            keras.layers.BatchNormalization(),
            keras.layers.ReLU(),
            keras.layers.MaxPooling2D(2),
            keras.layers.Flatten(),
            keras.layers.Dense(64, activation="gelu"),
            keras.layers.Dense(NUM_CLASSES),
        ],
        name="base",
    )


def predictions_equal(a: keras.Model, b: keras.Model, x) -> bool:
    return np.allclose(
        a.predict(x, verbose=0), b.predict(x, verbose=0), atol=1e-5
    )


def main() -> None:
    args = parse_args()
    data = load_dataset("digits", seed=0)
    base = build_base_model()
    model = keras_dreg.wrap(base, lam=args.lam)
    model.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    print(f"backend: {keras.backend.backend()}, lam = {model.lam:.4g}")
    print("Regularized layers (kernel -> normalization -> activation):")
    for site in model.dreg_layers:
        print(f"  {site}")

    model.fit(
        data.x_train,
        data.y_train,
        validation_data=(data.x_test, data.y_test),
        epochs=args.epochs,
        batch_size=64,
        verbose=2,
    )

    per_layer = model.dreg_penalty(data.x_test, per_layer=True)
    print("DREG penalty on the test set, per layer (lam included):")
    for name, value in per_layer.items():
        print(f"  {name:>8}: {float(keras.ops.convert_to_numpy(value)):.5f}")

    print("The wrapper trained the base model's own weights:")
    print(f"  same predictions: {predictions_equal(base, model, data.x_test)}")

    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "base.keras")
        base.save(path)
        reloaded = keras.saving.load_model(path)
    print("Saved the base model and reloaded it with plain Keras:")
    print(
        f"  same predictions: {predictions_equal(base, reloaded, data.x_test)}"
    )
    logits = reloaded.predict(data.x_test, verbose=0)
    accuracy = np.mean(np.argmax(logits, axis=-1) == data.y_test)
    print(f"  test accuracy of the reloaded model: {accuracy:.4f}")


if __name__ == "__main__":
    main()
