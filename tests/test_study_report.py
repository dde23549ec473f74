"""Tests of the study report and its findings verdicts.

The fixture databases are built in the tests from synthetic rows
(`synthetic_results`): accuracies with planted regularizer effects plus
seeded noise, stored through `ResultStore` exactly as the runner stores
real runs. No model is trained, so these tests are backend-independent.
"""

import numpy as np
import pytest

from keras_dreg import REGULARIZERS
from keras_dreg import cli
from keras_dreg.study import report
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
                            )
                        )
    return results


def database(path, results):
    with ResultStore(path) as store:
        for result in results:
            store.add(result)
        return store.rows()


def verdicts(rows):
    return {f.name: f.verdict for f in report.assess_findings(rows)}


def test_paper_like_results_reproduce_every_finding(tmp_path):
    rows = database(tmp_path / "r.sqlite", synthetic_results(PAPER_LIKE))
    assert verdicts(rows) == {
        name: report.REPRODUCED for name in report.FINDINGS
    }


def test_contrary_results_reproduce_no_finding(tmp_path):
    rows = database(tmp_path / "r.sqlite", synthetic_results(CONTRARY))
    assert verdicts(rows) == {
        name: report.NOT_REPRODUCED for name in report.FINDINGS
    }


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
    assert {f.verdict for f in found} == {report.INCONCLUSIVE}
    evidence = {f.name: f.evidence for f in found}
    assert "2 matched cells" in evidence["overall"]
    assert "gelu" in evidence["gelu"].lower()
    assert "fraction" in evidence["scarcity"]


def test_significance_needs_each_baseline(tmp_path):
    results = [
        r
        for r in synthetic_results(PAPER_LIKE)
        if r.config.regularizer != "igpen"
    ]
    rows = database(tmp_path / "r.sqlite", results)
    assert verdicts(rows)["significance"] == report.INCONCLUSIVE


def test_not_significant_is_not_reproduced(tmp_path):
    """Enough cells but no real difference: honest NOT REPRODUCED."""
    flat = {reg: (0.0, 0.0) for reg in REGULARIZERS}
    rows = database(tmp_path / "r.sqlite", synthetic_results(flat))
    finding = {f.name: f for f in report.assess_findings(rows)}
    assert finding["significance"].verdict == report.NOT_REPRODUCED
    assert "Holm p" in finding["significance"].evidence


def test_matched_drops_incomplete_cells(tmp_path):
    results = synthetic_results(PAPER_LIKE, fractions=(1.0,))
    # Drop one run: its cell no longer counts for any regularizer.
    rows = database(tmp_path / "r.sqlite", results[1:])
    selected = report.matched(rows, "overall")
    cells = {s.cell for s in selected}
    assert len(selected) == 6 * len(cells)
    assert len(cells) == 2 * 4 * 3 - 1


def test_report_from_fixture_database(tmp_path, capsys):
    db = tmp_path / "results.sqlite"
    database(db, synthetic_results(PAPER_LIKE))
    out = tmp_path / "report"
    assert (
        cli.main(["study", "report", "--db", str(db), "--out", str(out)]) == 0
    )
    printed = capsys.readouterr().out
    assert printed.count(report.REPRODUCED) == len(report.FINDINGS)

    text = (out / "report.md").read_text()
    for heading in (
        "# DREG study report",
        "## The preprint's findings",
        "## Accuracy by regularizer",
        "## By activation",
        "## By data set",
        "## dreg versus each regularizer (paired Wilcoxon)",
        "## Data scarcity",
        "## Method",
    ):
        assert heading in text
    for claim in report.FINDINGS.values():
        assert claim in text
    assert text.count("**REPRODUCED**") == 2 * len(report.FINDINGS)
    assert "Holm p" in text and "rank-biserial" in text
    for name in report.PLOTS.values():
        assert f"]({name})" in text
        image = _read_png(out / name)
        assert image.shape[0] > 200 and image.shape[1] > 300


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
