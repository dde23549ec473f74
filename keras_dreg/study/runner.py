"""Runs a study's grid, in worker processes or on Ray, into a SQLite file.

The grid is activations x regularizers x data sets x train fractions x
seeds on one backend (`config.StudyConfig`); regimes are not part of it
but derived in the analysis (`keras_dreg.study.stats`). One run
(`train_run`):

1. loads the data set (seeded; cached per process) and keeps a
   stratified `train_fraction` of its training set (`regimes.subsample`),
2. seeds Python, NumPy and the backend (`keras.utils.set_random_seed`),
3. builds the model (`models.build_model`) and regularizes it
   (`regularizers.regularize`) at the regularizer's default strength,
   never tuned (DREG's is `10**-2.5`),
4. trains with Adam and sparse categorical cross-entropy on logits,
5. scores the clean test set and the corrupted test inputs
   (`regimes.corrupt_test_inputs`), and keeps the last epoch's penalty.

Each finished run is stored at once, in its own transaction
(`store.ResultStore`); running the same grid again skips the runs
already stored, so a study that was killed resumes where it stopped.

Executors: `LocalExecutor` runs a pool of worker processes started with
`spawn`, each with `KERAS_BACKEND` and one-thread settings in its
environment before it imports Keras (one thread per worker makes a
run's numbers independent of the number of workers; JAX workers share
a persistent compilation cache, see `worker_env`); `RayExecutor` does
the same on a Ray cluster (`pip install ray`); with `workers=0` runs
execute in this process, which must already use the study's backend.
"""

import contextlib
import dataclasses
import functools
import importlib
import itertools
import multiprocessing
import os
import platform
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from collections.abc import Iterable
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import keras
import numpy as np

from keras_dreg.regularizers import REGULARIZERS
from keras_dreg.regularizers import regularize
from keras_dreg.study.config import RunConfig
from keras_dreg.study.config import StudyConfig
from keras_dreg.study.datasets import available_datasets
from keras_dreg.study.datasets import load_dataset
from keras_dreg.study.models import ACTIVATIONS
from keras_dreg.study.models import build_model
from keras_dreg.study.regimes import corrupt_test_inputs
from keras_dreg.study.regimes import subsample
from keras_dreg.study.store import ResultStore
from keras_dreg.study.store import RunResult

TrainFn = Callable[[RunConfig], RunResult]
Outcome = tuple[RunConfig, RunResult | BaseException]


def resolve_backend(study: StudyConfig) -> str:
    """The study's backend, or this process's Keras backend if unset.

    Example:

    >>> resolve_backend(preset("quick").replace(backend="torch"))
    'torch'
    """
    return study.backend or keras.config.backend()


def expand_grid(study: StudyConfig) -> list[RunConfig]:
    """Every run of the study, seeds outermost, regularizers innermost.

    In this order the first runs to finish form complete cells (every
    regularizer on one data set, fraction, activation and seed), and a
    study stopped early still holds matched comparisons.

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
        )
        for seed, dataset, fraction, activation, regularizer in (
            itertools.product(
                study.seeds,
                study.datasets,
                study.train_fractions,
                study.activations,
                study.regularizers,
            )
        )
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
        "regularizers": REGULARIZERS,
        "datasets": tuple(available_datasets()),
    }
    for field, names in known.items():
        unknown = [n for n in getattr(study, field) if n not in names]
        if unknown:
            raise ValueError(f"Unknown {field} {unknown}; known: {names}.")


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
    model = regularize(
        build_model(train, config.activation, seed=config.seed),
        config.regularizer,
    )
    model.compile(
        optimizer=keras.optimizers.Adam(config.learning_rate),
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
# Executors.


def worker_env(backend: str) -> dict[str, str]:
    """Environment of a worker: its backend, one compute thread.

    JAX workers also share a persistent compilation cache
    (`JAX_COMPILATION_CACHE_DIR`, default `<tmp>/keras_dreg_jax_cache`):
    runs that differ only in seed or data compile to the same program,
    and reusing it saves seconds per run without changing any number.

    Example:

    >>> worker_env("jax")["KERAS_BACKEND"]
    'jax'
    """
    xla = os.environ.get("XLA_FLAGS", "")
    one_thread = "--xla_cpu_multi_thread_eigen=false"
    env = {
        "KERAS_BACKEND": backend,
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        "OPENBLAS_NUM_THREADS": "1",
        "TF_NUM_INTRAOP_THREADS": "1",
        "TF_NUM_INTEROP_THREADS": "1",
        "TF_CPP_MIN_LOG_LEVEL": os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2"),
        "XLA_FLAGS": f"{xla} {one_thread}".strip(),
    }
    if backend == "jax":
        default = os.path.join(tempfile.gettempdir(), "keras_dreg_jax_cache")
        env.update(
            JAX_COMPILATION_CACHE_DIR=os.environ.get(
                "JAX_COMPILATION_CACHE_DIR", default
            ),
            JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
            JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0",
        )
    return env


def execute(fn: TrainFn, config: RunConfig, imports: Iterable[str]):
    """Runs `fn(config)` in a worker, after importing `imports` once.

    Every executor submits this function; `fn` must be importable by the
    worker (a module-level function).

    Example:

    >>> execute(train_run, run, ["my_project.data"])  # doctest: +SKIP
    """
    _prepare_worker(tuple(imports))
    return fn(config)


@functools.lru_cache(maxsize=None)
def _prepare_worker(imports: tuple[str, ...]) -> None:
    """One compute thread per worker process (the pool fills the cores)."""
    if keras.backend.backend() == "torch":
        import torch

        torch.set_num_threads(1)
    _import_all(imports)


def _import_all(imports: Iterable[str]) -> None:
    for module in imports:
        importlib.import_module(module)


@contextlib.contextmanager
def _environ(values: dict[str, str]) -> Iterator[None]:
    """Temporarily sets environment variables (inherited by children)."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


class InlineExecutor:
    """Runs each run in this process, one after the other.

    This process must already use the study's backend; its thread
    settings are left as they are.
    """

    def __init__(self, imports: Iterable[str] = ()):
        self.imports = tuple(imports)

    def map_unordered(
        self, fn: TrainFn, configs: Iterable[RunConfig]
    ) -> Iterator[Outcome]:
        """Yields `(config, result or exception)` as runs finish."""
        _import_all(self.imports)
        for config in configs:
            try:
                yield config, fn(config)
            except Exception as error:
                yield config, error


class LocalExecutor:
    """A pool of `workers` spawned processes, all on `backend`.

    Each worker is started with `worker_env(backend)` in its environment,
    so it imports Keras on that backend whatever this process uses.

    Example:

    >>> executor = LocalExecutor(workers=2, backend="torch")
    >>> for config, result in executor.map_unordered(train_run, runs):
    ...     print(config.key, result)  # doctest: +SKIP
    """

    def __init__(self, workers: int, backend: str, imports: Iterable[str] = ()):
        self.workers = workers
        self.backend = backend
        self.imports = tuple(imports)

    def map_unordered(
        self, fn: TrainFn, configs: Iterable[RunConfig]
    ) -> Iterator[Outcome]:
        """Yields `(config, result or exception)` as runs finish."""
        configs = list(configs)
        workers = max(1, min(self.workers, len(configs)))
        context = multiprocessing.get_context("spawn")
        # Workers are spawned as tasks are submitted; they inherit the
        # environment set here for the pool's whole life.
        with _environ(worker_env(self.backend)):
            pool = futures.ProcessPoolExecutor(workers, context)
            try:
                pending = {
                    pool.submit(execute, fn, c, self.imports): c
                    for c in configs
                }
                for future in futures.as_completed(pending):
                    config = pending.pop(future)
                    error = future.exception()
                    yield config, future.result() if error is None else error
            finally:
                pool.shutdown(wait=True, cancel_futures=True)


class RayExecutor:
    """Runs on a Ray cluster: one CPU per run, workers on `backend`.

    Needs `pip install ray` (or `pip install keras-dreg[study]`) and
    keras-dreg installed on every node. Joins the cluster at `address`
    (`None`: the running local instance, or a new one that is shut down
    afterwards). `max_in_flight` bounds the runs submitted at once.

    Example:

    >>> executor = RayExecutor(backend="jax", address="auto")
    """

    def __init__(
        self,
        backend: str,
        address: str | None = None,
        imports: Iterable[str] = (),
        max_in_flight: int = 256,
    ):
        self.backend = backend
        self.address = address
        self.imports = tuple(imports)
        self.max_in_flight = max_in_flight

    def map_unordered(
        self, fn: TrainFn, configs: Iterable[RunConfig]
    ) -> Iterator[Outcome]:
        """Yields `(config, result or exception)` as runs finish."""
        ray = _import_ray()
        started = not ray.is_initialized()
        if started:
            local = {} if self.address else {"include_dashboard": False}
            ray.init(address=self.address, **local)
        env = {"env_vars": worker_env(self.backend)}
        remote = ray.remote(num_cpus=1, runtime_env=env)(execute)
        todo = iter(configs)
        pending = {}
        try:
            while True:
                for config in itertools.islice(
                    todo, self.max_in_flight - len(pending)
                ):
                    ref = remote.remote(fn, config, self.imports)
                    pending[ref] = config
                if not pending:
                    break
                [ref], _ = ray.wait(list(pending), num_returns=1)
                yield pending.pop(ref), _ray_result(ray, ref)
        finally:
            for ref in pending:
                ray.cancel(ref)
            if started:
                ray.shutdown()


def _ray_result(ray, ref) -> RunResult | BaseException:
    try:
        return ray.get(ref)
    except Exception as error:
        return error


def _import_ray():
    try:
        import ray
    except ModuleNotFoundError as error:
        raise ModuleNotFoundError(
            "The Ray executor needs Ray: `pip install keras-dreg[study]` or "
            "`pip install ray`."
        ) from error
    return ray


def make_executor(study: StudyConfig):
    """The executor `study` asks for (`executor` and `workers`).

    Example:

    >>> make_executor(preset("quick").replace(workers=0))
    <...InlineExecutor object at ...>
    """
    backend = resolve_backend(study)
    if study.executor == "ray":
        return RayExecutor(backend, study.ray_address, study.imports)
    workers = study.workers
    if workers is None:
        workers = os.cpu_count() or 1
    if workers == 0:
        return InlineExecutor(study.imports)
    return LocalExecutor(workers, backend, study.imports)


# --------------------------------------------------------------------------
# The study.


@dataclasses.dataclass
class StudyProgress:
    """What `run_study` did: totals and the runs that failed."""

    total: int
    skipped: int
    finished: int = 0
    failed: list[tuple[RunConfig, str]] = dataclasses.field(
        default_factory=list
    )


def run_study(
    study: StudyConfig,
    db: str | Path,
    executor=None,
    train_fn: TrainFn = train_run,
    verbose: bool = True,
) -> StudyProgress:
    """Runs every run of `study` not yet in the database `db`.

    Each result is stored as soon as its run finishes. A failed run is
    reported (and left out, so the next call retries it); the others go
    on. Shows a progress bar with an ETA when `verbose`.

    Args:
        study: The grid and how to execute it.
        db: Path of the SQLite file (created if missing).
        executor: An executor (`LocalExecutor`, `RayExecutor`,
            `InlineExecutor`); default: `make_executor(study)`.
        train_fn: The function that performs one run; it must be
            importable by the workers (a module-level function).
        verbose: Print a progress bar and failures.

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
        for config, outcome in executor.map_unordered(train_fn, todo):
            _record(store, progress, config, outcome, verbose)
            bar.update(progress.finished + len(progress.failed))
    return progress


def _record(
    store: ResultStore,
    progress: StudyProgress,
    config: RunConfig,
    outcome: RunResult | BaseException,
    verbose: bool,
) -> None:
    if isinstance(outcome, BaseException):
        message = "".join(traceback.format_exception_only(outcome)).strip()
        progress.failed.append((config, message))
        if verbose:
            print(f"\nrun failed: {config}\n  {message}", file=sys.stderr)
    else:
        store.add(outcome)
        progress.finished += 1
