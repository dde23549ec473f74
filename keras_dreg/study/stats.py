"""Statistics of a study: means, ranks and paired Wilcoxon tests.

The runner stores one row per run (`store.ResultStore.rows`). The
analysis derives the preprint's regimes from those rows; each selects
runs and a score:

| analysis    | runs                                   | score            |
|-------------|----------------------------------------|------------------|
| `overall`   | every data set, train fraction 1.0     | clean accuracy   |
| `clean`     | clean data sets, train fraction 1.0    | clean accuracy   |
| `messy`     | messy data sets, train fraction 1.0    | clean accuracy   |
| `noise`     | every data set, train fraction 1.0     | noisy accuracy   |
| `scarcity`  | train fractions below 1.0              | clean accuracy   |

Regularizers are compared on matched cells: runs that agree on every
setting but the regularizer (activation, data set, train fraction,
seed, epochs, batch size, learning rate, backend, code version, model).
The findings use each regularizer at its study strength
(`at_study_strength`); runs of a `lam` grid at other strengths enter
only the sensitivity analysis (`sensitivity`). This
module holds the building blocks (scores, summaries, ranks, the
Wilcoxon test, Holm's correction, the rank-biserial correlation); the
tests of the findings, over units of analysis, are in
`keras_dreg.study.verdicts`.
"""

import dataclasses
from collections import defaultdict
from collections.abc import Iterable
from collections.abc import Mapping
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import stats

REFERENCE = "dreg"
ALPHA = 0.05
ANALYSES = ("overall", "clean", "messy", "noise", "scarcity")
CELL_FIELDS = (
    "activation",
    "dataset",
    "train_fraction",
    "seed",
    "epochs",
    "batch_size",
    "learning_rate",
    "backend",
    "code",
    "model",
)

Row = Mapping[str, Any]


@dataclasses.dataclass(frozen=True)
class Score:
    """One run's score in an analysis: its cell, regularizer and value.

    Example:

    >>> row = dict(activation="gelu", dataset="d", train_fraction=1.0,
    ...            seed=0, epochs=1, batch_size=8, learning_rate=1e-3,
    ...            backend="jax", regularizer="dreg", accuracy=0.9)
    >>> score = to_score(row)
    >>> score.regularizer, score.value
    ('dreg', 0.9)
    """

    cell: tuple
    regularizer: str
    value: float
    row: Row


@dataclasses.dataclass(frozen=True)
class Summary:
    """Mean, standard deviation, 95% confidence half-width and count.

    Example:

    >>> summarize([0.9, 0.8, 0.7]).n
    3
    """

    mean: float
    std: float
    ci95: float
    n: int


def scores(rows: Iterable[Row], analysis: str) -> list[Score]:
    """The runs of `analysis` (see the module docstring) and their scores.

    Example:

    >>> row = dict(activation="gelu", dataset="d", train_fraction=1.0,
    ...            seed=0, epochs=1, batch_size=8, learning_rate=1e-3,
    ...            backend="jax", regularizer="dreg", messy=False,
    ...            accuracy=0.9, noisy_accuracy=0.7)
    >>> [s.value for s in scores([row], "noise")]
    [0.7]
    """
    if analysis not in ANALYSES:
        raise ValueError(f"analysis must be one of {ANALYSES}.")
    selected = []
    for row in rows:
        full = row["train_fraction"] >= 1.0
        keep = {
            "overall": full,
            "clean": full and not row["messy"],
            "messy": full and row["messy"],
            "noise": full,
            "scarcity": not full,
        }[analysis]
        if keep:
            field = "noisy_accuracy" if analysis == "noise" else "accuracy"
            selected.append(to_score(row, field))
    return selected


def to_score(row: Row, field: str = "accuracy") -> Score:
    """A row's `Score`: its cell, regularizer and the value of `field`."""
    cell = tuple(row.get(f) for f in CELL_FIELDS)
    return Score(cell, row["regularizer"], float(row[field]), row)


def summarize(values: Sequence[float]) -> Summary:
    """Mean, sample std, t-based 95% confidence half-width and count.

    Example:

    >>> summarize([1.0, 2.0, 3.0]).mean
    2.0
    """
    values = np.asarray(values, dtype=float)
    n = len(values)
    if n == 0:
        return Summary(np.nan, np.nan, np.nan, 0)
    if n == 1:
        return Summary(float(values[0]), np.nan, np.nan, 1)
    std = float(values.std(ddof=1))
    half = float(stats.t.ppf(0.975, n - 1) * std / np.sqrt(n))
    return Summary(float(values.mean()), std, half, n)


def table(
    selected: Iterable[Score], by: str | None = None
) -> dict[Any, dict[str, Summary]]:
    """Per-regularizer summaries, optionally per value of a row field.

    Returns `{group: {regularizer: Summary}}`; the group is `None` when
    `by` is `None`, else the row's `by` value (e.g. `"activation"`).

    Example:

    >>> table(scores(rows, "overall"), by="activation")  # doctest: +SKIP
    {'gelu': {'dreg': Summary(mean=0.91, ...), ...}, ...}
    """
    groups = defaultdict(lambda: defaultdict(list))
    for s in selected:
        group = None if by is None else s.row[by]
        groups[group][s.regularizer].append(s.value)
    return {
        g: {r: summarize(v) for r, v in regs.items()}
        for g, regs in groups.items()
    }


def by_cell(selected: Iterable[Score]) -> dict[tuple, dict[str, float]]:
    """`{cell: {regularizer: score}}`."""
    cells = defaultdict(dict)
    for s in selected:
        cells[s.cell][s.regularizer] = s.value
    return dict(cells)


def average_ranks(
    selected: Iterable[Score], regularizers: Sequence[str] | None = None
) -> tuple[dict[str, float], int]:
    """Average rank of each regularizer (1 = best) and the cell count.

    Only cells that have every regularizer are ranked; ties share the
    average rank (`scipy.stats.rankdata`).

    Example:

    >>> ranks, n = average_ranks(scores(rows, "overall"))  # doctest: +SKIP
    """
    cells = by_cell(selected)
    if regularizers is None:
        regularizers = sorted({r for c in cells.values() for r in c})
    complete = [
        [c[r] for r in regularizers]
        for c in cells.values()
        if all(r in c for r in regularizers)
    ]
    if not complete:
        return {r: np.nan for r in regularizers}, 0
    ranks = stats.rankdata(-np.asarray(complete), axis=1)
    return dict(zip(regularizers, ranks.mean(axis=0).tolist())), len(complete)


def rank_biserial(differences: Sequence[float]) -> float:
    """Matched-pairs rank-biserial correlation of paired differences.

    `(R+ - R-) / (R+ + R-)`, where `R+` and `R-` sum the ranks of
    `|d|` over the positive and the negative differences; zeros are
    dropped as in the Wilcoxon test. NaN when every difference is zero.

    Example:

    >>> rank_biserial([1.0, 2.0, -0.5])
    0.6666666666666666
    """
    d = np.asarray(differences, dtype=float)
    d = d[d != 0]
    if len(d) == 0:
        return float("nan")
    ranks = stats.rankdata(np.abs(d))
    plus, minus = ranks[d > 0].sum(), ranks[d < 0].sum()
    return float((plus - minus) / (plus + minus))


def holm(p_values: Sequence[float]) -> np.ndarray:
    """Holm's step-down adjusted p-values (NaNs are left out and kept).

    The i-th smallest of `m` p-values is multiplied by `m - i + 1`; the
    results are made monotone and capped at 1.

    Example:

    >>> holm([0.01, 0.04, 0.03]).round(2).tolist()
    [0.03, 0.06, 0.06]
    """
    p = np.asarray(p_values, dtype=float)
    adjusted = np.full_like(p, np.nan)
    valid = np.flatnonzero(~np.isnan(p))
    order = valid[np.argsort(p[valid], kind="stable")]
    m = len(order)
    scaled = p[order] * (m - np.arange(m))
    adjusted[order] = np.minimum(np.maximum.accumulate(scaled), 1.0)
    return adjusted


def wilcoxon(x: Sequence[float], y: Sequence[float]) -> tuple[float, float]:
    """Two-sided Wilcoxon signed-rank test of paired `x` and `y`.

    Returns `(statistic, p)`; `(nan, nan)` with no pairs and `(nan, 1.0)`
    when every difference is zero (no evidence of any difference).

    Example:

    >>> wilcoxon([1, 2, 3, 4, 5, 6], [0, 0, 0, 0, 0, 0])
    (0.0, 0.03125)
    """
    d = np.asarray(x, dtype=float) - np.asarray(y, dtype=float)
    if len(d) == 0:
        return float("nan"), float("nan")
    if not np.any(d != 0):
        return float("nan"), 1.0
    result = stats.wilcoxon(d, zero_method="wilcox", alternative="two-sided")
    return float(result.statistic), float(result.pvalue)


def best_attainable_p(n: int, family_size: int = 1) -> float:
    """The smallest Holm-adjusted p a two-sided test of `n` pairs can give.

    With `n` nonzero, untied differences the exact Wilcoxon test cannot
    go below `2 / 2**n`; Holm multiplies the smallest p of the family by
    its size. A claim of significance at `ALPHA` is untestable when this
    exceeds `ALPHA`.

    Example:

    >>> best_attainable_p(6)
    0.03125
    """
    if n < 1:
        return 1.0
    return min(1.0, family_size * 2.0 / 2.0**n)


# --------------------------------------------------------------------------
# The lam grid.


def _lam(row: Row) -> tuple[float | None, bool]:
    """A row's `lam` and whether it is its regularizer's study strength."""
    options = row.get("options") or {}
    return options.get("lam"), "default_lam" not in options


def at_study_strength(rows: Iterable[Row]) -> list[Row]:
    """The rows at their regularizer's study strength (no `lam` grid ones).

    Example:

    >>> row = dict(regularizer="dreg", options={"lam": 0.01,
    ...            "default_lam": 10**-2.5})
    >>> at_study_strength([row])
    []
    """
    return [r for r in rows if _lam(r)[1]]


@dataclasses.dataclass(frozen=True)
class LamPoint:
    """One strength of a regularizer's `lam` grid, over matched cells.

    `accuracy` and `noisy` summarize the clean and noisy test accuracy;
    `versus_none` the paired difference to `none` in the same cells
    (`None` without `none` runs); `default` marks the study strength.

    Example:

    >>> points = sensitivity(rows)  # doctest: +SKIP
    >>> [(p.lam, p.accuracy.mean) for p in points]  # doctest: +SKIP
    [(0.001, 0.95), (0.0031622776601683794, 0.96), (0.01, 0.94)]
    """

    regularizer: str
    lam: float
    default: bool
    accuracy: Summary
    noisy: Summary
    versus_none: Summary | None


def sensitivity(rows: Iterable[Row]) -> list[LamPoint]:
    """Accuracy against `lam` for each regularizer run at several strengths.

    Uses the runs at train fraction 1.0 and, per regularizer, the cells
    (`CELL_FIELDS`) in which every one of its strengths finished, so the
    points of one regularizer are paired. Regularizers with a single
    strength are left out.

    Example:

    >>> rows = [dict(regularizer="dreg", options={"lam": lam},
    ...              train_fraction=1.0, seed=0, accuracy=acc,
    ...              noisy_accuracy=acc / 2)
    ...         for lam, acc in ((0.001, 0.8), (0.01, 0.9))]
    >>> rows[0]["options"]["default_lam"] = 0.01
    >>> [(p.lam, p.accuracy.mean) for p in sensitivity(rows)]
    [(0.001, 0.8), (0.01, 0.9)]
    """
    rows = [r for r in rows if r["train_fraction"] >= 1.0]
    cells = defaultdict(lambda: defaultdict(dict))
    for row in rows:
        lam, _ = _lam(row)
        cells[row["regularizer"]][to_score(row).cell][lam] = row
    baseline = {
        to_score(r).cell: r["accuracy"]
        for r in rows
        if r["regularizer"] == "none"
    }
    points = []
    for regularizer, by_cell_ in cells.items():
        lams = sorted({lam for runs in by_cell_.values() for lam in runs})
        if len(lams) < 2 or None in lams:
            continue
        complete = {
            c: runs for c, runs in by_cell_.items() if len(runs) == len(lams)
        }
        for lam in lams:
            runs = {c: r[lam] for c, r in complete.items()}
            paired = [
                r["accuracy"] - baseline[c]
                for c, r in runs.items()
                if c in baseline
            ]
            points.append(
                LamPoint(
                    regularizer=regularizer,
                    lam=lam,
                    default=all(_lam(r)[1] for r in runs.values()),
                    accuracy=summarize([r["accuracy"] for r in runs.values()]),
                    noisy=summarize(
                        [r["noisy_accuracy"] for r in runs.values()]
                    ),
                    versus_none=summarize(paired) if paired else None,
                )
            )
    return points
