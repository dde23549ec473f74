"""DREG with your own activation: `keras_dreg.register_derivative`.

DREG weights each unit by `phi'(z)^2`, the squared derivative of its
activation. keras-dreg knows `phi'` in closed form for every activation
Keras ships. For an activation of your own it falls back to autodiff
(`keras.ops.jvp`, with a one-time warning), which is right only for
elementwise functions and costs an extra forward-mode pass. Registering
the closed form removes both caveats. Registering the second derivative
`phi''` as well (optional) lets training take the gradient of `phi'(z)^2`
from it too, which saves passes over `z` on PyTorch and TensorFlow.

This script takes the Snake activation (Ziyin et al., 2020),
`snake(z) = z + sin(f z)^2 / f`, with `phi'(z) = 1 + sin(2 f z)` and
`phi''(z) = 2 f cos(2 f z)`:

1. compares the registered closed forms with autodiff (`keras.ops.jvp`)
   on a grid of `z`, and the model's penalty with the autodiff fallback
   (they agree to float32 round-off);
2. trains a Snake network with DREG on scikit-learn's handwritten digits
   (bundled, nothing is downloaded).

Run it on any backend:

    KERAS_BACKEND=jax python examples/custom_activation.py
    KERAS_BACKEND=tensorflow python examples/custom_activation.py
    KERAS_BACKEND=torch python examples/custom_activation.py --quick
"""

import argparse
import warnings

import example_cli
import keras
import numpy as np
from keras import ops

import keras_dreg
from keras_dreg.study.datasets import load_dataset

NUM_CLASSES = 10
TOLERANCE = 1e-5


@keras.saving.register_keras_serializable(package="examples")
def snake(x, frequency: float = 1.0):
    """Snake: `x + sin(frequency * x)^2 / frequency`."""
    return x + ops.sin(frequency * x) ** 2 / frequency


def snake_derivative(x, frequency: float = 1.0):
    """`d snake / dx = 1 + sin(2 * frequency * x)`, same arguments."""
    return 1.0 + ops.sin(2.0 * frequency * x)


def snake_second_derivative(x, frequency: float = 1.0):
    """`d^2 snake / dx^2 = 2 * frequency * cos(2 * frequency * x)`."""
    return 2.0 * frequency * ops.cos(2.0 * frequency * x)


def parse_args() -> argparse.Namespace:
    return example_cli.parse_args(example_cli.make_parser(__doc__, epochs=20))


def to_numpy(value) -> np.ndarray:
    return ops.convert_to_numpy(value)


def autodiff_gap(closed_form, fn, z) -> float:
    """Largest gap between `closed_form(z)` and the jvp of `fn` at `z`."""
    _, autodiff = ops.jvp(fn, (z,), (ops.ones_like(z),))
    return float(np.max(np.abs(to_numpy(closed_form(z)) - to_numpy(autodiff))))


def build_base_model() -> keras.Model:
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 1))
    x = keras.layers.Flatten()(inputs)
    x = keras.layers.Dense(128, activation=snake, name="hidden_1")(x)
    x = keras.layers.Dense(128, activation=snake, name="hidden_2")(x)
    return keras.Model(inputs, keras.layers.Dense(NUM_CLASSES)(x))


def autodiff_fallback(base: keras.Model) -> keras_dreg.DREGRegularizedModel:
    """DREG on `base` before `snake` is registered: the jvp fallback."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = keras_dreg.wrap(base)
        sites = model.dreg_layers  # DREG looks up the derivatives here.
    for warning in caught:
        print(f"  warning: {str(warning.message)[:72]}...")
    print(f"  layers: {sites}")
    return model


def check_closed_form(base: keras.Model, x) -> None:
    """Registers the closed forms of snake; checks them against autodiff."""
    print("Before registration, DREG differentiates snake by autodiff:")
    fallback = autodiff_fallback(base)

    keras_dreg.register_derivative(
        snake, snake_derivative, second_derivative=snake_second_derivative
    )
    model = keras_dreg.wrap(base)
    print(f"After registration: {model.dreg_layers}")

    z = ops.linspace(-6.0, 6.0, 1001)
    gaps = {
        "phi'": autodiff_gap(snake_derivative, snake, z),
        "phi''": autodiff_gap(snake_second_derivative, snake_derivative, z),
    }
    for name, gap in gaps.items():
        print(f"  max |{name} closed form - autodiff| on [-6, 6]: {gap:.2e}")
    penalties = [float(to_numpy(m.dreg_penalty(x))) for m in (model, fallback)]
    print(
        f"  DREG penalty of the model: closed form {penalties[0]:.6f}, "
        f"autodiff fallback {penalties[1]:.6f}"
    )
    if max(gaps.values()) > TOLERANCE or not np.isclose(
        *penalties, rtol=TOLERANCE
    ):
        raise RuntimeError("The closed forms and autodiff disagree.")


def main() -> None:
    args = parse_args()
    data = load_dataset("digits", seed=0)
    base = build_base_model()
    print(f"backend: {keras.backend.backend()}")
    check_closed_form(base, data.x_test)

    model = keras_dreg.wrap(base)
    model.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    model.fit(
        data.x_train,
        data.y_train,
        validation_data=(data.x_test, data.y_test),
        epochs=args.epochs,
        batch_size=64,
        verbose=2,
    )
    accuracy = model.evaluate(data.x_test, data.y_test, verbose=0)[1]
    print(f"test accuracy with snake and DREG: {accuracy:.4f}")


if __name__ == "__main__":
    main()
