"""Tests of the study report and its verdicts on stored rows.

The fixture databases are built in the tests from synthetic rows
(`synthetic_results`): accuracies with planted regularizer effects plus
seeded noise, stored through `ResultStore` exactly as the runner stores
real runs. No model is trained, so these tests are backend-independent.
"""

import dataclasses
import sqlite3

import numpy as np
import pytest

from keras_dreg import REGULARIZERS
from keras_dreg import cli
from keras_dreg.study import report
from keras_dreg.study import store as store_module
from keras_dreg.study import tables
from keras_dreg.study import verdicts as v
from keras_dreg.study.config import RunConfig
from keras_dreg.study.store import ResultStore
from keras_dreg.study.store import RunResult

DATASETS = {"a": False, "a_messy": True, "b": False, "b_messy": True}
# Accuracy effects (fraction 1.0) and noisy-accuracy effects shaped like
# the preprint's findings: DREG first, spectral norm first under noise.
PAPER_LIKE = {
    "none": (-0.02, 0.0),
    "weight_decay": (-0.01, 0.0),
    "igpen": (-0.005, 0.01),
    "jacobian": (0.0, 0.02),
    "spectral_norm": (0.0, 0.06),
    "dreg": (0.02, 0.04),
}
CONTRARY = {reg: (-a, -n) for reg, (a, n) in PAPER_LIKE.items()}


def synthetic_results(
    effects,
    activations=("gelu", "relu"),
    datasets=DATASETS,
    fractions=(0.1, 0.25, 1.0),
    seeds=(0, 1, 2),
):
    """Results whose effects scale as `fraction ** -0.5` (grow as data
    shrink), plus small seeded noise."""
    rng = np.random.default_rng(0)
    results = []
    for activation in activations:
        for dataset, messy in datasets.items():
            for fraction in fractions:
                for seed in seeds:
                    base = 0.8 - 0.1 * messy - 0.1 * (1 - fraction)
                    for reg in REGULARIZERS:
                        acc, noisy = effects[reg]
                        scale = fraction**-0.5
                        jitter = rng.normal(0, 0.004)
                        accuracy = base + acc * scale + jitter
                        config = RunConfig(
                            activation,
                            reg,
                            dataset,
                            fraction,
                            seed,
                            2,
                            32,
                            1e-3,
                            "jax",
                        )
                        results.append(
                            RunResult(
                                config=config,
                                messy=messy,
                                accuracy=accuracy,
                                noisy_accuracy=base - 0.2 + noisy + jitter,
                                penalty=None if reg == "none" else 0.1,
                                epochs_run=2,
                                wall_time=1.0,
                                versions={"keras": "3.x", "jax": "0.x"},
                                task="image",
                                git_commit="abc123",
                            )
                        )
    return results


def database(path, results, preset="quick"):
    with ResultStore(path) as store:
        for result in results:
            store.add(result, preset=preset)
        return store.rows()


def verdicts(rows):
    return {f.name: f.verdict for f in report.assess_findings(rows)}


def test_paper_like_results(tmp_path):
    rows = database(tmp_path / "r.sqlite", synthetic_results(PAPER_LIKE))
    assert verdicts(rows) == {
        "overall": v.REPRODUCED,
        "clean": v.INCONCLUSIVE,  # 4 units: no outcome is significant
        "significance": v.REPRODUCED,
        "noise": v.REPRODUCED,
        "gelu": v.INCONCLUSIVE,  # no NLP data, 2 messy vision units
        "scarcity": v.REPRODUCED,
    }


def test_contrary_results_are_never_reproduced(tmp_path):
    rows = database(tmp_path / "r.sqlite", synthetic_results(CONTRARY))
    found = verdicts(rows)
    assert v.REPRODUCED not in found.values()
    for name in ("overall", "significance", "noise", "scarcity"):
        assert found[name] == v.NOT_REPRODUCED


def test_no_difference_is_inconclusive_with_its_power(tmp_path):
    """Enough units but no real difference: INCONCLUSIVE, not NOT
    REPRODUCED, with the smallest detectable effect stated."""
    flat = {reg: (0.0, 0.0) for reg in REGULARIZERS}
    rows = database(tmp_path / "r.sqlite", synthetic_results(flat))
    finding = {f.name: f for f in report.assess_findings(rows)}["significance"]
    assert finding.verdict == v.INCONCLUSIVE
    assert "Smallest effect detectable" in finding.evidence
    assert 0 < finding.detectable < 0.05


@pytest.mark.parametrize("effects", [PAPER_LIKE, CONTRARY])
def test_no_verdict_contradicts_its_own_p_values(tmp_path, effects):
    rows = database(tmp_path / "r.sqlite", synthetic_results(effects))
    for finding in report.assess_findings(rows):
        holm = [t.p_holm for t in finding.tests]
        if finding.verdict == v.REPRODUCED:
            assert holm and max(holm) <= 0.05
            assert all(t.status == "supports" for t in finding.tests)
        elif finding.verdict == v.NOT_REPRODUCED:
            assert any(
                t.p_holm <= 0.05 and t.status == "contradicts"
                for t in finding.tests
            )
        else:
            assert not any(t.status == "contradicts" for t in finding.tests)


def test_tiny_study_is_inconclusive(tmp_path):
    results = synthetic_results(
        PAPER_LIKE,
        activations=("relu",),
        datasets={"a": False},
        fractions=(1.0,),
        seeds=(0, 1),
    )
    rows = database(tmp_path / "r.sqlite", results)
    found = report.assess_findings(rows)
    assert {f.verdict for f in found} == {v.INCONCLUSIVE}
    evidence = {f.name: f.evidence for f in found}
    assert "n = 1 units" in evidence["overall"]
    assert "no effect of any size" in evidence["overall"]
    assert "GELU" in evidence["gelu"]
    assert "fraction" in evidence["scarcity"]


def test_significance_needs_each_baseline(tmp_path):
    results = [
        r
        for r in synthetic_results(PAPER_LIKE)
        if r.config.regularizer != "igpen"
    ]
    rows = database(tmp_path / "r.sqlite", results)
    assert verdicts(rows)["significance"] == v.INCONCLUSIVE


def test_seeds_are_averaged_into_units(tmp_path):
    rows = database(
        tmp_path / "r.sqlite", synthetic_results(PAPER_LIKE, fractions=(1.0,))
    )
    units = v.unit_scores(rows, "overall", REGULARIZERS)
    assert len(units) == 2 * 4  # activations x data sets, 3 seeds each
    unit = ("gelu", "a", 1.0, 2, 32, 1e-3, "jax", rows[0]["code"], "default")
    expected = np.mean(
        [
            r["accuracy"]
            for r in rows
            if (r["activation"], r["dataset"], r["regularizer"])
            == ("gelu", "a", "dreg")
        ]
    )
    assert units[unit]["dreg"] == pytest.approx(expected)


def test_matched_drops_incomplete_cells(tmp_path):
    results = synthetic_results(PAPER_LIKE, fractions=(1.0,))
    # Drop one run: its cell no longer counts for any regularizer.
    rows = database(tmp_path / "r.sqlite", results[1:])
    selected = tables.matched(rows, "overall")
    cells = {s.cell for s in selected}
    assert len(selected) == 6 * len(cells)
    assert len(cells) == 2 * 4 * 3 - 1


def _unit_mean_difference(db, a, b):
    """Mean over (data set, activation) of the seed-averaged accuracy
    difference at fraction 1.0, straight from the SQLite file."""
    with sqlite3.connect(db) as conn:
        rows = conn.execute(
            "SELECT dataset, activation, regularizer, AVG(accuracy) "
            "FROM runs WHERE train_fraction = 1.0 "
            "GROUP BY dataset, activation, regularizer"
        ).fetchall()
    means = {(d, act, reg): acc for d, act, reg, acc in rows}
    units = {(d, act) for d, act, _ in means}
    return np.mean([means[(*u, a)] - means[(*u, b)] for u in units])


def test_report_from_fixture_database(tmp_path, capsys):
    db = tmp_path / "results.sqlite"
    database(db, synthetic_results(PAPER_LIKE), preset="quick")
    out = tmp_path / "report"
    assert (
        cli.main(["study", "report", "--db", str(db), "--out", str(out)]) == 0
    )
    printed = capsys.readouterr().out
    assert printed.count(v.REPRODUCED) == 4

    text = (out / "report.md").read_text()
    for heading in (
        "# DREG study report",
        "## How this differs from the preprint",
        "## The preprint's findings",
        "## Accuracy by regularizer",
        "## By activation",
        "## By data set",
        "## dreg versus each regularizer (paired, over units)",
        "## Data scarcity",
        "## Method",
    ):
        assert heading in text
    for claim in v.FINDINGS.values():
        assert claim in text
    # Provenance: preset, commit, strengths.
    assert "- preset: quick" in text and "- git commit: abc123" in text
    assert "weight_decay: lam=0.00025" in text
    assert "normalize_output=False" in text
    # Numbers traceable to the stored rows.
    assert f"{len(synthetic_results(PAPER_LIKE))} runs" in text
    for other in ("none", "igpen"):
        diff = 100 * _unit_mean_difference(db, "dreg", other)
        assert f"overall vs {other}: {diff:+.2f} pp" in text
    for key, name in report.PLOTS.items():
        if key == "sensitivity":  # no lam grid in this study
            assert f"]({name})" not in text and not (out / name).exists()
            continue
        assert f"]({name})" in text
        image = _read_png(out / name)
        assert image.shape[0] > 200 and image.shape[1] > 300


def test_report_says_how_it_was_run_and_lists_failed_runs(tmp_path, capsys):
    db = tmp_path / "results.sqlite"
    results = synthetic_results(PAPER_LIKE)
    database(db, results)
    common = dict(
        backend="jax",
        executor="LocalExecutor (2 workers)",
        machine="Linux x86_64, 2 CPUs (Some CPU), Python 3.11.7",
        git_commit="0123456789abcdef",
        failed=1,
    )
    with ResultStore(db) as store:
        store.record_slice(
            started_at="2026-12-01T10:00:00+00:00",
            ended_at="2026-12-01T11:30:00+00:00",
            finished=100,
            left_over=20,
            **common,
        )
        store.record_slice(
            started_at="2026-12-02T08:00:00+00:00",
            ended_at="2026-12-02T08:15:00+00:00",
            finished=19,
            left_over=0,
            **common,
        )
        failed = dataclasses.replace(results[0].config, seed=99)
        store.add_failure(failed, "FloatingPointError: loss is NaN")
    out = tmp_path / "report"
    assert (
        cli.main(["study", "report", "--db", str(db), "--out", str(out)]) == 0
    )
    text = (out / "report.md").read_text()
    assert "## How it was run" in text
    assert "2 slice(s), 1.75 h of wall clock in all" in text
    assert (
        "| 1 | 2026-12-01T10:00:00+00:00 | 1.50 | Linux x86_64, 2 CPUs "
        "(Some CPU), Python 3.11.7 | jax | LocalExecutor (2 workers) | "
        "0123456789ab | 100 | 1 | 20 |"
    ) in text
    config = results[0].config
    name = (
        f"{config.activation} {config.regularizer} {config.dataset} "
        f"fraction {config.train_fraction} seed 99"
    )
    assert f"| {name} | FloatingPointError: loss is NaN |" in text
    cli.main(["study", "status", "--db", str(db)])
    assert "1 runs failed" in capsys.readouterr().out


def test_report_of_a_store_without_slices_has_no_such_section(tmp_path):
    db = tmp_path / "results.sqlite"
    rows = database(db, synthetic_results(PAPER_LIKE))
    text = report.write_report(rows, tmp_path / "report").read_text()
    assert "## How it was run" not in text


def test_status_shows_provenance_and_verdicts(tmp_path, capsys):
    db = tmp_path / "results.sqlite"
    database(db, synthetic_results(PAPER_LIKE))
    assert cli.main(["study", "status", "--db", str(db)]) == 0
    printed = capsys.readouterr().out
    assert "- preset: quick" in printed and "abc123" in printed
    assert "dreg: lam=0.0031622776601683794" in printed
    assert printed.count("REPRODUCED") >= 4
    assert "no effect of any size" in printed  # clean: 4 units


def test_rows_stored_before_provenance_are_labelled_unknown(tmp_path):
    db = tmp_path / "old.sqlite"
    columns = [c for c, _ in store_module._RUN_COLUMNS]
    columns = [c for c in columns if c not in store_module._PROVENANCE]
    with sqlite3.connect(db) as conn:
        conn.execute(f"CREATE TABLE runs ({', '.join(columns)})")
        conn.execute(
            f"INSERT INTO runs VALUES ({', '.join('?' * len(columns))})",
            [
                "k",
                "gelu",
                "dreg",
                "a",
                1.0,
                0,
                1,
                8,
                1e-3,
                "jax",
                0,
                0.9,
                0.8,
                0.1,
                1,
                1.0,
                "{}",
                "2026",
            ],
        )
    with ResultStore(db) as store:
        rows = store.rows()
    assert rows[0]["options"] is None and rows[0]["git_commit"] is None
    lines = "\n".join(report.provenance_lines(rows))
    assert "git commit: unknown (stored before it was recorded)" in lines


def test_report_without_scarcity_skips_its_plot(tmp_path):
    rows = database(
        tmp_path / "r.sqlite", synthetic_results(PAPER_LIKE, fractions=(1.0,))
    )
    path = report.write_report(rows, tmp_path / "out")
    assert not (tmp_path / "out" / report.PLOTS["scarcity"]).exists()
    assert "No train fraction" not in path.read_text()
    assert (tmp_path / "out" / report.PLOTS["ranks"]).exists()


def test_report_of_empty_database_fails_clearly(tmp_path):
    with pytest.raises(ValueError, match="no finished runs"):
        report.write_report([], tmp_path)


def _read_png(path):
    from matplotlib import image

    with open(path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    return image.imread(path)
