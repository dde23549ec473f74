"""Step time of baseline and DREG on 1 and 2 devices, data parallel.

JAX, `keras.distribution.DataParallel` over 1 and 2 devices:

    XLA_FLAGS=--xla_force_host_platform_device_count=2 \\
        KERAS_BACKEND=jax python benchmarks/distributed_scaling.py

PyTorch, `DistributedDataParallel` over 1 and 2 gloo processes (the
recipe of `examples/distributed/torch_ddp.py`):

    KERAS_BACKEND=torch python benchmarks/distributed_scaling.py

On CPU the two "devices" are virtual (JAX) or processes (torch) that
share the same cores: the numbers check that DREG adds no communication
or per-device overhead of its own (its ratio to the baseline should not
grow with the device count), not that two devices are faster. On a
machine with two GPUs, drop `XLA_FLAGS` to measure real scaling. Prints
median milliseconds per step (of the global batch) over interleaved
repetitions, and each ratio measured in the same run.
"""

import datetime
import gc
import os
import tempfile
import time

os.environ.setdefault("KERAS_BACKEND", "jax")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import keras_dreg  # noqa: E402

BATCH = 256
LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
WARMUP = 5
REPEATS = 40


def build(regularizer):
    keras.utils.set_random_seed(0)
    inputs = keras.Input((784,))
    x = inputs
    for _ in range(3):
        x = keras.layers.Dense(512, activation="gelu")(x)
    outputs = keras.layers.Dense(10)(x)
    model = keras_dreg.regularize(keras.Model(inputs, outputs), regularizer)
    model.compile(
        optimizer="adam",
        loss=LOSS,
    )
    return model


def data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(BATCH, 784)).astype("float32")
    y = rng.integers(0, 10, size=(BATCH,))
    return x, y


def jax_main():
    devices = keras.distribution.list_devices()
    x, y = data()
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
            keras.distribution.set_distribution(distribution)
            model = build(regularizer)
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
    report({key: times for key, (_, _, times) in configs.items()})


def report(times):
    """Prints the median ms/step of each (count, regularizer)."""
    print("devices  regularizer  ms/step  ratio to none")
    for (count, regularizer), values in times.items():
        ms = 1000 * float(np.median(values))
        base = 1000 * float(np.median(times[(count, "none")]))
        print(f"{count:7d}  {regularizer:11s}  {ms:7.2f}  {ms / base:6.3f}")


def torch_worker(rank, world_size, store, out):
    """One DDP process: times interleaved steps, rank 0 saves them."""
    import torch
    import torch.distributed as dist

    torch.set_num_threads(max(1, (os.cpu_count() or 1) // world_size))
    dist.init_process_group(
        "gloo",
        init_method=f"file://{store}",
        rank=rank,
        world_size=world_size,
        timeout=datetime.timedelta(seconds=300),
    )
    times = torch_times(rank, world_size)
    if rank == 0:
        np.savez(out, **times)
    # The DDP wrappers must go before the group: see `process_group` in
    # examples/distributed/torch_ddp.py.
    gc.collect()
    dist.destroy_process_group()


def torch_times(rank, world_size):
    """Seconds per interleaved step of each regularizer, under DDP."""
    import torch

    x, y = data()
    shard = BATCH // world_size
    xb = torch.as_tensor(x[rank * shard : (rank + 1) * shard])
    yb = torch.as_tensor(y[rank * shard : (rank + 1) * shard])
    steps = {}
    for regularizer in ("none", "dreg"):
        model = build(regularizer)
        ddp = torch.nn.parallel.DistributedDataParallel(model)
        optimizer = torch.optim.Adam(model.parameters())
        steps[regularizer] = (model, ddp, optimizer)
    times = {regularizer: [] for regularizer in steps}
    for repeat in range(WARMUP + REPEATS):
        for regularizer, (model, ddp, optimizer) in steps.items():
            start = time.perf_counter()
            torch_step(model, ddp, optimizer, xb, yb)
            if repeat >= WARMUP:
                times[regularizer].append(time.perf_counter() - start)
    return times


def torch_step(model, ddp, optimizer, x, y):
    """One step of the loop in `examples/distributed/torch_ddp.py`."""
    optimizer.zero_grad()
    y_pred = ddp(x, training=True)
    loss = model.compute_loss(x, y, y_pred)
    loss.backward()
    optimizer.step()


def torch_main():
    import torch.multiprocessing as mp

    times = {}
    for count in (1, 2):
        with tempfile.TemporaryDirectory() as tmp:
            out = os.path.join(tmp, "times.npz")
            store = os.path.join(tmp, "store")
            mp.spawn(torch_worker, args=(count, store, out), nprocs=count)
            with np.load(out) as saved:
                for regularizer in saved.files:
                    times[(count, regularizer)] = saved[regularizer]
    print(f"backend torch, DistributedDataParallel, {os.cpu_count()} CPUs")
    report(times)


if __name__ == "__main__":
    if keras.backend.backend() == "torch":
        torch_main()
    else:
        jax_main()
