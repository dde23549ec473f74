"""DREG on a Functional model: `DREGRegularizedModel(inputs, outputs)`.

Builds a two-hidden-layer GELU network on scikit-learn's handwritten
digits (bundled with scikit-learn, nothing is downloaded) the way any
Functional Keras model is built, except that the model class is
`keras_dreg.DREGRegularizedModel`. Training then adds the DREG penalty
to the loss; `fit` logs it as `dreg_penalty` beside `loss`. Afterwards
the script prints which layers DREG regularizes (`model.dreg_layers`)
and each layer's share of the penalty on the test set.

Run it on any backend:

    KERAS_BACKEND=jax python examples/functional.py
    KERAS_BACKEND=tensorflow python examples/functional.py --epochs 5
    KERAS_BACKEND=torch python examples/functional.py --quick  # CI sizes
"""

import argparse

import example_cli
import keras

import keras_dreg
from keras_dreg.study.datasets import load_dataset

NUM_CLASSES = 10


def parse_args() -> argparse.Namespace:
    parser = example_cli.make_parser(__doc__, epochs=20)
    parser.add_argument("--lam", type=float, default=keras_dreg.DEFAULT_LAM)
    return example_cli.parse_args(parser)


def load_digits():
    """Standardized 8x8 digits as 64-feature vectors: train and test."""
    data = load_dataset("digits", seed=0)
    x_train = data.x_train.reshape(len(data.x_train), -1)
    x_test = data.x_test.reshape(len(data.x_test), -1)
    return x_train, data.y_train, x_test, data.y_test


def build_model(lam: float) -> keras_dreg.DREGRegularizedModel:
    """A GELU MLP; DREG regularizes both hidden layers, not the head."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((64,))
    x = keras.layers.Dense(128, activation="gelu", name="hidden_1")(inputs)
    x = keras.layers.Dense(128, activation="gelu", name="hidden_2")(x)
    outputs = keras.layers.Dense(NUM_CLASSES, name="logits")(x)
    return keras_dreg.DREGRegularizedModel(inputs, outputs, lam=lam)


def main() -> None:
    args = parse_args()
    x_train, y_train, x_test, y_test = load_digits()
    model = build_model(args.lam)
    model.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    print(f"backend: {keras.backend.backend()}, lam = {model.lam:.4g}")
    print("Regularized layers:")
    for site in model.dreg_layers:
        print(f"  {site}")

    # The logs show `dreg_penalty`, the weighted penalty of each epoch;
    # `loss` includes it.
    history = model.fit(
        x_train,
        y_train,
        validation_data=(x_test, y_test),
        epochs=args.epochs,
        batch_size=64,
        verbose=2,
    )

    per_layer = model.dreg_penalty(x_test, per_layer=True)
    print("DREG penalty on the test set, per layer (lam included):")
    for name, value in per_layer.items():
        print(f"  {name:>10}: {float(keras.ops.convert_to_numpy(value)):.5f}")
    total = float(keras.ops.convert_to_numpy(model.dreg_penalty(x_test)))
    print(f"  {'total':>10}: {total:.5f}")
    last_penalty = history.history["dreg_penalty"][-1]
    accuracy = model.evaluate(x_test, y_test, verbose=0)[1]
    print(f"last epoch's training dreg_penalty: {last_penalty:.5f}")
    print(f"test accuracy: {accuracy:.4f}")


if __name__ == "__main__":
    main()
