"""Train-step time of each regularizer, as a ratio to "none".

Run one backend per process:

    KERAS_BACKEND=jax python benchmarks/step_time.py
    benchmarks/run_all.sh          # the three backends in turn

For each model (a 3x512 GELU MLP on 784 inputs and a small GELU CNN on
28x28x1, 10 classes, batch 128) it builds the six regularized models of
`keras_dreg.REGULARIZERS` from the same weights, compiles them alike
(Keras's default `jit_compile`: XLA on JAX, and on TensorFlow only with
a GPU; `--jit-compile true` asks for it), and times `train_on_batch` on
a fixed batch. The regularizers take turns step by step (round-robin), so a slow
spell of the machine hits all of them; each one's time is the median
over `--steps` steps after `--warmup` steps (compilation). It prints
ms/step and the ratio to "none" measured in the same run, and beside
them each row's peak memory per step and its ratio to "none"'s.

"step MiB" is `peak_memory.step_memory`: the peak bytes a step needs
beyond the weights, the optimizer's state and the batch (activations
kept for the backward pass, gradients, temporaries), from XLA's
compiled memory analysis on JAX, torch's profiler (CPU) or allocator
statistics (CUDA), and TensorFlow's allocator statistics on a GPU; "n/a"
where the backend cannot measure (TensorFlow on a CPU), with the reason
under the table. It is measured once per row after the timed steps,
which it therefore cannot disturb.

Besides the six regularizers, `--variants` adds rows of DREG with one
option changed (`VARIANTS`): `stop_gradient_derivative=True`,
`every_n_steps=4`, `sample_size` a quarter of the batch, and
`dreg_reference`, exact DREG with the backend's fast paths turned off
(`keras_dreg.backend.fast_paths(False)`: the `keras.ops` reference; on
JAX and TensorFlow, which have none, and under `torch.compile`, which
does not use them, the same as `dreg`).

Under `torch.compile`, time three models per process (`"none"` and
two rows, chosen with `--regularizers` and `--variants`): all models of
a family share Keras's step functions, which TorchDynamo compiles anew
for each model, a DREG model more than once, and only 8 times in all;
later models run (partly) uncompiled. Leave `spectral_norm` and
`dreg_every_4` out there: with many models in one process TorchDynamo
recompiled their `keras.ops.cond` at every step. (Timing the rows in
smaller families, with `clear_session` between them, or raising the
limit, made Inductor fail on the CNN with `cannot determine truth value
of Relational`, torch 2.13.) See docs/benchmarks.md.

A row whose first step raises `ValueError` (the input-gradient and
Jacobian penalties under `torch.compile`) is left out and named with
the error under the table.

`--json PATH` also writes the medians and the step memory (bytes);
`benchmarks/columns.py` uses it to put the five configurations users
run side by side.

`--clock cpu` measures the process's CPU time instead of wall time:
on a shared, busy machine, with one thread per backend
(`THREADS=1 benchmarks/run_all.sh --clock cpu`), it counts the work of
the step and not the waits for a core.
"""

import argparse
import contextlib
import datetime
import json
import os
import platform
import statistics
import time

import keras
import numpy as np
import peak_memory  # benchmarks/peak_memory.py, beside this script

import keras_dreg
from keras_dreg import backend

CLASSES = 10
CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}
JIT_COMPILE = {"auto": "auto", "true": True, "false": False}


def mlp() -> keras.Model:
    """3 x 512 GELU layers on 784 inputs."""
    inputs = keras.Input((784,))
    x = inputs
    for _ in range(3):
        x = keras.layers.Dense(512, activation="gelu")(x)
    return keras.Model(inputs, keras.layers.Dense(CLASSES)(x), name="mlp")


def cnn() -> keras.Model:
    """Two GELU convolutions (32 and 64 filters) on 28x28x1, then Dense."""
    inputs = keras.Input((28, 28, 1))
    x = keras.layers.Conv2D(32, 3, activation="gelu")(inputs)
    x = keras.layers.MaxPooling2D()(x)
    x = keras.layers.Conv2D(64, 3, activation="gelu")(x)
    x = keras.layers.MaxPooling2D()(x)
    x = keras.layers.Flatten()(x)
    return keras.Model(inputs, keras.layers.Dense(CLASSES)(x), name="cnn")


MODELS = {"mlp": mlp, "cnn": cnn}

VARIANTS = {
    "dreg_stop_gradient": {"stop_gradient_derivative": True},
    "dreg_every_4": {"every_n_steps": 4},
    "dreg_sample_quarter": {"sample_size": "quarter"},
    "dreg_reference": {},
}
"""DREG rows with one option changed; `"quarter"` is a quarter of the
batch, and `dreg_reference` runs without the backend's fast paths."""


def dreg_options(name: str, batch_size: int) -> dict:
    """`keras_dreg.wrap` options of DREG row `name`."""
    options = dict(VARIANTS.get(name, {}))
    if options.get("sample_size") == "quarter":
        options["sample_size"] = max(1, batch_size // 4)
    return options


def regularized_models(
    build, names, jit_compile="auto", batch_size=128
) -> dict:
    """One compiled model per row (regularizer or DREG variant), all from
    the same weights."""
    # Frees the previous family's models; on PyTorch this also resets
    # `torch.compile`'s cache, which recompiles each shared step function
    # for a new model only up to a limit (8), then runs it uncompiled
    # (see the module's docstring).
    keras.backend.clear_session()
    keras.utils.set_random_seed(0)
    weights = build().get_weights()
    models = {}
    for name in names:
        base = build()
        base.set_weights(weights)
        if name in VARIANTS:
            options = dreg_options(name, batch_size)
            model = keras_dreg.regularize(base, "dreg", **options)
        else:
            model = keras_dreg.regularize(base, name)
        model.compile(
            optimizer=keras.optimizers.SGD(1e-3),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            jit_compile=jit_compile,
        )
        models[name] = model
    return models


def drop_unsupported(models: dict, x, y) -> dict:
    """`{name: error}` of the rows that cannot train in this
    configuration (e.g. double backpropagation under `torch.compile`),
    each removed from `models` after one step that raised `ValueError`;
    the other rows take that first step as warm-up."""
    skipped = {}
    for name, model in list(models.items()):
        try:
            model.train_on_batch(x, y)
        except ValueError as error:
            skipped[name] = str(error).split(";")[0]
            del models[name]
    return skipped


def time_steps(
    models: dict, x, y, steps: int, warmup: int, clock=time.perf_counter
) -> dict:
    """Median seconds per `train_on_batch`, regularizers in turn."""
    times = {name: [] for name in models}
    for step in range(warmup + steps):
        for name, model in models.items():
            with _row_context(name):
                start = clock()
                model.train_on_batch(x, y)  # numpy: waits for the step
            if step >= warmup:
                times[name].append(clock() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def step_memories(models: dict, x, y) -> dict:
    """Each row's `peak_memory.step_memory` (bytes, or `None` where the
    backend cannot measure), one row after the other."""
    memories = {}
    for name, model in models.items():
        with _row_context(name):
            memories[name] = peak_memory.step_memory(model, x, y)
    return memories


def _row_context(name: str):
    """`dreg_reference`'s steps run without the backend's fast paths."""
    if name == "dreg_reference":
        return backend.fast_paths(False)
    return contextlib.nullcontext()


def table(results: dict, memory: dict) -> str:
    """A Markdown table: model, regularizer, ms/step and its ratio to
    none, MiB per step and its ratio to none ("n/a": not measured)."""
    lines = [
        "| model | regularizer | ms/step | x none | step MiB | x none |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for model_name, medians in results.items():
        memories = memory[model_name]
        for name, seconds in medians.items():
            ratio = seconds / medians["none"]
            mib, mib_ratio = _memory_cells(memories[name], memories["none"])
            lines.append(
                f"| {model_name} | {name} | {1e3 * seconds:.2f} | "
                f"{ratio:.2f} | {mib} | {mib_ratio} |"
            )
    return "\n".join(lines)


def _memory_cells(row: int | None, none: int | None) -> tuple[str, str]:
    """A row's step memory in MiB and its ratio to none's, or "n/a"."""
    if row is None:
        return "n/a", "n/a"
    ratio = f"{row / none:.2f}" if none else "n/a"
    return f"{row / 2**20:.2f}", ratio


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--clock", choices=sorted(CLOCKS), default="wall")
    parser.add_argument(
        "--jit-compile", choices=sorted(JIT_COMPILE), default="auto"
    )
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument(
        "--regularizers", nargs="+", default=list(keras_dreg.REGULARIZERS)
    )
    parser.add_argument(
        "--variants",
        nargs="*",
        default=[],
        choices=sorted(VARIANTS),
        help="DREG rows with one option changed (see VARIANTS)",
    )
    parser.add_argument(
        "--json",
        help="also write the medians (seconds), the step memory (bytes) "
        "and the settings to this file",
    )
    args = parser.parse_args(argv)
    names = ["none"] + [n for n in args.regularizers if n != "none"]
    names += args.variants
    rng = np.random.default_rng(0)
    results, memory, skipped = {}, {}, {}
    for model_name in args.models:
        models = regularized_models(
            MODELS[model_name],
            names,
            JIT_COMPILE[args.jit_compile],
            args.batch_size,
        )
        shape = models["none"].wrapped.input_shape[1:]
        # Backend tensors, as `fit` passes them: a NumPy batch would make
        # `torch.compile` break the graph where Keras converts it.
        x = keras.ops.convert_to_tensor(
            rng.normal(size=(args.batch_size, *shape)).astype("float32")
        )
        y = keras.ops.convert_to_tensor(
            rng.integers(0, CLASSES, size=(args.batch_size,))
        )
        for name, error in drop_unsupported(models, x, y).items():
            skipped[f"{model_name} {name}"] = error
        results[model_name] = time_steps(
            models, x, y, args.steps, args.warmup, CLOCKS[args.clock]
        )
        memory[model_name] = step_memories(models, x, y)
    unmeasured = peak_memory.unmeasured_reason(models["none"])
    settings = (
        f"backend={keras.backend.backend()} "
        f"jit_compile={models['none'].jit_compile} clock={args.clock} "
        f"batch={args.batch_size} steps={args.steps} warmup={args.warmup} "
        f"cpus={os.cpu_count()} load={os.getloadavg()[0]:.1f} "
        f"machine={platform.machine()} date={datetime.date.today()}"
    )
    print(settings)
    print(table(results, memory))
    if unmeasured:
        print(f"step MiB n/a: {unmeasured}")
    for row, error in skipped.items():
        print(f"skipped {row}: {error}")
    if args.json:
        with open(args.json, "w") as file:
            json.dump(
                {
                    "settings": settings,
                    "medians": results,
                    "memory": memory,
                    "memory_unmeasured": unmeasured,
                    "skipped": skipped,
                },
                file,
            )


if __name__ == "__main__":
    main()
