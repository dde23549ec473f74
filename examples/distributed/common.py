"""What the three distributed recipes share: a model, data, a check.

Each recipe trains the same small GELU network for a few steps once on a
single device and once data-parallel, with each penalty-based
regularizer, and prints one JSON line per regularizer with the largest
differences. `--check` makes the script fail if any exceeds `1e-5`.
"""

import argparse
import json

import keras
import numpy as np

import keras_dreg

TOLERANCE = 1e-5
PENALIZED = ("dreg", "weight_decay", "igpen", "jacobian")


def make_parser(description: str) -> argparse.ArgumentParser:
    """The options the recipes share; a recipe may add its own."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument(
        "--regularizers",
        default=",".join(PENALIZED),
        help="comma-separated penalty-based regularizers to compare",
    )
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--check", action="store_true")
    return parser


def parse_args(description: str) -> argparse.Namespace:
    """The shared options, parsed from the command line."""
    return make_parser(description).parse_args()


def build(regularizer: str) -> keras.Model:
    """A seeded GELU MLP with `regularizer` (lam 0.1, to be visible).

    The Jacobian regularizer runs in its exact mode: its random
    projections are drawn per replica, so a data-parallel run would draw
    other vectors than a single-device run (equally unbiased, not equal).
    """
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8,))
    x = keras.layers.Dense(32, activation="gelu", name="hidden_1")(inputs)
    x = keras.layers.Dense(32, activation="gelu", name="hidden_2")(x)
    outputs = keras.layers.Dense(4, name="head")(x)
    base = keras.Model(inputs, outputs)
    options = {"exact": True} if regularizer == "jacobian" else {}
    return keras_dreg.regularize(base, regularizer, lam=0.1, **options)


def compile_model(model: keras.Model) -> keras.Model:
    model.compile(
        optimizer=keras.optimizers.SGD(0.1),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    return model


def data(steps: int, batch_size: int = 16):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(steps * batch_size, 8)).astype("float32")
    y = rng.integers(0, 4, size=(steps * batch_size,))
    return x, y


def compare(regularizer: str, single: dict, parallel: dict) -> dict:
    """Largest absolute differences between two runs' arrays."""
    report = {"regularizer": regularizer}
    for key in single:
        report[key] = max(
            float(np.max(np.abs(np.asarray(a) - np.asarray(b))))
            for a, b in zip(single[key], parallel[key])
        )
    report["ok"] = all(
        v <= TOLERANCE for k, v in report.items() if k not in ("regularizer",)
    )
    print(json.dumps(report))
    return report


def finish(reports: list[dict], check: bool) -> None:
    if check and not all(r["ok"] for r in reports):
        raise SystemExit(f"differences above {TOLERANCE}: {reports}")
