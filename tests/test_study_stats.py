"""Tests of the study statistics on hand-made inputs, checked against scipy.

Backend-independent: no model is trained.
"""

import numpy as np
import pytest
from scipy import stats as scipy_stats

from keras_dreg.study import stats


def row(regularizer, accuracy, noisy=None, **cell):
    fields = dict(
        activation="gelu",
        dataset="d",
        train_fraction=1.0,
        seed=0,
        epochs=1,
        batch_size=8,
        learning_rate=1e-3,
        backend="jax",
        messy=False,
    )
    fields.update(cell)
    return dict(
        fields,
        regularizer=regularizer,
        accuracy=accuracy,
        noisy_accuracy=accuracy if noisy is None else noisy,
    )


def paired_rows(reference, other, a="dreg", b="none"):
    """Rows of two regularizers on matched cells (one per seed)."""
    return [row(a, x, seed=i) for i, x in enumerate(reference)] + [
        row(b, y, seed=i) for i, y in enumerate(other)
    ]


def test_holm_by_hand():
    # Sorted: 0.005*4 = 0.02, 0.01*3 = 0.03, 0.03*2 = 0.06, 0.04*1 = 0.04,
    # which monotonicity lifts to 0.06.
    adjusted = stats.holm([0.01, 0.04, 0.03, 0.005])
    np.testing.assert_allclose(adjusted, [0.03, 0.06, 0.06, 0.02])


def test_holm_caps_at_one_and_keeps_nan():
    adjusted = stats.holm([0.5, np.nan, 0.9])
    np.testing.assert_allclose(adjusted, [1.0, np.nan, 1.0])
    assert stats.holm([]).shape == (0,)


def test_holm_against_its_definition():
    """Holm (1979): the i-th smallest p-value is rejected at level a iff
    p_(j) <= a / (m - j + 1) for every j <= i; its adjusted p-value is the
    smallest such a. Brute force over a grid of levels."""
    p = np.random.default_rng(0).uniform(0, 0.2, size=7)
    order = np.argsort(p)
    levels = np.linspace(0, 1, 100_001)
    rejected = np.cumprod(
        p[order][None, :] <= levels[:, None] / (7 - np.arange(7))[None, :],
        axis=1,
    ).astype(bool)
    expected = np.empty(7)
    expected[order] = [levels[np.argmax(rejected[:, i])] for i in range(7)]
    np.testing.assert_allclose(stats.holm(p), expected, atol=1e-5)


def test_wilcoxon_matches_scipy():
    rng = np.random.default_rng(1)
    x = rng.normal(0.8, 0.05, size=12)
    y = x - rng.normal(0.01, 0.02, size=12)
    expected = scipy_stats.wilcoxon(x, y)
    statistic, p = stats.wilcoxon(x, y)
    assert statistic == expected.statistic
    assert p == pytest.approx(expected.pvalue)


def test_wilcoxon_exact_value_and_degenerate_inputs():
    # Six positive differences: the exact two-sided p is 2 / 2**6.
    assert stats.wilcoxon(np.arange(1, 7), np.zeros(6)) == (0.0, 0.03125)
    statistic, p = stats.wilcoxon([0.5, 0.5], [0.5, 0.5])
    assert np.isnan(statistic) and p == 1.0
    assert np.isnan(stats.wilcoxon([], [])[1])


def test_rank_biserial_by_hand():
    # |d| ranks: 0.5 -> 1, 1 -> 2, 2 -> 3; R+ = 5, R- = 1.
    assert stats.rank_biserial([1.0, 2.0, -0.5, 0.0]) == pytest.approx(4 / 6)
    assert stats.rank_biserial([1.0, 3.0]) == 1.0
    assert np.isnan(stats.rank_biserial([0.0]))


def test_rank_biserial_agrees_with_wilcoxon_statistic():
    d = np.array([0.3, -0.1, 0.25, 0.4, -0.05, 0.2, 0.15])
    r_plus = scipy_stats.wilcoxon(d, alternative="greater").statistic
    total = len(d) * (len(d) + 1) / 2
    assert stats.rank_biserial(d) == pytest.approx(
        (r_plus - (total - r_plus)) / total
    )


def test_scores_select_each_analysis():
    rows = [
        row("dreg", 0.9, noisy=0.5, dataset="a"),
        row("dreg", 0.8, noisy=0.4, dataset="b", messy=True),
        row("dreg", 0.7, noisy=0.3, dataset="a", train_fraction=0.25),
    ]

    def values(analysis):
        return sorted(s.value for s in stats.scores(rows, analysis))

    assert values("overall") == [0.8, 0.9]
    assert values("clean") == [0.9]
    assert values("messy") == [0.8]
    assert values("noise") == [0.4, 0.5]
    assert values("scarcity") == [0.7]
    with pytest.raises(ValueError, match="analysis"):
        stats.scores(rows, "nope")


def test_summarize_ci_matches_t_interval():
    values = [0.8, 0.85, 0.9, 0.82]
    s = stats.summarize(values)
    low, high = scipy_stats.t.interval(
        0.95, 3, loc=np.mean(values), scale=scipy_stats.sem(values)
    )
    assert s.mean == pytest.approx(np.mean(values))
    assert s.std == pytest.approx(np.std(values, ddof=1))
    assert s.ci95 == pytest.approx((high - low) / 2)
    assert s.n == 4
    assert np.isnan(stats.summarize([1.0]).std)


def test_table_groups_by_field():
    rows = [
        row("dreg", 0.9, activation="gelu"),
        row("dreg", 0.7, activation="relu"),
        row("none", 0.8, activation="gelu"),
    ]
    table = stats.table(stats.scores(rows, "overall"), by="activation")
    assert table["gelu"]["dreg"].mean == 0.9
    assert table["relu"]["dreg"].mean == 0.7
    assert "none" not in table["relu"]


def test_average_ranks_by_hand_with_ties():
    rows = [
        row("dreg", 0.9, seed=0),
        row("none", 0.8, seed=0),
        row("igpen", 0.8, seed=0),
        row("dreg", 0.7, seed=1),
        row("none", 0.9, seed=1),
        row("igpen", 0.8, seed=1),
        row("dreg", 0.5, seed=2),  # incomplete cell: not ranked
    ]
    ranks, n = stats.average_ranks(stats.scores(rows, "overall"))
    assert n == 2
    # Cell 0: dreg 1, none 2.5, igpen 2.5. Cell 1: none 1, igpen 2, dreg 3.
    assert ranks == {"dreg": 2.0, "igpen": 2.25, "none": 1.75}


def test_best_attainable_p():
    assert stats.best_attainable_p(5) == 0.0625
    assert stats.best_attainable_p(6) == 0.03125
    assert stats.best_attainable_p(8, family_size=5) == pytest.approx(
        5 * 2 / 256
    )
    assert stats.best_attainable_p(0) == 1.0
    # It is what scipy's exact test gives for all-positive differences.
    assert stats.best_attainable_p(7) == pytest.approx(
        scipy_stats.wilcoxon(np.arange(1, 8)).pvalue
    )
