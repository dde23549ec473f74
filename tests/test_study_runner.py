"""Tests of the study runner, its configuration and the `study` CLI.

Tests marked `ONCE` run only when this session's backend is JAX: they
start their own processes (a killed driver, worker pools on JAX and on
PyTorch, a local Ray instance) with the backends they need, so running
them again under each CI backend would only repeat them. The in-process
tests (a real run's determinism, the CLI) run under every backend.
"""

import contextlib
import dataclasses
import hashlib
import io
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import keras
import pytest

from keras_dreg import cli
from keras_dreg.study import config as study_config
from keras_dreg.study import executors
from keras_dreg.study import provenance
from keras_dreg.study import runner
from keras_dreg.study.config import RunConfig
from keras_dreg.study.config import StudyConfig
from keras_dreg.study.store import ResultStore
from keras_dreg.study.store import RunResult
from tests.conftest import TINY_GRID_ARGS
from tests.conftest import fake_result

BACKEND = keras.backend.backend()
ONCE = pytest.mark.skipif(
    BACKEND != "jax",
    reason="starts its own backends' processes; run once, under jax",
)
REPO = Path(__file__).resolve().parents[1]
TINY = dict(
    activations=("gelu",),
    regularizers=("none", "dreg"),
    datasets=("breast_cancer",),
    train_fractions=(0.25,),
    seeds=1,
    epochs=1,
    batch_size=32,
)


def fake_study() -> StudyConfig:
    """A 24-run grid for the fake training function."""
    return StudyConfig(
        activations=("gelu", "relu"),
        regularizers=("none", "weight_decay", "dreg"),
        datasets=("digits", "breast_cancer"),
        train_fractions=(0.5, 1.0),
        seeds=1,
        epochs=1,
        backend="jax",
        workers=0,
    )


def fake_train(config: RunConfig) -> RunResult:
    """A deterministic stand-in for `train_run` (no training)."""
    return fake_result(config, int(config.key[:4], 16) / 0xFFFF, fake="1")


def table(db) -> list[tuple]:
    with sqlite3.connect(db) as conn:
        return conn.execute(
            "SELECT key, accuracy, finished_at FROM runs ORDER BY rowid"
        ).fetchall()


# --------------------------------------------------------------------------
# Configuration and grid.


def test_presets():
    quick = study_config.preset("quick")
    assert set(quick.regularizers) == set(runner_regularizers())
    assert "gelu" in quick.activations and len(quick.activations) >= 2
    paper = study_config.preset("paper")
    assert len(paper.activations) * len(paper.regularizers) == 4 * 6
    assert len(paper.datasets) * len(paper.seeds) == 8 * 5
    assert 1.0 in paper.train_fractions
    full = [r for r in _grid(paper) if r.train_fraction == 1.0]
    assert len(full) == 960
    with pytest.raises(ValueError, match="Unknown preset"):
        study_config.preset("huge")


def runner_regularizers():
    from keras_dreg.regularizers import REGULARIZERS

    return REGULARIZERS


def _grid(study):
    return runner.expand_grid(study.replace(backend="jax"))


def test_expand_grid_order_and_keys():
    study = fake_study()
    runs = runner.expand_grid(study)
    assert len(runs) == study.num_runs == 24
    assert len({r.key for r in runs}) == 24
    # Regularizers innermost: each cell's runs are adjacent.
    assert [r.regularizer for r in runs[:3]] == list(study.regularizers)
    assert {r.backend for r in runs} == {"jax"}
    default = runner.expand_grid(study.replace(backend=None))
    assert {r.backend for r in default} == {BACKEND}


def test_study_config_validates():
    with pytest.raises(ValueError, match="train_fractions"):
        fake_study().replace(train_fractions=(0.0,))
    with pytest.raises(ValueError, match="duplicates"):
        fake_study().replace(datasets=("digits", "digits"))
    with pytest.raises(ValueError, match="backend"):
        fake_study().replace(backend="numpy")
    assert fake_study().replace(seeds=[3, 7]).seeds == (3, 7)
    with pytest.raises(ValueError, match="Unknown datasets"):
        runner.validate(fake_study().replace(datasets=("nope",)))


def test_load_config_precedence(tmp_path):
    path = tmp_path / "study.toml"
    path.write_text(
        'preset = "paper"\nseeds = 2\nepochs = 3\nactivations = ["gelu"]\n'
    )
    study = study_config.load_config(path, epochs=4)
    assert study.seeds == (0, 1)
    assert study.epochs == 4  # the override wins over the file
    assert study.activations == ("gelu",)
    assert study.datasets == study_config.preset("paper").datasets
    quick = study_config.load_config(path, preset_name="quick")
    assert quick.datasets == study_config.preset("quick").datasets
    assert quick.epochs == 3  # the file wins over the preset
    path.write_text("epoch = 3\n")
    with pytest.raises(ValueError, match="Unknown study settings"):
        study_config.load_config(path)


def test_worker_env_and_backend_check():
    env = executors.worker_env("torch")
    assert env["KERAS_BACKEND"] == "torch"
    assert env["OMP_NUM_THREADS"] == "1"
    other = "torch" if BACKEND != "torch" else "jax"
    with pytest.raises(RuntimeError, match=f"KERAS_BACKEND={other}"):
        runner.check_backend(other)


def test_ray_missing_gives_install_hint(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(ModuleNotFoundError, match="pip install"):
        executors._import_ray()


# --------------------------------------------------------------------------
# Running, skipping, failing, resuming (fake training).


def test_rerun_skips_finished_runs(tmp_path):
    db = tmp_path / "r.sqlite"
    first = runner.run_study(fake_study(), db, train_fn=fake_train, verbose=0)
    assert (first.total, first.skipped, first.finished) == (24, 0, 24)
    rows = table(db)
    again = runner.run_study(fake_study(), db, train_fn=fake_train, verbose=0)
    assert (again.skipped, again.finished) == (24, 0)
    assert table(db) == rows
    grown = fake_study().replace(seeds=2)
    more = runner.run_study(grown, db, train_fn=fake_train, verbose=0)
    assert (more.skipped, more.finished) == (24, 24)


def flaky_train(config: RunConfig) -> RunResult:
    """Fails every weight-decay run while the FLAKY variable is set."""
    if os.environ.get("FLAKY") and config.regularizer == "weight_decay":
        raise FloatingPointError("loss is NaN")
    return fake_train(config)


def test_failed_runs_are_reported_and_retried(tmp_path, monkeypatch):
    db = tmp_path / "r.sqlite"
    monkeypatch.setenv("FLAKY", "1")
    progress = runner.run_study(
        fake_study(), db, train_fn=flaky_train, verbose=0
    )
    assert progress.finished == 16 and len(progress.failed) == 8
    assert "loss is NaN" in progress.failed[0][1]
    with ResultStore(db) as store:
        failures = store.failures()
    assert len(failures) == 8
    assert {f["config"]["regularizer"] for f in failures} == {"weight_decay"}
    assert failures[0]["message"] == "FloatingPointError: loss is NaN"
    monkeypatch.delenv("FLAKY")
    retry = runner.run_study(fake_study(), db, train_fn=flaky_train, verbose=0)
    assert (retry.skipped, retry.finished, retry.failed) == (16, 8, [])
    assert len(table(db)) == 24
    with ResultStore(db) as store:
        assert store.failures() == []
        slices = store.slices()
    assert [(s["finished"], s["failed"], s["left_over"]) for s in slices] == [
        (16, 8, 0),
        (8, 0, 0),
    ]
    assert slices[0]["executor"] == "InlineExecutor"
    assert slices[0]["machine"] == provenance.machine()
    assert slices[0]["started_at"] <= slices[0]["ended_at"]


_KILLED_DRIVER = """
import sys, time
from tests.test_study_runner import fake_study, fake_train
from keras_dreg.study.executors import InlineExecutor
from keras_dreg.study.runner import run_study

def slow_train(config):
    time.sleep(0.1)
    return fake_train(config)

run_study(fake_study(), sys.argv[1], InlineExecutor(), slow_train, False)
"""


@ONCE
def test_resume_after_kill(tmp_path):
    """SIGKILL a driver mid-study; rerun; nothing is lost or duplicated."""
    db = tmp_path / "r.sqlite"
    driver = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(_KILLED_DRIVER), str(db)],
        cwd=REPO,
        env={**os.environ, "KERAS_BACKEND": "jax"},
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and driver.poll() is None:
        if db.exists() and len(table(db)) >= 5:
            break
        time.sleep(0.05)
    os.kill(driver.pid, signal.SIGKILL)
    driver.wait()
    before = table(db)
    assert 5 <= len(before) < 24
    progress = runner.run_study(
        fake_study(), db, train_fn=fake_train, verbose=0
    )
    assert progress.skipped == len(before)
    after = table(db)
    assert after[: len(before)] == before  # finished runs untouched
    keys = [row[0] for row in after]
    assert len(keys) == len(set(keys)) == 24
    assert set(keys) == {r.key for r in runner.expand_grid(fake_study())}


# --------------------------------------------------------------------------
# Real training.


@pytest.fixture(scope="module")
def cli_study(tmp_path_factory):
    """A tiny real study run in-process by the CLI: (db, printed text)."""
    db = str(tmp_path_factory.mktemp("cli") / "r.sqlite")
    argv = [
        "study",
        "run",
        "--db",
        db,
        "--workers",
        "0",
        "--backend",
        BACKEND,
        *TINY_GRID_ARGS,
        "--epochs",
        "2",
        "--quiet",
    ]
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        codes = [cli.main(argv), cli.main(argv)]
        codes.append(cli.main(["study", "status", "--db", db]))
    assert codes == [0, 0, 0]
    return db, printed.getvalue()


def test_cli_run_resume_and_status(cli_study):
    db, printed = cli_study
    assert "2 runs finished, 0 were already stored" in printed
    assert "0 runs finished, 2 were already stored" in printed
    assert f"2 runs stored ({BACKEND}: 2)" in printed
    assert "2/2 done" in printed
    with ResultStore(db) as store:
        rows = {r["regularizer"]: r for r in store.rows()}
    assert rows["none"]["penalty"] is None
    assert rows["dreg"]["penalty"] > 0
    assert rows["dreg"]["epochs_run"] == 2
    assert 0.0 <= rows["dreg"]["noisy_accuracy"] <= 1.0
    assert rows["dreg"]["versions"]["keras"] == keras.__version__
    assert BACKEND in rows["dreg"]["versions"]


def test_status_counts_the_runs_of_other_code(tmp_path, capsys):
    """A study made at another commit (another code identity) is counted
    as such, with the commit to continue it at."""
    db = tmp_path / "r.sqlite"
    study = fake_study()
    with ResultStore(db) as store:
        store.record_study(study.to_dict(), study.num_runs)
        for run in runner.expand_grid(study)[:5]:
            old = dataclasses.replace(run, code="keras_dreg 0.0.9 src old")
            result = dataclasses.replace(fake_train(old), git_commit="abc")
            store.add(result)
    assert cli.main(["study", "status", "--db", str(db)]) == 0
    printed = capsys.readouterr().out
    assert "0/24 done (0%) with this code" in printed
    assert (
        "5/24 done by other code (keras_dreg 0.0.9 src old; commit abc)"
        in printed
    )


def test_cli_needs_an_existing_database(tmp_path, capsys):
    db = str(tmp_path / "missing.sqlite")
    assert cli.main(["study", "status", "--db", db]) == 2
    assert cli.main(["study", "report", "--db", db, "--out", db]) == 2
    assert "No results file" in capsys.readouterr().err
    assert not (tmp_path / "missing.sqlite").exists()


def test_train_run_is_deterministic(cli_study):
    """Training the stored DREG run again gives the same numbers."""
    db, _ = cli_study
    with ResultStore(db) as store:
        [row] = [r for r in store.rows() if r["regularizer"] == "dreg"]
    config = RunConfig(
        **{f.name: row[f.name] for f in dataclasses.fields(RunConfig)}
    )
    assert config.key == row["key"]
    result = runner.train_run(config)
    assert result.accuracy == row["accuracy"]
    assert result.noisy_accuracy == row["noisy_accuracy"]
    assert result.penalty == pytest.approx(row["penalty"], rel=1e-6)


@ONCE
def test_local_executor_on_two_backends(tmp_path):
    """A tiny real grid, in worker pools on JAX and on PyTorch."""
    db = tmp_path / "r.sqlite"
    for backend in ("jax", "torch"):
        study = StudyConfig(**TINY, backend=backend, workers=1)
        progress = runner.run_study(study, db, verbose=False)
        assert (progress.finished, progress.failed) == (2, [])
    with ResultStore(db) as store:
        rows = store.rows()
    assert sorted((r["backend"], r["regularizer"]) for r in rows) == [
        ("jax", "dreg"),
        ("jax", "none"),
        ("torch", "dreg"),
        ("torch", "none"),
    ]
    for row in rows:
        assert row["backend"] in row["versions"]
        assert (row["penalty"] is None) == (row["regularizer"] == "none")
    again = runner.run_study(
        StudyConfig(**TINY, backend="torch", workers=1), db, verbose=False
    )
    assert (again.skipped, again.finished) == (2, 0)


@ONCE
@pytest.mark.filterwarnings("ignore:os.fork:RuntimeWarning")
def test_ray_executor_on_local_instance(tmp_path):
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        study = StudyConfig(**TINY, backend="jax", executor="ray")
        study = study.replace(regularizers=("dreg",))
        progress = runner.run_study(study, tmp_path / "r.sqlite", verbose=0)
    finally:
        ray.shutdown()
    assert (progress.finished, progress.failed) == (1, [])
    with ResultStore(tmp_path / "r.sqlite") as store:
        assert {r["backend"] for r in store.rows()} == {"jax"}


def test_run_key_is_content_hash():
    run = runner.expand_grid(fake_study())[0]
    code = provenance.code_identity("jax")
    text = (
        '{"activation": "gelu", "backend": "jax", "batch_size": 64, '
        f'"code": "{code}", '
        '"dataset": "digits", "epochs": 1, "learning_rate": 0.001, '
        '"model": "default", "options": {"lam": null, "optimizer": "adam", '
        '"regularizer": "none", "weight_decay": null}, '
        '"regularizer": "none", "seed": 0, "train_fraction": 0.5}'
    )
    assert run.key == hashlib.sha256(text.encode()).hexdigest()[:32]


def test_key_changes_with_lam_options_and_code():
    run = runner.expand_grid(fake_study())[0]
    keys = {
        run.key,
        dataclasses.replace(run, options={**run.options, "lam": 1.0}).key,
        dataclasses.replace(run, code=run.code + " changed").key,
        dataclasses.replace(run, regularizer="weight_decay_adamw").key,
    }
    assert len(keys) == 4


def test_ablations_record_their_settings():
    unit = RunConfig(
        "gelu", "dreg_unit_slope", "digits", 1, 0, 1, 8, 1e-3, "jax"
    )
    adamw = RunConfig(
        "gelu", "weight_decay_adamw", "digits", 1, 0, 1, 8, 1e-3, "jax"
    )
    assert unit.options["unit_slope"] and unit.options["lam"] == 10**-2.5
    assert (adamw.options["optimizer"], adamw.options["weight_decay"]) == (
        "adamw",
        5e-4,
    )


def test_a_run_whose_options_this_code_does_not_train_raises():
    run = RunConfig(
        "gelu",
        "dreg",
        "digits",
        1,
        0,
        1,
        8,
        1e-3,
        keras.backend.backend(),
        options={"regularizer": "dreg", "lam": 0.5},
    )
    with pytest.raises(ValueError, match="this code trains it with"):
        runner.train_run(run)


def test_inline_executor_keeps_this_process_thread_count():
    # Worker processes run single-threaded (torch); running inline must not
    # change the caller's setting, e.g. a notebook's.
    if keras.backend.backend() != "torch":
        pytest.skip("only the torch backend limits a worker's threads")
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(3)
    try:
        outcomes = list(executors.InlineExecutor().map_unordered(str, [1, 2]))
        assert outcomes == [(1, "1"), (2, "2")]
        assert torch.get_num_threads() == 3
    finally:
        torch.set_num_threads(before)
