"""Where a study's runs execute: this process, a process pool, or Ray.

Each executor's `map_unordered(fn, configs)` yields `(config, result or
exception)` as runs finish. `LocalExecutor` runs a pool of worker
processes started with `spawn`, each with `KERAS_BACKEND` and one-thread
settings in its environment before it imports Keras (one thread per
worker makes a run's numbers independent of the number of workers; JAX
workers share a persistent compilation cache, see `worker_env`);
`RayExecutor` does the same on a Ray cluster (`pip install ray`);
`InlineExecutor` (`workers=0`) runs in this process, which must already
use the study's backend.
"""

import contextlib
import functools
import importlib
import itertools
import multiprocessing
import os
import tempfile
from collections.abc import Callable
from collections.abc import Iterable
from collections.abc import Iterator
from concurrent import futures

import keras

from keras_dreg.study.config import RunConfig
from keras_dreg.study.config import StudyConfig
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
        """Yields `(config, result or exception)` as runs finish.

        Keeps one run per worker in flight and takes the next config
        from `configs` only when a worker is free, so a lazy `configs`
        (such as `run_study`'s, which ends at `max_hours`) decides when
        the pool stops taking work.
        """
        todo = iter(configs)
        context = multiprocessing.get_context("spawn")
        # Workers are spawned as tasks are submitted; they inherit the
        # environment set here for the pool's whole life.
        with _environ(worker_env(self.backend)):
            pool = futures.ProcessPoolExecutor(self.workers, context)
            pending = {}
            try:
                while True:
                    for config in itertools.islice(
                        todo, self.workers - len(pending)
                    ):
                        future = pool.submit(execute, fn, config, self.imports)
                        pending[future] = config
                    if not pending:
                        break
                    done, _ = futures.wait(
                        pending, return_when=futures.FIRST_COMPLETED
                    )
                    for future in done:
                        yield pending.pop(future), _outcome(future)
            finally:
                pool.shutdown(wait=True, cancel_futures=True)


def _outcome(future: futures.Future) -> RunResult | BaseException:
    error = future.exception()
    return future.result() if error is None else error


class RayExecutor:
    """Runs on a Ray cluster: one CPU per run, workers on `backend`.

    Needs `pip install ray` (or `pip install keras-dreg[study]`) and
    keras-dreg installed on every node. Joins the cluster at `address`
    (`None`: the running local instance, or a new one that is shut down
    afterwards). `max_in_flight` bounds the runs submitted at once
    (default: the cluster's CPUs, so every submitted run is running and
    a lazy `configs` that ends, as at `run_study`'s `max_hours`, stops
    the study after the runs in flight).

    Example:

    >>> executor = RayExecutor(backend="jax", address="auto")
    """

    def __init__(
        self,
        backend: str,
        address: str | None = None,
        imports: Iterable[str] = (),
        max_in_flight: int | None = None,
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
        in_flight = self.max_in_flight or max(
            1, int(ray.cluster_resources().get("CPU", 1))
        )
        env = {"env_vars": worker_env(self.backend)}
        remote = ray.remote(num_cpus=1, runtime_env=env)(execute)
        todo = iter(configs)
        pending = {}
        try:
            while True:
                for config in itertools.islice(todo, in_flight - len(pending)):
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
