"""Running a long study in slices (`max_hours`) and filling the cores."""

import time

import pytest

from keras_dreg.study import executors
from keras_dreg.study import runner
from keras_dreg.study.config import RunConfig
from keras_dreg.study.config import StudyConfig
from keras_dreg.study.store import ResultStore
from keras_dreg.study.store import RunResult
from tests.conftest import fake_result

STUDY = StudyConfig(
    activations=("gelu", "relu"),
    regularizers=("none", "weight_decay", "dreg"),
    datasets=("digits", "breast_cancer"),
    train_fractions=(1.0,),
    seeds=2,
    epochs=1,
    backend="jax",
    workers=0,
)
RUN_S = 0.25


def slow_train(config: RunConfig) -> RunResult:
    """A stand-in for `train_run` that takes `RUN_S` and says when."""
    start = time.time()
    time.sleep(RUN_S)
    return fake_result(
        config, wall_time=RUN_S, start=str(start), end=str(time.time())
    )


def test_max_hours_stops_after_the_runs_in_flight(tmp_path):
    db = tmp_path / "r.sqlite"
    total = STUDY.num_runs
    first = runner.run_study(
        STUDY, db, train_fn=slow_train, verbose=False, max_hours=1.0 / 3600
    )
    assert 0 < first.finished < total
    assert first.left == total - first.finished
    with ResultStore(db) as store:
        rows = store.rows()
    assert len(rows) == first.finished  # every started run was stored
    assert all(r["accuracy"] == 0.5 and r["finished_at"] for r in rows)
    latest_start = max(float(r["versions"]["start"]) for r in rows)
    earliest = min(float(r["versions"]["start"]) for r in rows)
    assert latest_start - earliest < 1.0 + RUN_S  # none began after it

    rest = runner.run_study(STUDY, db, train_fn=slow_train, verbose=False)
    assert (rest.skipped, rest.finished, rest.left) == (
        first.finished,
        total - first.finished,
        0,
    )
    with ResultStore(db) as store:
        assert len(store.finished_keys()) == total


def test_max_hours_zero_runs_nothing(tmp_path):
    progress = runner.run_study(
        STUDY,
        tmp_path / "r.sqlite",
        train_fn=slow_train,
        verbose=False,
        max_hours=0,
    )
    assert (progress.finished, progress.left) == (0, STUDY.num_runs)
    with pytest.raises(ValueError, match="max_hours"):
        runner.run_study(
            STUDY,
            tmp_path / "r.sqlite",
            train_fn=slow_train,
            verbose=False,
            max_hours=-1,
        )


def test_local_executor_keeps_every_worker_busy_and_pulls_lazily():
    """Two workers get a run each; configs are taken as workers free up.

    (That the two runs in flight also share the cores in time depends on
    the machine's load; `docs/guides/own_data.md` gives the measured
    throughput with 1 and 2 workers.)
    """
    configs = runner.expand_grid(STUDY)[:6]
    pulled = []

    def lazily():
        for config in configs:
            pulled.append(config)
            yield config

    executor = executors.LocalExecutor(workers=2, backend="jax")
    outcomes, in_flight = [], []
    for config, result in executor.map_unordered(slow_train, lazily()):
        assert isinstance(result, RunResult), result
        in_flight.append(len(pulled) - len(outcomes))
        outcomes.append(result)
    assert {o.config.key for o in outcomes} == {c.key for c in configs}
    assert in_flight[0] == 2  # both workers had a run from the start
    assert max(in_flight) == 2  # and never more than one each
