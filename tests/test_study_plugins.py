"""Your own model and regularizer in a study, and the `lam` grid.

`tests/study_user_plugins.py` registers a model (`tiny_mlp`) and a
regularizer (`l1_kernels`); the CLI test runs them through `keras-dreg
study run --imports tests.study_user_plugins` in a subprocess on this
session's backend (CI runs it once per backend), with a `lam` grid from
a TOML file, then writes the report with its sensitivity section.
"""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import keras
import pytest

from keras_dreg.study import config as study_config
from keras_dreg.study import load_dataset
from keras_dreg.study import models
from keras_dreg.study import runner
from keras_dreg.study import settings
from keras_dreg.study import stats
from keras_dreg.study.report import write_report
from keras_dreg.study.store import ResultStore

BACKEND = keras.backend.backend()
REPO = Path(__file__).resolve().parents[1]
LAM_GRID = {"l1_kernels": [1e-4, 1e-3], "dreg": [1e-3, 10**-2.5]}


@pytest.fixture
def plugins():
    """Registers the user's model and regularizer; removes them after."""
    import tests.study_user_plugins as module

    yield module
    settings.SETTINGS.pop("l1_kernels", None)
    models._MODELS.pop("tiny_mlp", None)
    sys.modules.pop(module.__name__, None)


def test_registered_model_and_regularizer_build_and_record(plugins):
    data = load_dataset("breast_cancer")
    model = models.build_model(data, "tanh", seed=0, model="tiny_mlp")
    assert model.name == "tiny_mlp"
    assert model.get_layer("hidden").activation is keras.activations.tanh
    setting = settings.SETTINGS["l1_kernels"]
    regularized, optimizer = setting.build(model, 1e-3, lam=1e-2)
    assert isinstance(optimizer, keras.optimizers.Adam)
    assert len(regularized.losses) == 2  # one L1 term per kernel
    record = setting.record(1e-2)
    assert record["factory"] == "tests.study_user_plugins.l1_kernels"
    assert (record["lam"], record["default_lam"]) == (1e-2, 1e-3)
    assert "default_lam" not in setting.record()


def test_registries_reject_taken_names_and_bad_builders(plugins):
    with pytest.raises(ValueError, match="already registered"):
        models.register_model("tiny_mlp", plugins.tiny_mlp)
    with pytest.raises(ValueError, match="is registered"):
        settings.register_regularizer("dreg", plugins.l1_kernels)
    with pytest.raises(ValueError, match="Unknown model"):
        models.build_model(load_dataset("digits"), "relu", model="nope")
    models.register_model("not_a_model", lambda data, activation: "x")
    try:
        with pytest.raises(TypeError, match="not a keras.Model"):
            models.build_model(
                load_dataset("digits"), "relu", model="not_a_model"
            )
    finally:
        models._MODELS.pop("not_a_model")


def test_lam_grid_expands_and_validates(plugins):
    study = study_config.StudyConfig(
        activations=("gelu",),
        regularizers=("none", "l1_kernels", "dreg"),
        datasets=("digits",),
        train_fractions=(1.0,),
        seeds=2,
        epochs=1,
        backend="jax",
        models=("default", "tiny_mlp"),
        lam=LAM_GRID,
    )
    runs = runner.expand_grid(study)
    assert len(runs) == study.num_runs == 2 * 2 * (1 + 2 + 2)
    dreg = {r.options["lam"] for r in runs if r.regularizer == "dreg"}
    assert dreg == {1e-3, 10**-2.5}
    at_default = [
        r for r in runs if r.regularizer == "dreg" and r.options["lam"] > 2e-3
    ]
    plain = study.replace(lam={})
    assert {r.key for r in at_default} <= {
        r.key for r in runner.expand_grid(plain)
    }
    assert len({r.key for r in runs}) == len(runs)
    with pytest.raises(ValueError, match="not among the regularizers"):
        study.replace(lam={"igpen": [1e-2]})
    with pytest.raises(ValueError, match="must be > 0"):
        study.replace(lam={"dreg": [0.0]})
    with pytest.raises(ValueError, match="no lam to set"):
        runner.validate(study.replace(lam={"none": [1e-2]}))


def _write_config(path: Path) -> Path:
    lines = [f"{k} = {v!r}" for k, v in LAM_GRID.items()]
    path.write_text(
        textwrap.dedent(
            """\
            activations = ["gelu"]
            regularizers = ["none", "l1_kernels", "dreg"]
            datasets = ["breast_cancer"]
            train_fractions = [1.0]
            seeds = 2
            epochs = 1
            batch_size = 64
            models = ["tiny_mlp"]

            [lam]
            """
        )
        + "\n".join(lines)
        + "\n"
    )
    return path


def test_cli_runs_user_model_and_regularizer_with_a_lam_grid(tmp_path):
    """`study run --imports ...` in a subprocess, then the report."""
    db = tmp_path / "r.sqlite"
    env = {
        **os.environ,
        "KERAS_BACKEND": BACKEND,
        "PYTHONPATH": os.pathsep.join(
            [str(REPO), os.environ.get("PYTHONPATH", "")]
        ),
    }
    command = [
        sys.executable,
        "-m",
        "keras_dreg.cli",
        "study",
        "run",
        "--config",
        str(_write_config(tmp_path / "study.toml")),
        "--db",
        str(db),
        "--backend",
        BACKEND,
        "--workers",
        "1",
        "--imports",
        "tests.study_user_plugins",
        "--quiet",
    ]
    done = subprocess.run(
        command,
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=840,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "10 runs finished, 0 were already stored, 0 failed" in done.stdout
    with ResultStore(db) as store:
        rows = store.rows()
    assert {r["model"] for r in rows} == {"tiny_mlp"}
    assert {r["backend"] for r in rows} == {BACKEND}
    l1 = [r for r in rows if r["regularizer"] == "l1_kernels"]
    assert sorted({r["options"]["lam"] for r in l1}) == [1e-4, 1e-3]
    assert {r["options"]["factory"] for r in l1} == {
        "tests.study_user_plugins.l1_kernels"
    }
    dreg = [r for r in rows if r["regularizer"] == "dreg"]
    assert all(r["penalty"] > 0 for r in dreg)  # DREG found "hidden"
    assert len(stats.at_study_strength(rows)) == 10 - 2 * 2

    points = stats.sensitivity(rows)
    assert {(p.regularizer, p.lam, p.default) for p in points} == {
        ("l1_kernels", 1e-4, False),
        ("l1_kernels", 1e-3, True),
        ("dreg", 1e-3, False),
        ("dreg", 10**-2.5, True),
    }
    assert all(p.accuracy.n == 2 and p.versus_none.n == 2 for p in points)
    report = write_report(rows, tmp_path / "report")
    text = report.read_text()
    assert "## Sensitivity to lam" in text
    assert "| l1_kernels | 0.0001 |" in text
    assert "| dreg | 0.00316 (study) |" in text
    assert (tmp_path / "report" / "lam_sensitivity.png").stat().st_size > 0


def test_status_names_a_grid_whose_imports_are_missing(tmp_path, capsys):
    from keras_dreg import cli

    db = tmp_path / "r.sqlite"
    study = study_config.preset("quick").replace(
        backend="jax", imports=("no_such_module_16",)
    )
    with ResultStore(db) as store:
        store.record_study(study.to_dict(), study.num_runs)
    assert cli.main(["study", "status", "--db", str(db)]) == 0
    printed = capsys.readouterr().out
    assert "not counted (No module named 'no_such_module_16'" in printed
