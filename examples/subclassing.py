"""DREG on a subclassed model: subclass `keras_dreg.DREGRegularizedModel`.

Writes a small convolutional network the way any subclassed Keras model
is written (layers in `__init__`, the forward pass in `call`), with
`keras_dreg.DREGRegularizedModel` as the base class instead of
`keras.Model`, and trains it on scikit-learn's 8x8 handwritten digits
(bundled, nothing is downloaded). On the first call DREG finds every
kernel layer with its own nonlinear `activation=` (a subclassed model
has no graph to follow from a kernel layer to a separate activation
layer; for `Conv2D -> BatchNormalization -> ReLU` see
`examples/wrapping.py`). `fit` logs
`dreg_penalty`; the `keras_dreg.callbacks.DREGMonitor` callback adds
each layer's penalty and mean squared activation derivative to every
epoch's logs, printed at the end.

Run it on any backend:

    KERAS_BACKEND=jax python examples/subclassing.py
    KERAS_BACKEND=tensorflow python examples/subclassing.py --epochs 5
    KERAS_BACKEND=torch python examples/subclassing.py --quick  # CI sizes
"""

import argparse

import example_cli
import keras

import keras_dreg
from keras_dreg.study.datasets import load_dataset

NUM_CLASSES = 10


class DigitsNet(keras_dreg.DREGRegularizedModel):
    """Conv(SiLU) -> Conv(ReLU) -> MaxPool -> Dense(GELU) -> logits.

    Options of DREG (`lam`, `exclude`, ...) go to the base class's
    constructor through `**kwargs`.
    """

    def __init__(self, num_classes: int = NUM_CLASSES, **kwargs):
        super().__init__(**kwargs)
        self.conv_1 = keras.layers.Conv2D(
            16, 3, padding="same", activation="silu", name="conv_1"
        )
        self.conv_2 = keras.layers.Conv2D(
            32, 3, padding="same", activation="relu", name="conv_2"
        )
        self.pool = keras.layers.MaxPooling2D(2)
        self.flatten = keras.layers.Flatten()
        self.hidden = keras.layers.Dense(64, activation="gelu", name="hidden")
        self.logits = keras.layers.Dense(num_classes, name="logits")

    def call(self, x):
        x = self.pool(self.conv_2(self.conv_1(x)))
        return self.logits(self.hidden(self.flatten(x)))


def parse_args() -> argparse.Namespace:
    parser = example_cli.make_parser(__doc__, epochs=20)
    parser.add_argument("--lam", type=float, default=keras_dreg.DEFAULT_LAM)
    return example_cli.parse_args(parser)


def to_float(value) -> float:
    return float(keras.ops.convert_to_numpy(value))


def main() -> None:
    args = parse_args()
    data = load_dataset("digits", seed=0)
    keras.utils.set_random_seed(0)
    model = DigitsNet(lam=args.lam)
    model.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    # A subclassed model knows its layers once it has been called.
    model(data.x_train[:1])
    print(f"backend: {keras.backend.backend()}, lam = {model.lam:.4g}")
    print("Regularized layers:")
    for site in model.dreg_layers:
        print(f"  {site}")

    monitor = keras_dreg.callbacks.DREGMonitor(data.x_test[:256])
    history = model.fit(
        data.x_train,
        data.y_train,
        validation_data=(data.x_test, data.y_test),
        epochs=args.epochs,
        batch_size=64,
        callbacks=[monitor],
        verbose=2,
    )

    print("Per layer at the last epoch (DREGMonitor, on 256 test images):")
    print(f"  {'layer':>8}  {'penalty':>9}  {'mean phi_prime^2':>16}")
    for site in model.dreg_layers:
        logs = {
            key.split("/")[-1]: values[-1]
            for key, values in history.history.items()
            if key.startswith(f"dreg/{site.name}/")
        }
        print(
            f"  {site.name:>8}  {logs['penalty']:9.5f}  "
            f"{logs['mean_sq_derivative']:16.4f}"
        )
    total = to_float(model.dreg_penalty(data.x_test))
    accuracy = model.evaluate(data.x_test, data.y_test, verbose=0)[1]
    print(f"DREG penalty on the whole test set: {total:.5f}")
    print(f"test accuracy: {accuracy:.4f}")


if __name__ == "__main__":
    main()
