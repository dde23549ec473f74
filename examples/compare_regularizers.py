"""The six regularizers of the DREG study, side by side on one data set.

`keras_dreg.regularize(model, name)` trains a model with any of the six
regularizers in `keras_dreg.REGULARIZERS`, each at its default strength:
none, weight decay, the input-gradient penalty ("igpen", double
backpropagation), the input-output Jacobian penalty ("jacobian", random
projections), spectral normalization and DREG. Every run starts from the
same initial weights and sees the same batches; the script prints a
table of clean test accuracy, accuracy on corrupted test inputs, and the
median training step time (the first epoch, which compiles, left out),
also as a ratio to no regularization (a rough one: for careful step
time ratios see `benchmarks/`).

The data sets are the study's offline ones (`digits`, `mnist1d`,
`text_rule`, `breast_cancer` and their `_messy` twins, nothing is
downloaded); the model is the study's for that kind of data
(`keras_dreg.study.build_model`). One run is one cell of the study: see
`keras-dreg study run` for the whole grid with statistics.

Run it on any backend:

    KERAS_BACKEND=jax python examples/compare_regularizers.py
    KERAS_BACKEND=torch python examples/compare_regularizers.py \\
        --dataset mnist1d_messy --activation relu
    KERAS_BACKEND=tensorflow python examples/compare_regularizers.py \\
        --regularizers none,dreg --quick  # CI sizes
"""

import argparse
import time

import example_cli
import keras
import numpy as np

import keras_dreg
from keras_dreg.study import ACTIVATIONS
from keras_dreg.study import OFFLINE_DATASETS
from keras_dreg.study import Dataset
from keras_dreg.study import build_model
from keras_dreg.study import corrupt_test_inputs
from keras_dreg.study import load_dataset

BATCH_SIZE = 64


class StepTimer(keras.callbacks.Callback):
    """Seconds per training step of each epoch after the first."""

    def __init__(self, steps_per_epoch: int):
        super().__init__()
        self.steps_per_epoch = steps_per_epoch
        self.step_times = []

    def on_epoch_begin(self, epoch, logs=None):
        self.start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        # Keras has fetched the epoch's logs: the device work is done.
        if epoch > 0:
            elapsed = time.perf_counter() - self.start
            self.step_times.append(elapsed / self.steps_per_epoch)


def parse_args() -> argparse.Namespace:
    parser = example_cli.make_parser(__doc__, epochs=10)
    parser.add_argument("--dataset", choices=OFFLINE_DATASETS, default="digits")
    parser.add_argument("--activation", choices=ACTIVATIONS, default="gelu")
    parser.add_argument(
        "--regularizers",
        type=regularizer_list,
        default=keras_dreg.REGULARIZERS,
        help="comma-separated subset of: " + ", ".join(keras_dreg.REGULARIZERS),
    )
    parser.add_argument("--seed", type=int, default=0)
    return example_cli.parse_args(parser)


def regularizer_list(text: str) -> tuple[str, ...]:
    names = tuple(name.strip() for name in text.split(",") if name.strip())
    unknown = [n for n in names if n not in keras_dreg.REGULARIZERS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown regularizer(s) {unknown or text!r}; choose from "
            + ", ".join(keras_dreg.REGULARIZERS)
        )
    return names


def accuracy(model: keras.Model, x, y) -> float:
    logits = model.predict(x, batch_size=512, verbose=0)
    return float(np.mean(np.argmax(logits, axis=-1) == y))


def train(name: str, data: Dataset, args) -> dict[str, float]:
    """Trains the study's model for `data` with the regularizer `name`."""
    keras.backend.clear_session()
    base = build_model(data, args.activation, seed=args.seed)
    model = keras_dreg.regularize(base, name)
    model.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    steps = -(-len(data.x_train) // BATCH_SIZE)
    timer = StepTimer(steps)
    keras.utils.set_random_seed(args.seed)  # The same batch order.
    model.fit(
        data.x_train,
        data.y_train,
        epochs=args.epochs,
        batch_size=BATCH_SIZE,
        callbacks=[timer],
        verbose=2,
    )
    noisy_x_test = corrupt_test_inputs(data, args.seed)
    return {
        "accuracy": accuracy(model, data.x_test, data.y_test),
        "noisy accuracy": accuracy(model, noisy_x_test, data.y_test),
        "ms/step": 1000 * float(np.median(timer.step_times or [np.nan])),
    }


def print_table(results: dict[str, dict[str, float]]) -> None:
    baseline = results.get("none", {}).get("ms/step", np.nan)
    print(
        f"\n{'regularizer':<14}{'accuracy':>10}{'noisy acc':>11}"
        f"{'ms/step':>9}{'x none':>8}"
    )
    for name, r in results.items():
        print(
            f"{name:<14}{r['accuracy']:>10.4f}{r['noisy accuracy']:>11.4f}"
            f"{r['ms/step']:>9.2f}{r['ms/step'] / baseline:>8.2f}"
        )


def main() -> None:
    args = parse_args()
    data = load_dataset(args.dataset, seed=args.seed)
    print(
        f"backend: {keras.backend.backend()}, {data.name} ({data.task}, "
        f"{len(data.x_train)} training examples), {args.activation}, "
        f"{args.epochs} epochs"
    )
    results = {}
    for name in args.regularizers:
        print(f"\n== {name}")
        results[name] = train(name, data, args)
    print_table(results)


if __name__ == "__main__":
    main()
