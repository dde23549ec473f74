"""The study report's Markdown tables.

Accuracy tables (mean ± std over matched cells, average ranks) describe
the runs; the comparison tables test at the unit of analysis of
`keras_dreg.study.verdicts` (seeds averaged within a data set,
activation and fraction) and give paired 95% confidence intervals of
the differences.
"""

from collections.abc import Iterable
from collections.abc import Sequence
from typing import Any

import numpy as np

from keras_dreg.regularizers import REGULARIZERS
from keras_dreg.study import stats
from keras_dreg.study import verdicts
from keras_dreg.study.settings import ABLATIONS
from keras_dreg.study.stats import Row
from keras_dreg.study.stats import Score

ABLATION_PAIRS = (
    ("dreg", "dreg_unit_slope"),
    ("weight_decay", "weight_decay_adamw"),
)
"""Each ablation and the regularizer it is compared with."""


def matched(rows: Iterable[Row], analysis: str, **where: Any) -> list[Score]:
    """Scores of `analysis` on the cells every regularizer finished.

    `where` keeps rows whose fields equal the given values, e.g.
    `activation="gelu"`.

    Example:

    >>> len(matched(rows, "overall", activation="gelu"))  # doctest: +SKIP
    96
    """
    rows = [r for r in rows if all(r[k] == v for k, v in where.items())]
    selected = stats.scores(rows, analysis)
    regularizers = {r["regularizer"] for r in rows}
    complete = {
        cell
        for cell, values in stats.by_cell(selected).items()
        if regularizers <= set(values)
    }
    return [s for s in selected if s.cell in complete]


def num_cells(selected: Sequence[Score]) -> int:
    """The number of distinct cells in `selected`."""
    return len({s.cell for s in selected})


def analyses(rows: Sequence[Row]) -> dict[str, list[Score]]:
    """The matched scores of each analysis that has any (the six only)."""
    main = [r for r in rows if r["regularizer"] not in ABLATIONS]
    selected = {a: matched(main, a) for a in stats.ANALYSES}
    return {a: s for a, s in selected.items() if s}


def order(names: Iterable[str]) -> list[str]:
    """The study's regularizer order, then ablations, then others."""
    names = set(names)
    known = [r for r in REGULARIZERS + ABLATIONS if r in names]
    return known + sorted(names - set(known))


def markdown(header: Sequence[str], body: Iterable[Sequence[Any]]) -> str:
    """A Markdown table."""
    lines = [
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---" for _ in header) + "|",
    ]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in body]
    return "\n".join(lines)


def _pct(summary: stats.Summary | None) -> str:
    if summary is None or summary.n == 0:
        return "–"
    if summary.n == 1:
        return f"{100 * summary.mean:.2f}"
    return f"{100 * summary.mean:.2f} ± {100 * summary.std:.2f}"


def accuracy_table(selected: dict[str, list[Score]], regs) -> str:
    """Mean ± std accuracy and average rank per analysis."""
    summaries = {a: stats.table(s).get(None, {}) for a, s in selected.items()}
    ranks = {a: stats.average_ranks(s, regs)[0] for a, s in selected.items()}
    header = ["regularizer"] + [
        f"{a} ({num_cells(s)} cells)" for a, s in selected.items()
    ]
    accuracy = markdown(
        header,
        ([r] + [_pct(summaries[a].get(r)) for a in selected] for r in regs),
    )
    rank = markdown(
        ["regularizer"] + list(selected),
        ([r] + [f"{ranks[a][r]:.2f}" for a in selected] for r in regs),
    )
    return (
        "Mean ± std test accuracy (%) over matched cells:\n\n"
        f"{accuracy}\n\nAverage rank (1 = best) within each cell:\n\n{rank}"
    )


def grouped_table(rows: Sequence[Row], by: str, regs) -> str:
    """Overall accuracy per value of `by` (rows) and regularizer."""
    rows = [r for r in rows if r["regularizer"] in regs]
    body = []
    for group in sorted({r[by] for r in rows}):
        selected = matched(rows, "overall", **{by: group})
        summaries = stats.table(selected).get(None, {})
        ranks, _ = stats.average_ranks(selected, regs)
        best = min(regs, key=lambda r: ranks.get(r, np.inf))
        cells = [_pct(summaries.get(r)) for r in regs]
        body.append([group, num_cells(selected), *cells, best])
    return markdown([by, "cells", *regs, "best avg rank"], body)


_TEST_HEADER = [
    "vs",
    "units",
    "W/T/L",
    "mean diff (pp)",
    "95% CI (pp)",
    "rank-biserial r",
    "p",
    "Holm p",
]


def _test_row(test: verdicts.Test) -> list[str]:
    d = np.asarray(test.differences)
    low, high = test.ci95
    return [
        test.other,
        test.n,
        f"{np.sum(d > 0)}/{np.sum(d == 0)}/{np.sum(d < 0)}",
        verdicts._pp(test.mean),
        f"{verdicts._pp(low)} to {verdicts._pp(high)}",
        f"{test.rank_biserial:+.2f}",
        verdicts._p(test.p_value),
        verdicts._p(test.p_holm),
    ]


def comparison_tables(rows: Sequence[Row], regs, reference: str) -> str:
    """The reference vs each regularizer, per analysis, over units."""
    parts = []
    for analysis in stats.ANALYSES:
        units = verdicts.unit_scores(rows, analysis, regs)
        if not units or reference not in regs:
            continue
        claims = {r: +1 for r in regs if r != reference}
        tests = verdicts.family(units, reference, claims, analysis)
        table = markdown(_TEST_HEADER, (_test_row(t) for t in tests))
        parts.append(f"**{analysis}** ({len(units)} units)\n\n{table}")
    return "\n\n".join(parts)


def ablation_table(rows: Sequence[Row]) -> str | None:
    """Each ablation vs its regularizer (overall, over units), or None."""
    present = {r["regularizer"] for r in rows}
    tests = []
    for main, ablation in ABLATION_PAIRS:
        if {main, ablation} <= present:
            units = verdicts.unit_scores(rows, "overall", (main, ablation))
            tests += verdicts.family(units, main, {ablation: +1}, main)
    if not tests:
        return None
    header = ["regularizer", *_TEST_HEADER]
    body = ([t.label, *_test_row(t)] for t in tests)
    return markdown(header, body)


def scarcity_table(rows: Sequence[Row], reference: str) -> str:
    """The reference's advantage per train fraction, over units."""
    advantage = verdicts.scarcity_units(rows, reference)
    if not advantage:
        return "No train fraction has every regularizer."
    body = []
    for fraction, units in advantage.items():
        s = stats.summarize(list(units.values()))
        ci = "–" if np.isnan(s.ci95) else f"± {100 * s.ci95:.2f}"
        body.append([f"{fraction:g}", s.n, f"{100 * s.mean:+.2f}", ci])
    header = ["train fraction", "units", "advantage (pp)", "95% CI (pp)"]
    return markdown(header, body)


def sensitivity_table(points: Sequence[stats.LamPoint]) -> str:
    """Accuracy against `lam` per regularizer (`stats.sensitivity`).

    Example:

    >>> print(sensitivity_table(stats.sensitivity(rows)))  # doctest: +SKIP
    | regularizer | lam | cells | accuracy (%) | minus none (pp) | ...
    """
    body = []
    for p in points:
        versus = p.versus_none
        body.append(
            [
                p.regularizer,
                f"{p.lam:.3g}" + (" (study)" if p.default else ""),
                f"{np.log10(p.lam):.2f}",
                p.accuracy.n,
                _pct(p.accuracy),
                "–" if versus is None else _pp(versus),
                _pct(p.noisy),
            ]
        )
    return markdown(
        [
            "regularizer",
            "lam",
            "log10 lam",
            "cells",
            "accuracy (%)",
            "minus none (pp, 95% CI)",
            "noisy accuracy (%)",
        ],
        body,
    )


def _pp(summary: stats.Summary) -> str:
    if summary.n < 2:
        return f"{100 * summary.mean:+.2f}"
    return f"{100 * summary.mean:+.2f} ± {100 * summary.ci95:.2f}"
