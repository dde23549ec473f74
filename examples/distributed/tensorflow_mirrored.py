"""DREG under `tf.distribute.MirroredStrategy`.

Run on CPU with two logical devices (correctness, not speed):

    KERAS_BACKEND=tensorflow \\
        python examples/distributed/tensorflow_mirrored.py

On a multi-GPU machine use `MirroredStrategy()` over the GPUs. Build and
compile the model inside `strategy.scope()`. Keras divides each replica's
loss by the number of replicas before summing gradients; the penalties
are divided the same way, and each replica records its own forward pass.
"""

import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import tensorflow as tf  # noqa: E402

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(
    cpu, [tf.config.LogicalDeviceConfiguration()] * 2
)

import common  # noqa: E402


def train(regularizer, strategy, steps):
    with strategy.scope():
        model = common.compile_model(common.build(regularizer))
    x, y = common.data(steps)
    history = model.fit(x, y, batch_size=16, shuffle=False, verbose=0)
    return {
        "loss": [history.history["loss"]],
        "penalty": [history.history[f"{regularizer}_penalty"]],
        "weights": model.get_weights(),
    }


def main():
    args = common.parse_args(__doc__.splitlines()[0])
    mirrored = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    reports = []
    for regularizer in args.regularizers.split(","):
        single = train(regularizer, tf.distribute.get_strategy(), args.steps)
        parallel = train(regularizer, mirrored, args.steps)
        reports.append(common.compare(regularizer, single, parallel))
    common.finish(reports, args.check)


if __name__ == "__main__":
    main()
