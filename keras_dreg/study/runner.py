"""Runs a study's grid, in worker processes or on Ray, into a SQLite file.

The grid is activations x regularizers x data sets x train fractions x
seeds on one backend (`config.StudyConfig`); regimes are not part of it
but derived in the analysis (`keras_dreg.study.stats`). One run
(`train_run`):

1. loads the data set (seeded; cached per process) and keeps a
   stratified `train_fraction` of its training set (`regimes.subsample`),
2. seeds Python, NumPy and the backend (`keras.utils.set_random_seed`),
3. builds the model (`models.build_model`: the study's own network or
   one given to `models.register_model`) and regularizes it as
   `settings.SETTINGS` says (its fixed strength, never tuned; DREG's is
   `10**-2.5`; a `lam` grid runs other strengths), recorded in the
   run's `options` and key,
4. trains with Adam (AdamW for `weight_decay_adamw`) and sparse
   categorical cross-entropy on logits,
5. scores the clean test set and the corrupted test inputs
   (`regimes.corrupt_test_inputs`), and keeps the last epoch's penalty.

Each finished run is stored at once, in its own transaction
(`store.ResultStore`); running the same grid again skips the runs
already stored, so a study that was killed resumes where it stopped.
With `max_hours`, no run starts after that much time; the runs in
flight finish and are stored, and the same call later goes on from
there, so a long study can be run in slices.

Executors (`keras_dreg.study.executors`) run the grid in this process,
a pool of worker processes or on Ray.
"""

import dataclasses
import functools
import importlib
import itertools
import platform
import sys
import time
import traceback
from collections.abc import Iterator
from pathlib import Path

import keras
import numpy as np

from keras_dreg.study import provenance
from keras_dreg.study.config import RunConfig
from keras_dreg.study.config import StudyConfig
from keras_dreg.study.datasets import available_datasets
from keras_dreg.study.datasets import load_dataset
from keras_dreg.study.executors import TrainFn
from keras_dreg.study.executors import make_executor
from keras_dreg.study.executors import resolve_backend
from keras_dreg.study.models import ACTIVATIONS
from keras_dreg.study.models import available_models
from keras_dreg.study.models import build_model
from keras_dreg.study.regimes import corrupt_test_inputs
from keras_dreg.study.regimes import subsample
from keras_dreg.study.settings import SETTINGS
from keras_dreg.study.store import ResultStore
from keras_dreg.study.store import RunResult
from keras_dreg.study.store import now


def expand_grid(study: StudyConfig) -> list[RunConfig]:
    """Every run of the study, seeds outermost, regularizers innermost.

    In this order the first runs to finish form complete cells (every
    regularizer, at each strength of its `lam` grid, on one data set,
    fraction, model, activation and seed), and a study stopped early
    still holds matched comparisons. Regularizers must be known here
    (`validate` imports `study.imports` first).

    Example:

    >>> runs = expand_grid(preset("quick").replace(backend="jax"))
    >>> len(runs) == preset("quick").num_runs
    True
    """
    backend = resolve_backend(study)
    return [
        RunConfig(
            activation=activation,
            regularizer=regularizer,
            dataset=dataset,
            train_fraction=fraction,
            seed=seed,
            epochs=study.epochs,
            batch_size=study.batch_size,
            learning_rate=study.learning_rate,
            backend=backend,
            options=SETTINGS[regularizer].record(lam),
            model=model,
        )
        for seed, dataset, fraction, model, activation, regularizer in (
            itertools.product(
                study.seeds,
                study.datasets,
                study.train_fractions,
                study.models,
                study.activations,
                study.regularizers,
            )
        )
        for lam in study.lam.get(regularizer, (None,))
    ]


def validate(study: StudyConfig) -> None:
    """Imports `study.imports` and checks every name in the grid.

    Example:

    >>> validate(preset("quick").replace(datasets=("nope",)))
    Traceback (most recent call last):
    ValueError: Unknown datasets ['nope']; known: ...
    """
    for module in study.imports:
        importlib.import_module(module)
    known = {
        "activations": ACTIVATIONS,
        "regularizers": tuple(SETTINGS),
        "datasets": tuple(available_datasets()),
        "models": tuple(available_models()),
    }
    for field, names in known.items():
        unknown = [n for n in getattr(study, field) if n not in names]
        if unknown:
            raise ValueError(f"Unknown {field} {unknown}; known: {names}.")
    for name, lams in study.lam.items():
        for lam in lams:
            SETTINGS[name].strength(lam)


# --------------------------------------------------------------------------
# One run.


def train_run(config: RunConfig) -> RunResult:
    """Trains and scores one run; see the module docstring.

    The process must use `config.backend` as its Keras backend.

    Example:

    >>> run = RunConfig("gelu", "dreg", "digits", 1.0, 0, 5, 64, 1e-3,
    ...                 keras.config.backend())
    >>> train_run(run).accuracy  # doctest: +SKIP
    0.97
    """
    check_backend(config.backend)
    keras.backend.clear_session()
    data, noisy_x_test = _load(config.dataset, config.seed)
    start = time.perf_counter()
    train = subsample(data, config.train_fraction, config.seed)
    keras.utils.set_random_seed(config.seed)
    if config.regularizer not in SETTINGS:
        raise ValueError(
            f"Unknown regularizer {config.regularizer!r}: import the module "
            "that registers it (StudyConfig.imports, --imports)."
        )
    setting = SETTINGS[config.regularizer]
    lam = config.options.get("lam")
    if setting.record(lam) != config.options:
        raise ValueError(
            f"Run {config.key} asks for {config.regularizer!r} with "
            f"{config.options}, but this code trains it with "
            f"{setting.record(lam)}."
        )
    model, optimizer = setting.build(
        build_model(
            train, config.activation, seed=config.seed, model=config.model
        ),
        config.learning_rate,
        lam=lam,
    )
    model.compile(
        optimizer=optimizer,
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    history = model.fit(
        train.x_train,
        train.y_train,
        epochs=config.epochs,
        batch_size=config.batch_size,
        verbose=0,
    ).history
    return RunResult(
        config=config,
        messy=bool(data.messy),
        accuracy=_accuracy(model, data.x_test, data.y_test),
        noisy_accuracy=_accuracy(model, noisy_x_test, data.y_test),
        penalty=_final_penalty(history),
        epochs_run=len(history["loss"]),
        wall_time=time.perf_counter() - start,
        versions=versions(),
        task=data.task,
        git_commit=provenance.git_commit(),
    )


@functools.lru_cache(maxsize=4)
def _load(name: str, seed: int):
    """A data set and its corrupted test inputs, cached per process."""
    data = load_dataset(name, seed=seed)
    return data, corrupt_test_inputs(data, seed)


def _accuracy(model: keras.Model, x, y) -> float:
    logits = model.predict(x, batch_size=512, verbose=0)
    return float(np.mean(np.argmax(logits, axis=-1) == np.asarray(y)))


def _final_penalty(history: dict[str, list[float]]) -> float | None:
    """The last epoch's `<name>_penalty` log, or None if there is none."""
    logs = [k for k in history if k.endswith("_penalty")]
    if not logs:
        return None
    return float(sum(history[k][-1] for k in logs))


def check_backend(backend: str) -> None:
    """Raises if this process's Keras backend is not `backend`.

    Example:

    >>> check_backend(keras.backend.backend())  # passes
    """
    if keras.backend.backend() != backend:
        raise RuntimeError(
            f"This run needs the {backend!r} backend but the process uses "
            f"{keras.backend.backend()!r}: set KERAS_BACKEND={backend} "
            "before Keras is imported, or use worker processes (workers>0)."
        )


def versions() -> dict[str, str]:
    """Versions of Python, NumPy, Keras, keras-dreg and the backend.

    Example:

    >>> sorted(versions())  # on JAX  # doctest: +SKIP
    ['jax', 'keras', 'keras_dreg', 'numpy', 'python']
    """
    import keras_dreg

    backend = keras.backend.backend()
    module = importlib.import_module(backend)
    return {
        "python": platform.python_version(),
        "numpy": np.__version__,
        "keras": keras.__version__,
        "keras_dreg": keras_dreg.__version__,
        backend: module.__version__,
    }


# --------------------------------------------------------------------------
# The study.


@dataclasses.dataclass
class StudyProgress:
    """What `run_study` did: totals, the runs that failed, those left.

    `left` counts the runs not started because `max_hours` ran out.
    """

    total: int
    skipped: int
    finished: int = 0
    failed: list[tuple[RunConfig, str]] = dataclasses.field(
        default_factory=list
    )
    left: int = 0


def run_study(
    study: StudyConfig,
    db: str | Path,
    executor=None,
    train_fn: TrainFn = train_run,
    verbose: bool = True,
    max_hours: float | None = None,
) -> StudyProgress:
    """Runs every run of `study` not yet in the database `db`.

    Each result is stored as soon as its run finishes. A failed run is
    reported and its error stored (`ResultStore.failures`); it has no
    row, so the next call retries it; the others go on. The call itself
    is stored as a slice (`ResultStore.slices`: start, end, machine,
    executor, commit, counts), also when it is interrupted. Shows a
    progress bar with an ETA when `verbose`.

    Args:
        study: The grid and how to execute it.
        db: Path of the SQLite file (created if missing).
        executor: An executor (`LocalExecutor`, `RayExecutor`,
            `InlineExecutor`); default: `make_executor(study)`.
        train_fn: The function that performs one run; it must be
            importable by the workers (a module-level function).
        verbose: Print a progress bar and failures.
        max_hours: Start no run after this many hours; the runs in
            flight finish and are stored (`progress.left` counts the
            rest, which the next call runs). `None`: no limit.

    Example:

    >>> # Skipped: the quick preset trains 288 runs (minutes).
    >>> progress = run_study(preset("quick"), "out.sqlite")  # doctest: +SKIP
    >>> progress.finished, progress.failed  # doctest: +SKIP
    (192, [])
    """
    study = study.replace(backend=resolve_backend(study))
    validate(study)
    runs = expand_grid(study)
    with ResultStore(db) as store:
        store.record_study(study.to_dict(), len(runs))
        done = store.finished_keys()
        todo = [r for r in runs if r.key not in done]
        progress = StudyProgress(total=len(runs), skipped=len(runs) - len(todo))
        if verbose:
            print(
                f"{len(runs)} runs on {study.backend}: {progress.skipped} "
                f"already in {db}, {len(todo)} to run."
            )
        if not todo:
            return progress
        executor = executor or make_executor(study)
        bar = keras.utils.Progbar(
            len(todo), verbose=int(verbose), unit_name="run"
        )
        started_at = now()
        try:
            started = _until(todo, max_hours)
            for config, outcome in executor.map_unordered(train_fn, started):
                _record(store, progress, config, outcome, verbose, study.name)
                bar.update(progress.finished + len(progress.failed))
        finally:
            progress.left = len(todo) - progress.finished - len(progress.failed)
            store.record_slice(
                started_at=started_at,
                ended_at=now(),
                backend=study.backend,
                executor=_describe(executor),
                machine=provenance.machine(),
                git_commit=provenance.git_commit(),
                finished=progress.finished,
                failed=len(progress.failed),
                left_over=progress.left,
            )
        if verbose and progress.left:
            print(f"\nStopped after {max_hours} h: {progress.left} runs left.")
    return progress


def _describe(executor) -> str:
    name = type(executor).__name__
    if getattr(executor, "workers", None):
        return f"{name} ({executor.workers} workers)"
    if getattr(executor, "address", None):
        return f"{name} at {executor.address}"
    return name


def _until(
    configs: list[RunConfig], max_hours: float | None
) -> Iterator[RunConfig]:
    """`configs`, lazily, ending once `max_hours` have passed."""
    if max_hours is None:
        return iter(configs)
    if max_hours < 0:
        raise ValueError(f"max_hours must be >= 0, got {max_hours}.")
    deadline = time.monotonic() + 3600 * max_hours
    return itertools.takewhile(lambda _: time.monotonic() < deadline, configs)


def _record(
    store: ResultStore,
    progress: StudyProgress,
    config: RunConfig,
    outcome: RunResult | BaseException,
    verbose: bool,
    preset: str,
) -> None:
    if isinstance(outcome, BaseException):
        message = "".join(traceback.format_exception_only(outcome)).strip()
        progress.failed.append((config, message))
        store.add_failure(config, message)
        if verbose:
            print(f"\nrun failed: {config}\n  {message}", file=sys.stderr)
    else:
        store.add(outcome, preset=preset)
        progress.finished += 1
