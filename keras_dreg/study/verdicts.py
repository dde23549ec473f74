"""Three-way verdicts on the preprint's findings, with their power.

Unit of analysis. Runs of one (data set, activation, train fraction)
differ only in seed; their seeds share the data set and the model, so
they are not independent evidence for a claim about data sets. Each
test first averages the seeds of a unit (the other settings, epochs,
batch size, learning rate, backend and code, are constant within a
study), then compares regularizers over units: n is the number of
units, never of runs. A data set and its messy twin remain two units
(they differ in the training data); the calibration tests
(`keras_dreg.study.simulate`) include a shared data-set effect to show
the verdicts stay calibrated all the same.

Each comparison is a paired two-sided Wilcoxon signed-rank test of the
reference (DREG) against one regularizer over the units both have
(`scipy.stats.wilcoxon`), with a t-based 95% confidence interval of the
mean paired difference (`scipy.stats.ttest_1samp`). The comparisons a
finding needs form one family, Holm-corrected. A comparison

- *supports* the claim when its Holm p <= `ALPHA` and the effect
  (the rank-biserial correlation) points the claimed way,
- *contradicts* it when its Holm p <= `ALPHA` the other way,
- is *undecided* otherwise.

A finding is REPRODUCED when every comparison it needs supports it,
NOT REPRODUCED when any contradicts it, and INCONCLUSIVE otherwise (also
when the run lacks a regularizer, a regime or a kind of data the claim
is about, such as NLP for finding 5). An INCONCLUSIVE verdict states the
smallest effect the run could have detected (`detectable_effect`).

Example:

>>> for finding in assess_findings(rows):  # doctest: +SKIP
...     print(finding.verdict, finding.claim)
"""

import dataclasses
from collections import defaultdict
from collections.abc import Iterable
from collections.abc import Mapping
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import stats as scipy_stats

from keras_dreg.regularizers import REGULARIZERS
from keras_dreg.study import stats
from keras_dreg.study.stats import ALPHA
from keras_dreg.study.stats import CELL_FIELDS
from keras_dreg.study.stats import REFERENCE
from keras_dreg.study.stats import Row

REPRODUCED = "REPRODUCED"
NOT_REPRODUCED = "NOT REPRODUCED"
INCONCLUSIVE = "INCONCLUSIVE"
POWER = 0.8
"""The power at which `detectable_effect` is stated."""
SIGNIFICANCE_BASELINES = ("none", "weight_decay", "igpen")
NOISE_LEADER = "spectral_norm"
UNIT_FIELDS = tuple(f for f in CELL_FIELDS if f != "seed")
"""A unit: a cell without its seed (seeds are averaged within it)."""

FINDINGS = {
    "overall": "DREG has the highest overall accuracy.",
    "clean": "DREG has the highest clean-regime accuracy.",
    "significance": (
        "DREG is significantly better than no regularization, weight "
        "decay and IGPen (Wilcoxon signed-rank, p <= 0.031 in the "
        "preprint)."
    ),
    "noise": (
        "DREG is second in noise robustness, behind spectral normalization."
    ),
    "gelu": (
        "Under GELU, DREG is the best regularizer overall, notably on "
        "messy vision and NLP data."
    ),
    "scarcity": (
        "DREG's advantage grows as training data shrinks (read: DREG "
        "is ahead at the smallest fraction, and further ahead than with "
        "all the data)."
    ),
}
MESSY_KINDS = {"vision": "image", "NLP": "text"}
"""The messy data of finding 5, by the `task` of the data set."""

Units = dict[tuple, dict[str, float]]


@dataclasses.dataclass(frozen=True)
class Test:
    """One paired comparison of the reference with `other` over units.

    `differences` are reference minus other, one per unit (in accuracy,
    0.01 = 1 pp); `claimed` is +1 when the finding claims the reference
    is better, -1 when worse. `p_holm` is Holm-adjusted within the
    finding's family of `family_size` tests.

    Example:

    ```python
    tests = family(units, "dreg", ["none", "weight_decay"])
    tests[0].p_holm
    ```
    """

    label: str
    other: str
    claimed: int
    differences: tuple[float, ...]
    p_value: float
    p_holm: float
    family_size: int

    @property
    def n(self) -> int:
        return len(self.differences)

    @property
    def mean(self) -> float:
        return float(np.mean(self.differences)) if self.n else np.nan

    @property
    def ci95(self) -> tuple[float, float]:
        """t-based 95% confidence interval of the mean difference."""
        if self.n < 2 or np.ptp(self.differences) == 0:
            return (self.mean, self.mean) if self.n >= 2 else (np.nan, np.nan)
        ci = scipy_stats.ttest_1samp(self.differences, 0.0).confidence_interval(
            1 - ALPHA
        )
        return float(ci.low), float(ci.high)

    @property
    def rank_biserial(self) -> float:
        return stats.rank_biserial(self.differences)

    @property
    def status(self) -> str:
        """`"supports"`, `"contradicts"` or `"undecided"`."""
        if not self.p_holm <= ALPHA or np.isnan(self.rank_biserial):
            return "undecided"
        same = np.sign(self.rank_biserial) == self.claimed
        return "supports" if same else "contradicts"

    @property
    def detectable(self) -> float:
        return detectable_effect(self.differences, self.family_size)

    def describe(self) -> str:
        low, high = self.ci95
        d = np.asarray(self.differences)
        return (
            f"{self.label} vs {self.other}: {_pp(self.mean)} pp "
            f"[95% CI {_pp(low)}, {_pp(high)}], n = {self.n} units, "
            f"W/T/L {np.sum(d > 0)}/{np.sum(d == 0)}/{np.sum(d < 0)}, "
            f"p = {_p(self.p_value)}, Holm p = {_p(self.p_holm)} "
            f"({self.status})"
        )


@dataclasses.dataclass(frozen=True)
class Finding:
    """A finding of the preprint, the verdict, its tests and evidence.

    Example:

    ```python
    finding = findings(rows)[0]
    finding.verdict  # REPRODUCED, NOT REPRODUCED or INCONCLUSIVE
    ```
    """

    name: str
    claim: str
    verdict: str
    evidence: str
    tests: tuple[Test, ...] = ()

    @property
    def detectable(self) -> float:
        """The largest detectable effect of the tests still undecided
        (of all tests when none is): every one of them is needed."""
        values = [t.detectable for t in _open(self.tests)]
        return max(values) if values else np.inf


def _open(tests: Sequence[Test]) -> list[Test]:
    """The tests that do not yet support the claim, else all of them."""
    return [t for t in tests if t.status != "supports"] or list(tests)


def detectable_effect(differences: Sequence[float], family_size: int) -> float:
    """The smallest mean difference a test of these units detects.

    `(t_{1 - ALPHA / (2 m)} + t_{POWER}) * s / sqrt(n)` with `n - 1`
    degrees of freedom, `s` the observed standard deviation of the
    differences and `m` the family size (Holm's strictest level); the
    t-test's formula, which the Wilcoxon test matches to within its
    asymptotic efficiency of 0.955. Infinite when no outcome of `n`
    units can reach Holm p <= `ALPHA` (`stats.best_attainable_p`).

    Example:

    >>> round(detectable_effect([0.01, 0.02, 0.0, 0.01, 0.03, 0.02], 1), 4)
    0.0149
    """
    d = np.asarray(differences, dtype=float)
    n = len(d)
    if n < 2 or stats.best_attainable_p(n, family_size) > ALPHA:
        return np.inf
    level = scipy_stats.t.ppf(1 - ALPHA / (2 * family_size), n - 1)
    power = scipy_stats.t.ppf(POWER, n - 1)
    return float((level + power) * d.std(ddof=1) / np.sqrt(n))


# --------------------------------------------------------------------------
# Units.


def unit_scores(
    rows: Iterable[Row],
    analysis: str,
    regularizers: Sequence[str],
    **where: Any,
) -> Units:
    """`{unit: {regularizer: seed-mean score}}` over complete cells.

    Keeps the rows whose fields equal `where`, the cells where each of
    `regularizers` finished, and averages each regularizer's score over
    the seeds of a unit.

    Example:

    >>> units = unit_scores(rows, "overall", REGULARIZERS)  # doctest: +SKIP
    >>> len(units)  # data sets x activations  # doctest: +SKIP
    8
    """
    rows = [r for r in rows if all(r.get(k) == v for k, v in where.items())]
    rows = [r for r in rows if r["regularizer"] in regularizers]
    at = CELL_FIELDS.index("seed")
    sums = defaultdict(lambda: defaultdict(list))
    for cell, values in stats.by_cell(stats.scores(rows, analysis)).items():
        if all(r in values for r in regularizers):
            unit = cell[:at] + cell[at + 1 :]
            for r in regularizers:
                sums[unit][r].append(values[r])
    return {
        unit: {r: float(np.mean(v)) for r, v in values.items()}
        for unit, values in sums.items()
    }


def family(
    units: Units, reference: str, claims: Mapping[str, int], label: str
) -> list[Test]:
    """Wilcoxon tests of the reference vs each of `claims`, Holm-corrected.

    `claims` maps each other regularizer to the claimed sign (+1: the
    reference is better).

    Example:

    ```python
    tests = family(units, "dreg", ["none", "weight_decay", "igpen"])
    ```
    """
    raw = []
    for other, claimed in claims.items():
        d = [u[reference] - u[other] for u in units.values()]
        raw.append((other, claimed, tuple(d), stats.wilcoxon(d, [0] * len(d))))
    adjusted = stats.holm([p for *_, (_, p) in raw])
    return [
        Test(label, other, claimed, d, p, float(a), len(raw))
        for (other, claimed, d, (_, p)), a in zip(raw, adjusted)
    ]


def _relabel(tests: Sequence[Test]) -> list[Test]:
    """One Holm family over tests gathered from several parts."""
    adjusted = stats.holm([t.p_value for t in tests])
    return [
        dataclasses.replace(t, p_holm=float(a), family_size=len(tests))
        for t, a in zip(tests, adjusted)
    ]


# --------------------------------------------------------------------------
# Judging.


def judge(tests: Sequence[Test], missing: Sequence[str] = ()) -> str:
    """The three-way verdict of a finding's tests; see the module doc.

    Example:

    ```python
    verdict = judge(family(units, "dreg", ["none"]))
    ```
    """
    statuses = {t.status for t in tests}
    if "contradicts" in statuses:
        return NOT_REPRODUCED
    if tests and statuses == {"supports"} and not missing:
        return REPRODUCED
    return INCONCLUSIVE


def _finding(
    name: str, tests: Sequence[Test], missing: Sequence[str] = ()
) -> Finding:
    verdict = judge(tests, missing)
    lines = [t.describe() for t in tests] + list(missing)
    if verdict == REPRODUCED:
        why = "Every comparison the claim needs is significant its way."
    elif verdict == NOT_REPRODUCED:
        against = [f"{t.label} vs {t.other}" for t in tests]
        against = [
            a for a, t in zip(against, tests) if t.status == "contradicts"
        ]
        why = f"Significantly against the claim: {', '.join(against)}."
    else:
        undecided = sum(t.status != "supports" for t in tests)
        why = (
            f"{undecided} of {len(tests)} comparisons undecided"
            + (", and the run lacks data the claim is about" if missing else "")
            + f". {power_statement(tests)}"
        )
    evidence = why + "\n" + "\n".join(f"   - {line}" for line in lines)
    return Finding(name, FINDINGS[name], verdict, evidence, tuple(tests))


def power_statement(tests: Sequence[Test]) -> str:
    """The smallest effect the run could detect, in words."""
    if not tests:
        return "No comparison could be made."
    worst = max(_open(tests), key=lambda t: t.detectable)
    if not np.isfinite(worst.detectable):
        return (
            f"With n = {worst.n} units no outcome of {worst.label} vs "
            f"{worst.other} can reach Holm p <= {ALPHA} in a family of "
            f"{worst.family_size}: no effect of any size was detectable."
        )
    return (
        f"Smallest effect detectable with {100 * POWER:.0f}% power: "
        f"{100 * worst.detectable:.2f} pp ({worst.label} vs {worst.other}, "
        f"n = {worst.n} units, family of {worst.family_size})."
    )


def _present(rows: Sequence[Row]) -> list[str]:
    names = {r["regularizer"] for r in rows}
    return [r for r in REGULARIZERS if r in names]


def _lacking(needed: Iterable[str], present: Sequence[str]) -> list[str]:
    lacking = [r for r in needed if r not in present]
    return [f"The run lacks {', '.join(lacking)}."] if lacking else []


def _ranked(rows, name, analysis, reference, **where) -> Finding:
    present = _present(rows)
    units = unit_scores(rows, analysis, present, **where)
    claims = {r: +1 for r in present if r != reference}
    missing = _lacking(REGULARIZERS, present)
    if not units or reference not in present:
        missing = missing or [f"No {analysis} runs with every regularizer."]
        return _finding(name, [], missing)
    return _finding(name, family(units, reference, claims, analysis), missing)


def _significance(rows, reference) -> Finding:
    present = _present(rows)
    needed = [reference, *SIGNIFICANCE_BASELINES]
    missing = _lacking(needed, present)
    if missing:
        return _finding("significance", [], missing)
    units = unit_scores(rows, "overall", needed)
    claims = {r: +1 for r in SIGNIFICANCE_BASELINES}
    return _finding("significance", family(units, reference, claims, "overall"))


def _noise(rows, reference) -> Finding:
    present = _present(rows)
    missing = _lacking(REGULARIZERS, present)
    if reference not in present or NOISE_LEADER not in present:
        return _finding("noise", [], missing)
    units = unit_scores(rows, "noise", present)
    claims = {
        r: (-1 if r == NOISE_LEADER else +1) for r in present if r != reference
    }
    return _finding("noise", family(units, reference, claims, "noise"), missing)


def _gelu(rows, reference) -> Finding:
    present = _present(rows)
    missing = _lacking(REGULARIZERS, present)
    if reference not in present:
        return _finding("gelu", [], missing)
    claims = {r: +1 for r in present if r != reference}
    parts = [("GELU overall", "overall", {})] + [
        (f"GELU messy {kind}", "messy", {"task": task})
        for kind, task in MESSY_KINDS.items()
    ]
    tests = []
    for label, analysis, where in parts:
        units = unit_scores(rows, analysis, present, activation="gelu", **where)
        if units:
            tests += family(units, reference, claims, label)
        else:
            missing.append(f"The run has no data for {label} (INCONCLUSIVE).")
    return _finding("gelu", _relabel(tests), missing)


def scarcity_units(
    rows: Sequence[Row], reference: str = REFERENCE
) -> dict[float, dict[tuple, float]]:
    """The reference's advantage per train fraction and unit.

    In each complete cell the advantage is the reference's accuracy
    minus the mean of the other regularizers of the preprint's six;
    seeds are averaged within a unit, keyed without its fraction so a
    unit can be followed across fractions.

    Example:

    ```python
    units = scarcity_units(rows)
    ```
    """
    present = _present(rows)
    if reference not in present or len(present) < 2:
        return {}
    at = UNIT_FIELDS.index("train_fraction")
    result = defaultdict(dict)
    for fraction in sorted({r["train_fraction"] for r in rows}):
        analysis = "overall" if fraction >= 1.0 else "scarcity"
        units = unit_scores(rows, analysis, present, train_fraction=fraction)
        for unit, values in units.items():
            others = [values[r] for r in present if r != reference]
            short = unit[:at] + unit[at + 1 :]
            result[fraction][short] = values[reference] - float(np.mean(others))
    return dict(result)


def _scarcity(rows, reference) -> Finding:
    advantage = scarcity_units(rows, reference)
    if len(advantage) < 2 or 1.0 not in advantage:
        return _finding(
            "scarcity",
            [],
            [
                "Needs train fraction 1.0 and a smaller one, each with every "
                "regularizer."
            ],
        )
    smallest = min(advantage)
    shared = sorted(set(advantage[smallest]) & set(advantage[1.0]))
    small = tuple(advantage[smallest][u] for u in shared)
    growth = tuple(advantage[smallest][u] - advantage[1.0][u] for u in shared)
    raw = [
        (f"advantage at {smallest:g}", small),
        (f"advantage at {smallest:g} minus at 1.0", growth),
    ]
    p_values = [stats.wilcoxon(d, [0] * len(d))[1] for _, d in raw]
    adjusted = stats.holm(p_values)
    tests = [
        Test(label, "the mean of the others", +1, d, p, float(a), 2)
        for (label, d), p, a in zip(raw, p_values, adjusted)
    ]
    return _finding("scarcity", tests)


def assess_findings(
    rows: Sequence[Row], reference: str = REFERENCE
) -> list[Finding]:
    """The verdict on each of the preprint's findings (`FINDINGS`).

    Example:

    >>> [f.verdict for f in assess_findings(rows)]  # doctest: +SKIP
    ['INCONCLUSIVE', 'INCONCLUSIVE', ...]
    """
    rows = list(rows)
    return [
        _ranked(rows, "overall", "overall", reference),
        _ranked(rows, "clean", "clean", reference),
        _significance(rows, reference),
        _noise(rows, reference),
        _gelu(rows, reference),
        _scarcity(rows, reference),
    ]


def _pp(value: float) -> str:
    return "n/a" if np.isnan(value) else f"{100 * value:+.2f}"


def _p(p: float) -> str:
    if np.isnan(p):
        return "n/a"
    return f"{p:.2g}" if p < 0.001 else f"{p:.3f}"
