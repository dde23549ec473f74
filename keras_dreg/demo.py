"""Trains one GELU network with and without DREG and prints both.

`python -m keras_dreg.demo [--epochs N]` uses scikit-learn's bundled
handwritten digits (offline), the same seed and initial weights for both
runs, and the study's fixed strength `lam = 10**-2.5`.
"""

import argparse

import keras
import numpy as np

import keras_dreg


def load_digits(seed: int):
    """Digits as standardized 64-feature vectors, 75/25 split."""
    from sklearn.datasets import load_digits as sklearn_digits
    from sklearn.model_selection import train_test_split

    x, y = sklearn_digits(return_X_y=True)
    x_train, x_test, y_train, y_test = train_test_split(
        x.astype("float32"), y, test_size=0.25, random_state=seed, stratify=y
    )
    mean, std = x_train.mean(0), x_train.std(0) + 1e-6
    return (x_train - mean) / std, y_train, (x_test - mean) / std, y_test


def build(seed: int) -> keras.Model:
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((64,))
    x = keras.layers.Dense(256, activation="gelu")(inputs)
    x = keras.layers.Dense(256, activation="gelu")(x)
    return keras.Model(inputs, keras.layers.Dense(10)(x))


def train(lam: float, data, epochs: int, seed: int) -> dict:
    x_train, y_train, x_test, y_test = data
    model = keras_dreg.wrap(build(seed), lam=lam)
    model.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    model.fit(x_train, y_train, epochs=epochs, batch_size=64, verbose=0)
    rng = np.random.default_rng(seed)
    noisy = x_test + rng.normal(scale=1.0, size=x_test.shape)
    jacobian = keras_dreg.wrap(model.wrapped, lam=1.0).dreg_penalty(x_test)
    return {
        "test accuracy": model.evaluate(x_test, y_test, verbose=0)[1],
        "noisy test accuracy": model.evaluate(noisy, y_test, verbose=0)[1],
        "layer Jacobian norm": float(keras.ops.convert_to_numpy(jacobian)),
    }


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    data = load_digits(args.seed)
    print(f"backend: {keras.backend.backend()}, digits, {args.epochs} epochs")
    results = {
        "no regularization": train(0.0, data, args.epochs, args.seed),
        f"DREG (lam={keras_dreg.DEFAULT_LAM:.4g})": train(
            keras_dreg.DEFAULT_LAM, data, args.epochs, args.seed
        ),
    }
    for name, metrics in results.items():
        line = ", ".join(f"{k} {v:.4f}" for k, v in metrics.items())
        print(f"{name:>24}: {line}")


if __name__ == "__main__":
    main()
