"""Tests of `keras_dreg.study.verdicts`: the tests over units, the
three-way judgement and the power statement, against scipy by hand."""

import numpy as np
import pytest
from scipy import stats as scipy_stats

from keras_dreg.study import verdicts


def _units(**columns):
    n = len(next(iter(columns.values())))
    return {(i,): {r: v[i] for r, v in columns.items()} for i in range(n)}


def test_family_pairs_units_and_applies_holm():
    dreg = [0.90, 0.91, 0.85, 0.88, 0.93, 0.87, 0.92]
    none = [0.85, 0.90, 0.86, 0.80, 0.90, 0.85, 0.88]
    wd = [0.80, 0.86, 0.82, 0.84, 0.85, 0.83, 0.86]
    units = _units(dreg=dreg, none=none, weight_decay=wd)
    tests = verdicts.family(
        units, "dreg", {"none": +1, "weight_decay": +1}, "overall"
    )
    p_raw = [scipy_stats.wilcoxon(dreg, other).pvalue for other in (none, wd)]
    assert [t.p_value for t in tests] == pytest.approx(p_raw)
    m = len(p_raw)
    expected_holm = [
        min(1, max(sorted(p_raw)[0] * m, p * (m - sorted(p_raw).index(p))))
        for p in p_raw
    ]
    assert [t.p_holm for t in tests] == pytest.approx(expected_holm)
    ci = scipy_stats.ttest_1samp(np.subtract(dreg, none), 0)
    low, high = ci.confidence_interval(0.95)
    assert tests[0].ci95 == pytest.approx((low, high))
    assert tests[0].mean == pytest.approx(np.mean(np.subtract(dreg, none)))


def _test(differences, p_holm, claimed=+1):
    return verdicts.Test(
        "x", "y", claimed, tuple(differences), p_holm, p_holm, 1
    )


@pytest.mark.parametrize(
    "tests, missing, verdict",
    [
        ([_test([1, 2], 0.01), _test([1, 1], 0.04)], [], verdicts.REPRODUCED),
        ([_test([1, 2], 0.01), _test([1, 1], 0.2)], [], verdicts.INCONCLUSIVE),
        ([_test([1, 2], 0.01), _test([-1, -2], 0.01)], [], "NOT REPRODUCED"),
        ([_test([-1, -2], 0.01, claimed=-1)], [], verdicts.REPRODUCED),
        ([_test([1, 2], 0.01)], ["no NLP"], verdicts.INCONCLUSIVE),
        ([], [], verdicts.INCONCLUSIVE),
    ],
)
def test_judge(tests, missing, verdict):
    assert verdicts.judge(tests, missing) == verdict


def test_detectable_effect_by_hand():
    d = np.array([0.01, 0.03, 0.0, 0.02, 0.01, 0.02, 0.04, 0.0])
    n, m = len(d), 3
    expected = (
        (
            scipy_stats.t.ppf(1 - 0.05 / (2 * m), n - 1)
            + scipy_stats.t.ppf(0.8, n - 1)
        )
        * d.std(ddof=1)
        / np.sqrt(n)
    )
    assert verdicts.detectable_effect(d, m) == pytest.approx(expected)
    # 4 units in a family of 5 can never reach Holm p <= 0.05.
    assert verdicts.detectable_effect(d[:4], 5) == np.inf


def test_the_power_statement_is_about_the_undecided_comparisons():
    decided = _test([0.5, 0.4, 0.9, 0.1, 0.8, 0.2, 0.7, 0.3], 0.01)
    undecided = _test([0.01, -0.01, 0.02, 0.0, 0.01, -0.02, 0.0, 0.01], 0.8)
    finding = verdicts.Finding(
        "overall", "claim", "x", "", (decided, undecided)
    )
    assert finding.detectable == pytest.approx(undecided.detectable)
    assert finding.detectable < decided.detectable
    assert "vs y" in verdicts.power_statement([decided, undecided])
