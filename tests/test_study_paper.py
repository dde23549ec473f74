"""The committed `paper` study (docs/study/paper/): one code, one backend,
the paper grid, and a report that is exactly what its database says.

Backend-independent: it reads the committed SQLite file and re-runs the
analysis (NumPy, SciPy, Matplotlib), never training.
"""

import shutil
from pathlib import Path

import pytest

from keras_dreg.study.config import preset
from keras_dreg.study.report import write_report
from keras_dreg.study.store import ResultStore

PAPER = Path(__file__).parents[1] / "docs" / "study" / "paper"


@pytest.fixture(scope="module")
def stored(tmp_path_factory):
    """Rows, slices and failures of a copy of the committed database."""
    copy = tmp_path_factory.mktemp("paper") / "results.sqlite"
    shutil.copyfile(PAPER / "results.sqlite", copy)
    with ResultStore(copy) as store:
        return store.rows(), store.slices(), store.failures()


def test_committed_report_regenerates_from_its_database(stored, tmp_path):
    rows, slices, failures = stored
    written = write_report(rows, tmp_path, slices=slices, failures=failures)
    assert written.read_text() == (PAPER / "report.md").read_text()


def test_every_run_is_of_the_paper_grid_one_code_one_backend(stored):
    rows, slices, _ = stored
    grid = preset("paper")
    # The preset, and the command-line flags that changed it (--backend).
    assert {r["preset"] for r in rows} == {"paper + flags backend"}
    assert len({r["key"] for r in rows}) == len(rows) <= grid.num_runs
    assert len({r["code"] for r in rows}) == 1
    (commit,) = {r["git_commit"] for r in rows}
    assert commit and not commit.endswith("+dirty")
    assert {r["backend"] for r in rows} == {"jax"}
    assert {r["activation"] for r in rows} <= set(grid.activations)
    assert {r["regularizer"] for r in rows} <= set(grid.regularizers)
    assert {r["dataset"] for r in rows} <= set(grid.datasets)
    assert {r["train_fraction"] for r in rows} <= set(grid.train_fractions)
    assert {r["seed"] for r in rows} <= set(grid.seeds)
    assert {r["epochs"] for r in rows} == {grid.epochs}
    assert slices, "every slice is recorded (ResultStore.slices)"
    assert {(s["backend"], s["git_commit"]) for s in slices} == {
        ("jax", commit)
    }
