"""Tests of the study's SQLite store and run keys (backend-independent)."""

import dataclasses

import pytest

from keras_dreg.study.config import RunConfig
from keras_dreg.study.store import ResultStore
from keras_dreg.study.store import RunResult


def make_run(**changes) -> RunConfig:
    fields = dict(
        activation="gelu",
        regularizer="dreg",
        dataset="digits",
        train_fraction=1.0,
        seed=0,
        epochs=3,
        batch_size=64,
        learning_rate=1e-3,
        backend="jax",
    )
    return RunConfig(**{**fields, **changes})


def make_result(config: RunConfig, accuracy: float = 0.9, **changes):
    fields = dict(
        config=config,
        messy=False,
        accuracy=accuracy,
        noisy_accuracy=accuracy - 0.1,
        penalty=0.25,
        epochs_run=config.epochs,
        wall_time=1.5,
        versions={"keras": "3", "jax": "0.1"},
    )
    return RunResult(**{**fields, **changes})


def test_key_is_stable_and_covers_every_field():
    run = make_run()
    assert run.key == make_run().key
    # Numbers are normalized: 1 and 1.0 give the same run.
    assert make_run(train_fraction=1).key == run.key
    keys = {run.key}
    changed = {"regularizer": "dreg_unit_slope"}
    for field in dataclasses.fields(RunConfig):
        value = getattr(run, field.name)
        if isinstance(value, dict):
            other = {**value, "lam": 1.0}
        else:
            other = value + 1 if not isinstance(value, str) else value + "x"
        other = changed.get(field.name, other)
        keys.add(make_run(**{field.name: other}).key)
    assert len(keys) == 1 + len(dataclasses.fields(RunConfig))


def test_add_is_insert_or_ignore(tmp_path):
    path = tmp_path / "r.sqlite"
    run = make_run()
    with ResultStore(path) as store:
        assert store.add(make_result(run, accuracy=0.9))
        assert not store.add(make_result(run, accuracy=0.1))
        assert store.finished_keys() == {run.key}
    with ResultStore(path) as store:
        [row] = store.rows()
    assert row["accuracy"] == 0.9  # the first result is kept
    assert row["key"] == run.key


def test_rows_round_trip(tmp_path):
    run = make_run(regularizer="none")
    with ResultStore(tmp_path / "r.sqlite") as store:
        store.add(make_result(run, penalty=None, messy=True))
        [row] = store.rows()
    assert row["penalty"] is None
    assert row["messy"] is True
    assert row["versions"] == {"keras": "3", "jax": "0.1"}
    assert row["finished_at"]
    for field in dataclasses.fields(RunConfig):
        assert row[field.name] == getattr(run, field.name)


def test_rows_keep_insertion_order_and_count_by_backend(tmp_path):
    runs = [make_run(seed=s, backend=b) for s in (3, 1, 2) for b in ("jax",)]
    runs.append(make_run(backend="torch"))
    with ResultStore(tmp_path / "r.sqlite") as store:
        for run in runs:
            store.add(make_result(run))
        assert [r["key"] for r in store.rows()] == [r.key for r in runs]
        assert store.counts_by_backend() == {"jax": 3, "torch": 1}


def test_record_study_once_per_config(tmp_path):
    config = {"backend": "jax", "seeds": [0, 1], "epochs": 2}
    with ResultStore(tmp_path / "r.sqlite") as store:
        store.record_study(config, total=12)
        store.record_study(dict(config), total=12)
        store.record_study({**config, "epochs": 3}, total=12)
        studies = store.studies()
    assert [s["config"]["epochs"] for s in studies] == [2, 3]
    assert studies[0]["total"] == 12


def test_failures_are_kept_until_the_run_finishes(tmp_path):
    failing, other = make_run(seed=1), make_run(seed=2)
    with ResultStore(tmp_path / "r.sqlite") as store:
        store.add_failure(failing, "FloatingPointError: loss is NaN")
        store.add_failure(other, "first error")
        store.add_failure(other, "second error")
        assert [f["message"] for f in store.failures()] == [
            "FloatingPointError: loss is NaN",
            "second error",
        ]
        assert store.failures()[0]["config"]["seed"] == 1
        store.add(make_result(failing))
        assert [f["config"]["seed"] for f in store.failures()] == [2]


SLICE = dict(
    started_at="2026-12-01T10:00:00+00:00",
    ended_at="2026-12-01T11:30:00+00:00",
    backend="jax",
    executor="LocalExecutor (2 workers)",
    machine="Linux x86_64, 2 CPUs (a CPU), Python 3.11.7",
    git_commit="abc",
    finished=10,
    failed=1,
    left_over=5,
)


def test_slices_round_trip_and_need_every_field(tmp_path):
    with ResultStore(tmp_path / "r.sqlite") as store:
        store.record_slice(**SLICE)
        store.record_slice(**{**SLICE, "finished": 3, "left_over": 0})
        assert store.slices() == [
            SLICE,
            {**SLICE, "finished": 3, "left_over": 0},
        ]
        with pytest.raises(ValueError, match="fields"):
            store.record_slice(**{**SLICE, "hostname": "x"})
