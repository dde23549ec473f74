"""DREG under JAX data and model parallelism (`keras.distribution`).

Run on CPU with two virtual devices (correctness, not speed):

    XLA_FLAGS=--xla_force_host_platform_device_count=2 \\
        KERAS_BACKEND=jax python examples/distributed/jax_data_parallel.py

On a multi-GPU machine drop `XLA_FLAGS`. Nothing changes in the model:
`keras.distribution.set_distribution` shards the batch (`DataParallel`)
or the kernels (`ModelParallel`), and the penalty, a batch mean computed
from the same forward pass, is sharded with them.
"""

import os

os.environ.setdefault("KERAS_BACKEND", "jax")

import common  # noqa: E402
import keras  # noqa: E402


def train(regularizer, distribution, steps):
    keras.distribution.set_distribution(distribution)
    model = common.compile_model(common.build(regularizer))
    x, y = common.data(steps)
    history = model.fit(x, y, batch_size=16, shuffle=False, verbose=0)
    keras.distribution.set_distribution(None)
    return {
        "loss": [history.history["loss"]],
        "penalty": [history.history[f"{regularizer}_penalty"]],
        "weights": model.get_weights(),
    }


def model_parallel(devices):
    """A (batch=1, model=2) mesh sharding both hidden kernels."""
    mesh = keras.distribution.DeviceMesh((1, 2), ["batch", "model"], devices)
    layout_map = keras.distribution.LayoutMap(mesh)
    layout_map["hidden_1/kernel"] = (None, "model")
    layout_map["hidden_2/kernel"] = ("model", None)
    return keras.distribution.ModelParallel(
        layout_map=layout_map, batch_dim_name="batch"
    )


def main():
    args = common.parse_args(__doc__.splitlines()[0])
    devices = keras.distribution.list_devices()
    if len(devices) < 2:
        raise SystemExit(
            "Needs two devices; on CPU set "
            "XLA_FLAGS=--xla_force_host_platform_device_count=2."
        )
    reports = []
    for regularizer in args.regularizers.split(","):
        single = train(regularizer, None, args.steps)
        for distribution in (
            keras.distribution.DataParallel(devices=devices[:2]),
            model_parallel(devices[:2]),
        ):
            parallel = train(regularizer, distribution, args.steps)
            name = f"{regularizer}/{type(distribution).__name__}"
            reports.append(common.compare(name, single, parallel))
    common.finish(reports, args.check)


if __name__ == "__main__":
    main()
