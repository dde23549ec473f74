"""Step time of baseline and DREG on 1 and 2 devices, JAX data parallel.

    XLA_FLAGS=--xla_force_host_platform_device_count=2 \\
        KERAS_BACKEND=jax python benchmarks/distributed_scaling.py

On CPU the two "devices" are virtual and share the same cores: the
numbers check that DREG adds no communication or per-device overhead of
its own (its ratio to the baseline should not grow with the device
count), not that two devices are faster. On a machine with two GPUs, drop
`XLA_FLAGS` to measure real scaling. Prints median milliseconds per step
over interleaved repetitions, and each ratio measured in the same run.
"""

import os
import time

os.environ.setdefault("KERAS_BACKEND", "jax")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import keras_dreg  # noqa: E402

BATCH = 256
WARMUP = 5
REPEATS = 40


def build(regularizer, distribution):
    keras.distribution.set_distribution(distribution)
    keras.utils.set_random_seed(0)
    inputs = keras.Input((784,))
    x = inputs
    for _ in range(3):
        x = keras.layers.Dense(512, activation="gelu")(x)
    outputs = keras.layers.Dense(10)(x)
    model = keras_dreg.regularize(keras.Model(inputs, outputs), regularizer)
    model.compile(
        optimizer="adam",
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    return model


def main():
    devices = keras.distribution.list_devices()
    rng = np.random.default_rng(0)
    x = rng.normal(size=(BATCH, 784)).astype("float32")
    y = rng.integers(0, 10, size=(BATCH,))
    configs = {}
    for count in (1, 2):
        if count > len(devices):
            continue
        distribution = (
            keras.distribution.DataParallel(devices=devices[:count])
            if count > 1
            else None
        )
        for regularizer in ("none", "dreg"):
            model = build(regularizer, distribution)
            for _ in range(WARMUP):
                model.train_on_batch(x, y)
            configs[(count, regularizer)] = (model, distribution, [])
    keras.distribution.set_distribution(None)
    for _ in range(REPEATS):
        for model, distribution, times in configs.values():
            keras.distribution.set_distribution(distribution)
            start = time.perf_counter()
            model.train_on_batch(x, y)
            times.append(time.perf_counter() - start)
    keras.distribution.set_distribution(None)
    print(f"backend {keras.backend.backend()}, devices {devices}")
    print("devices  regularizer  ms/step  ratio to none")
    for (count, regularizer), (_, _, times) in configs.items():
        ms = 1000 * float(np.median(times))
        base = 1000 * float(np.median(configs[(count, "none")][2]))
        print(f"{count:7d}  {regularizer:11s}  {ms:7.2f}  {ms / base:6.3f}")


if __name__ == "__main__":
    main()
