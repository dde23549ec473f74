"""The study report: Markdown tables, PNG plots and the preprint's findings.

`write_report(rows, out_dir)` writes `report.md` and three plots into
`out_dir`:

- `accuracy_by_regularizer.png`: mean accuracy of each regularizer per
  analysis, with 95% confidence intervals;
- `rank_heatmap.png`: average rank (1 = best) of each regularizer under
  each activation;
- `scarcity_advantage.png`: DREG's advantage over the other
  regularizers versus the training fraction.

Only matched cells count: cells (runs equal in all but the regularizer)
where every regularizer of the study finished. The findings section
checks each finding of the preprint (`FINDINGS`) and gives one verdict:

- REPRODUCED / NOT REPRODUCED, with the numbers behind it. Claims of
  rank ("highest", "second", "best") are judged on mean accuracies, as
  the preprint states them; the Wilcoxon test of the gap is shown
  beside. Claims of significance need a Holm-adjusted two-sided
  p <= 0.05 in the claimed direction.
- INCONCLUSIVE when the study cannot decide: a regularizer, activation,
  regime or fraction the claim needs is missing, or there are too few
  matched cells for any Wilcoxon test to reach p <= 0.05.
"""

import dataclasses
from collections.abc import Iterable
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from keras_dreg.regularizers import REGULARIZERS
from keras_dreg.study import stats
from keras_dreg.study.stats import ALPHA
from keras_dreg.study.stats import REFERENCE
from keras_dreg.study.stats import Row
from keras_dreg.study.stats import Score

REPRODUCED = "REPRODUCED"
NOT_REPRODUCED = "NOT REPRODUCED"
INCONCLUSIVE = "INCONCLUSIVE"
SIGNIFICANCE_BASELINES = ("none", "weight_decay", "igpen")
NOISE_LEADER = "spectral_norm"

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
        "Under GELU, DREG is the best regularizer overall and on messy data."
    ),
    "scarcity": "DREG's advantage grows as training data shrinks.",
}
PLOTS = {
    "accuracy": "accuracy_by_regularizer.png",
    "ranks": "rank_heatmap.png",
    "scarcity": "scarcity_advantage.png",
}


@dataclasses.dataclass(frozen=True)
class Finding:
    """A finding of the preprint, this study's verdict and its evidence."""

    name: str
    claim: str
    verdict: str
    evidence: str


# --------------------------------------------------------------------------
# Selections.


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


def _means(selected: Sequence[Score]) -> list[tuple[str, float]]:
    """`(regularizer, mean)`, best first."""
    summaries = stats.table(selected).get(None, {})
    means = [(r, s.mean) for r, s in summaries.items()]
    return sorted(means, key=lambda item: -item[1])


def _num_cells(selected: Sequence[Score]) -> int:
    return len({s.cell for s in selected})


# --------------------------------------------------------------------------
# Findings.


def assess_findings(
    rows: Sequence[Row], reference: str = REFERENCE
) -> list[Finding]:
    """The verdict on each of the preprint's findings (`FINDINGS`).

    Example:

    >>> for f in assess_findings(rows):  # doctest: +SKIP
    ...     print(f.verdict, f.claim)
    """
    return [
        _ranked(rows, "overall", "overall", reference, position=1),
        _ranked(rows, "clean", "clean", reference, position=1),
        _significance(rows, reference),
        _ranked(
            rows, "noise", "noise", reference, position=2, leader=NOISE_LEADER
        ),
        _gelu(rows, reference),
        _scarcity(rows, reference),
    ]


def _finding(name: str, verdict: str, evidence: str) -> Finding:
    return Finding(name, FINDINGS[name], verdict, evidence)


def _rank_check(
    selected: Sequence[Score],
    label: str,
    reference: str,
    position: int = 1,
    leader: str | None = None,
) -> tuple[str, str]:
    """Verdict and evidence of "the reference ranks `position`" claims.

    With `leader`, the claim also needs `leader` in first place.
    """
    means = _means(selected)
    names = [r for r, _ in means]
    needed = {reference} | ({leader} if leader else set())
    n = _num_cells(selected)
    if not needed <= set(names) or len(names) < position:
        return INCONCLUSIVE, f"{label}: the study lacks {sorted(needed)}."
    if stats.best_attainable_p(n) > ALPHA:
        return INCONCLUSIVE, (
            f"{label}: only {n} matched cells, too few for a Wilcoxon test "
            f"to reach p <= {ALPHA}."
        )
    order = ", ".join(f"{r} {100 * m:.2f}" for r, m in means)
    place = names.index(reference) + 1
    ok = place == position and (leader is None or names[0] == leader)
    rival = names[1] if place == 1 else names[0]
    comparison = {c.other: c for c in stats.compare(selected, reference)}
    gap = comparison[rival]
    evidence = (
        f"{label} ({n} cells), mean accuracy % best first: {order}. "
        f"{reference} is #{place}; vs {rival}: median difference "
        f"{100 * gap.median_diff:+.2f} pp, p = {_p(gap.p_value)} "
        f"(Holm {_p(gap.p_holm)})."
    )
    if not gap.p_value <= ALPHA:
        evidence += f" That gap is not significant at p <= {ALPHA}."
    return (REPRODUCED if ok else NOT_REPRODUCED), evidence


def _ranked(rows, name, analysis, reference, position, leader=None):
    selected = matched(rows, analysis)
    verdict, evidence = _rank_check(
        selected, analysis, reference, position, leader
    )
    return _finding(name, verdict, evidence)


def _significance(rows: Sequence[Row], reference: str) -> Finding:
    selected = matched(rows, "overall")
    family = {c.other: c for c in stats.compare(selected, reference)}
    missing = [b for b in SIGNIFICANCE_BASELINES if b not in family]
    if reference not in {s.regularizer for s in selected} or missing:
        return _finding(
            "significance",
            INCONCLUSIVE,
            f"The study lacks {missing or [reference]}.",
        )
    tests = [family[b] for b in SIGNIFICANCE_BASELINES]
    evidence = "; ".join(
        f"vs {c.other}: {c.wins}/{c.ties}/{c.losses} wins/ties/losses, "
        f"median {100 * c.median_diff:+.2f} pp, r = {c.rank_biserial:+.2f}, "
        f"p = {_p(c.p_value)}, Holm p = {_p(c.p_holm)}"
        for c in tests
    )
    evidence = f"overall, {len(family)} tests Holm-corrected: {evidence}."
    better = [c.p_holm <= ALPHA and c.rank_biserial > 0 for c in tests]
    worse = [c.p_holm <= ALPHA and c.rank_biserial < 0 for c in tests]
    untestable = [
        stats.best_attainable_p(c.wins + c.losses, len(family)) > ALPHA
        for c in tests
    ]
    if any(worse):
        verdict = NOT_REPRODUCED
    elif all(better):
        verdict = REPRODUCED
    elif any(untestable):
        verdict = INCONCLUSIVE
        evidence += " Too few non-tied cells to reach significance."
    else:
        verdict = NOT_REPRODUCED
    return _finding("significance", verdict, evidence)


def _gelu(rows: Sequence[Row], reference: str) -> Finding:
    checks = [
        _rank_check(matched(rows, a, activation="gelu"), label, reference)
        for a, label in (("overall", "GELU overall"), ("messy", "GELU messy"))
    ]
    verdicts = {v for v, _ in checks}
    if INCONCLUSIVE in verdicts:
        verdict = INCONCLUSIVE
    elif verdicts == {REPRODUCED}:
        verdict = REPRODUCED
    else:
        verdict = NOT_REPRODUCED
    return _finding("gelu", verdict, " ".join(e for _, e in checks))


def _scarcity(rows: Sequence[Row], reference: str) -> Finding:
    advantage = stats.advantage_by_fraction(rows, reference)
    if len(advantage) < 2 or 1.0 not in advantage:
        return _finding(
            "scarcity",
            INCONCLUSIVE,
            "Needs train fraction 1.0 and at least one smaller fraction, "
            "each with every regularizer.",
        )
    means = {f: float(np.mean(list(c.values()))) for f, c in advantage.items()}
    fractions = sorted(means)
    smallest = fractions[0]
    shared = sorted(set(advantage[smallest]) & set(advantage[1.0]))
    x = [advantage[smallest][c] for c in shared]
    y = [advantage[1.0][c] for c in shared]
    _, p = stats.wilcoxon(x, y)
    trend = ", ".join(f"{f:g}: {100 * means[f]:+.2f} pp" for f in fractions)
    evidence = (
        f"{reference} minus the mean of the others, by train fraction: "
        f"{trend}. Fraction {smallest:g} vs 1.0 over {len(shared)} "
        f"matched cells: Wilcoxon p = {_p(p)}."
    )
    if stats.best_attainable_p(len(shared)) > ALPHA:
        return _finding(
            "scarcity",
            INCONCLUSIVE,
            evidence + " Too few cells to reach significance.",
        )
    pairwise = _pairwise(rows, reference, fractions)
    growing = [o for o, diffs in pairwise.items() if _decreasing(diffs)]
    evidence += (
        f" Against single regularizers it grows vs {len(growing)} of "
        f"{len(pairwise)}" + (f" ({', '.join(growing)})." if growing else ".")
    )
    grows = _decreasing([means[f] for f in fractions])
    return _finding(
        "scarcity", REPRODUCED if grows else NOT_REPRODUCED, evidence
    )


def _decreasing(values: Sequence[float]) -> bool:
    """Strictly decreasing: the advantage is larger at smaller fractions."""
    return all(a > b for a, b in zip(values, values[1:]))


def _p(p: float) -> str:
    if np.isnan(p):
        return "n/a"
    return f"{p:.2g}" if p < 0.001 else f"{p:.3f}"


# --------------------------------------------------------------------------
# Tables.


def _order(names: Iterable[str]) -> list[str]:
    """The study's regularizer order, then any others alphabetically."""
    names = set(names)
    known = [r for r in REGULARIZERS if r in names]
    return known + sorted(names - set(known))


def _table(header: Sequence[str], body: Iterable[Sequence[Any]]) -> str:
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


def _analyses(rows: Sequence[Row]) -> dict[str, list[Score]]:
    """The matched scores of each analysis that has any."""
    selected = {a: matched(rows, a) for a in stats.ANALYSES}
    return {a: s for a, s in selected.items() if s}


def _accuracy_table(analyses: dict[str, list[Score]], regs) -> str:
    summaries = {a: stats.table(s).get(None, {}) for a, s in analyses.items()}
    ranks = {a: stats.average_ranks(s, regs)[0] for a, s in analyses.items()}
    header = ["regularizer"] + [
        f"{a} ({_num_cells(s)} cells)" for a, s in analyses.items()
    ]
    accuracy = _table(
        header,
        ([r] + [_pct(summaries[a].get(r)) for a in analyses] for r in regs),
    )
    rank = _table(
        ["regularizer"] + list(analyses),
        ([r] + [f"{ranks[a][r]:.2f}" for a in analyses] for r in regs),
    )
    return (
        "Mean ± std test accuracy (%) over matched cells:\n\n"
        f"{accuracy}\n\nAverage rank (1 = best) within each cell:\n\n{rank}"
    )


def _grouped_table(rows, by: str, regs) -> str:
    """Overall accuracy per value of `by` (rows) and regularizer."""
    groups = sorted({r[by] for r in rows})
    body = []
    for group in groups:
        selected = matched(rows, "overall", **{by: group})
        summaries = stats.table(selected).get(None, {})
        ranks, _ = stats.average_ranks(selected, regs)
        best = min(regs, key=lambda r: ranks.get(r, np.inf))
        cells = [_pct(summaries.get(r)) for r in regs]
        body.append([group, _num_cells(selected), *cells, best])
    return _table([by, "cells", *regs, "best avg rank"], body)


def _wilcoxon_tables(analyses, regs, reference) -> str:
    others = [r for r in regs if r != reference]
    parts = []
    for analysis, selected in analyses.items():
        if reference not in {s.regularizer for s in selected}:
            continue
        body = [
            [
                c.other,
                c.n,
                f"{c.wins}/{c.ties}/{c.losses}",
                f"{100 * c.mean_diff:+.2f}",
                f"{100 * c.median_diff:+.2f}",
                f"{c.rank_biserial:+.2f}",
                "–" if np.isnan(c.statistic) else f"{c.statistic:g}",
                _p(c.p_value),
                _p(c.p_holm),
            ]
            for c in stats.compare(selected, reference, others)
        ]
        header = [
            "vs",
            "cells",
            "W/T/L",
            "mean diff (pp)",
            "median diff (pp)",
            "rank-biserial r",
            "statistic",
            "p",
            "Holm p",
        ]
        parts.append(f"**{analysis}**\n\n{_table(header, body)}")
    return "\n\n".join(parts)


def _scarcity_table(rows, reference) -> str:
    advantage = stats.advantage_by_fraction(rows, reference)
    if not advantage:
        return "No train fraction has every regularizer."
    body = []
    for fraction, cells in advantage.items():
        s = stats.summarize(list(cells.values()))
        ci = "–" if np.isnan(s.ci95) else f"± {100 * s.ci95:.2f}"
        body.append([f"{fraction:g}", s.n, f"{100 * s.mean:+.2f}", ci])
    header = ["train fraction", "cells", "advantage (pp)", "95% CI (pp)"]
    return _table(header, body)


# --------------------------------------------------------------------------
# Plots (matplotlib's object API with the Agg canvas: no pyplot state).


def _figure(width: float, height: float):
    try:
        from matplotlib.figure import Figure
    except ModuleNotFoundError as error:
        raise ModuleNotFoundError(
            "The study report draws plots with matplotlib: "
            "`pip install matplotlib`."
        ) from error
    return Figure(figsize=(width, height), layout="constrained")


def _color(regularizer: str, reference: str) -> str:
    return "tab:red" if regularizer == reference else "tab:blue"


def _plot_accuracy(analyses, regs, reference, path: Path) -> None:
    """Mean accuracy with 95% confidence intervals, one panel per analysis."""
    fig = _figure(2.9 * len(analyses) + 0.8, 0.42 * len(regs) + 1.4)
    axes = fig.subplots(1, len(analyses), sharey=True, squeeze=False)[0]
    for ax, (analysis, selected) in zip(axes, analyses.items()):
        summaries = stats.table(selected).get(None, {})
        for y, reg in enumerate(regs):
            s = summaries.get(reg)
            if s is None:
                continue
            ax.errorbar(
                100 * s.mean,
                y,
                xerr=0 if np.isnan(s.ci95) else 100 * s.ci95,
                fmt="o",
                capsize=3,
                color=_color(reg, reference),
            )
        ax.set_title(f"{analysis} ({_num_cells(selected)} cells)")
        ax.set_xlabel("test accuracy (%)")
        ax.grid(axis="x", alpha=0.3)
    axes[0].set_yticks(range(len(regs)), regs)
    axes[0].invert_yaxis()
    fig.suptitle("Accuracy by regularizer (mean, 95% CI)")
    fig.savefig(path, dpi=120)


def _plot_rank_heatmap(rows, regs, path: Path) -> None:
    """Average rank (overall analysis) per activation and regularizer."""
    activations = sorted({r["activation"] for r in rows})
    ranks = np.array(
        [
            [
                stats.average_ranks(
                    matched(rows, "overall", activation=a), regs
                )[0][r]
                for r in regs
            ]
            for a in activations
        ]
    )
    fig = _figure(1.1 * len(regs) + 2.2, 0.55 * len(activations) + 1.8)
    ax = fig.subplots()
    image = ax.imshow(ranks, cmap="viridis_r", vmin=1, vmax=len(regs))
    for (i, j), value in np.ndenumerate(ranks):
        ax.text(
            j,
            i,
            f"{value:.2f}",
            ha="center",
            va="center",
            color="black" if value < (1 + len(regs)) / 2 else "white",
        )
    ax.set_xticks(range(len(regs)), regs, rotation=30, ha="right")
    ax.set_yticks(range(len(activations)), activations)
    ax.set_title("Average rank by activation (1 = best)")
    fig.colorbar(image, ax=ax, label="average rank")
    fig.savefig(path, dpi=120)


def _plot_scarcity(rows, regs, reference, path: Path) -> bool:
    """The reference's advantage versus train fraction; False if no data."""
    advantage = stats.advantage_by_fraction(rows, reference)
    if len(advantage) < 2:
        return False
    fractions = list(advantage)
    fig = _figure(6.0, 4.0)
    ax = fig.subplots()
    for other, diffs in _pairwise(rows, reference, fractions).items():
        ax.plot(
            fractions,
            100 * np.asarray(diffs),
            marker=".",
            lw=1,
            alpha=0.7,
            label=other,
        )
    summaries = [stats.summarize(list(c.values())) for c in advantage.values()]
    ax.errorbar(
        fractions,
        [100 * s.mean for s in summaries],
        yerr=[0 if np.isnan(s.ci95) else 100 * s.ci95 for s in summaries],
        color="black",
        lw=2.5,
        capsize=4,
        marker="o",
        label="vs mean of others (95% CI)",
    )
    ax.axhline(0, color="grey", lw=0.8)
    ax.set_xscale("log")
    ax.set_xticks(fractions, [f"{f:g}" for f in fractions])
    ax.minorticks_off()
    ax.set_xlabel("train fraction")
    ax.set_ylabel(f"{reference} accuracy minus other (pp)")
    ax.set_title(f"{reference}'s advantage as training data shrinks")
    ax.legend(fontsize="small")
    fig.savefig(path, dpi=120)
    return True


def _pairwise(
    rows: Sequence[Row], reference: str, fractions: Sequence[float]
) -> dict[str, list[float]]:
    """Mean paired difference, reference minus each other, per fraction."""
    selected = [
        matched(
            rows,
            "overall" if f >= 1.0 else "scarcity",
            train_fraction=f,
        )
        for f in fractions
    ]
    others = _order({s.regularizer for s in selected[0]} - {reference})
    return {
        other: [
            float(np.mean(np.subtract(*stats.paired(s, reference, other))))
            for s in selected
        ]
        for other in others
    }


# --------------------------------------------------------------------------
# The report.


def write_report(
    rows: Sequence[Row], out_dir: str | Path, reference: str = REFERENCE
) -> Path:
    """Writes `report.md` and the plots into `out_dir`; returns the file.

    Args:
        rows: Stored runs (`store.ResultStore.rows()`).
        out_dir: Folder for the report (created if missing).
        reference: The regularizer compared against all others.

    Example:

    >>> with ResultStore("results.sqlite") as store:  # doctest: +SKIP
    ...     write_report(store.rows(), "report/")
    PosixPath('report/report.md')
    """
    rows = list(rows)
    if not rows:
        raise ValueError("The database holds no finished runs.")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    regs = _order({r["regularizer"] for r in rows})
    analyses = _analyses(rows)
    _plot_accuracy(analyses, regs, reference, out / PLOTS["accuracy"])
    _plot_rank_heatmap(rows, regs, out / PLOTS["ranks"])
    has_scarcity = _plot_scarcity(
        rows, regs, reference, out / PLOTS["scarcity"]
    )
    sections = [
        _header(rows),
        _findings_section(assess_findings(rows, reference)),
        "## Accuracy by regularizer\n\n"
        f"![accuracy]({PLOTS['accuracy']})\n\n"
        "The intervals include the spread between data sets; the paired "
        "tests below compare regularizers within cells.\n\n"
        + _accuracy_table(analyses, regs),
        "## By activation (overall analysis)\n\n"
        f"![ranks]({PLOTS['ranks']})\n\n"
        + _grouped_table(rows, "activation", regs),
        "## By data set (overall analysis)\n\n"
        + _grouped_table(rows, "dataset", regs),
        f"## {reference} versus each regularizer (paired Wilcoxon)\n\n"
        f"Differences are {reference} minus the other, per matched cell; "
        "W/T/L counts wins, ties and losses; the Holm correction runs over "
        "the tests of one analysis.\n\n"
        + _wilcoxon_tables(analyses, regs, reference),
        "## Data scarcity\n\n"
        + (f"![scarcity]({PLOTS['scarcity']})\n\n" if has_scarcity else "")
        + f"{reference}'s accuracy minus the mean of the other regularizers "
        "in the same cell, per train fraction:\n\n"
        + _scarcity_table(rows, reference),
        _METHOD,
    ]
    path = out / "report.md"
    path.write_text("\n\n".join(sections) + "\n")
    return path


def _header(rows: Sequence[Row]) -> str:
    def values(field):
        return ", ".join(str(v) for v in sorted({r[field] for r in rows}))

    versions = sorted(
        {f"{k} {v}" for r in rows for k, v in r["versions"].items()}
    )
    hours = sum(r["wall_time"] for r in rows) / 3600
    regularizers = {r["regularizer"] for r in rows}
    cells = stats.by_cell(stats.to_score(r) for r in rows)
    complete = sum(regularizers <= set(c) for c in cells.values())
    return (
        "# DREG study report\n\n"
        f"{len(rows)} runs, {hours:.2f} h of training in total; "
        f"{complete} of {len(cells)} cells have a run of every "
        "regularizer (only those count below).\n\n"
        f"- backends: {values('backend')}\n"
        f"- activations: {values('activation')}\n"
        f"- regularizers: {values('regularizer')}\n"
        f"- data sets: {values('dataset')}\n"
        f"- train fractions: {values('train_fraction')}\n"
        f"- seeds: {values('seed')}\n"
        f"- epochs: {values('epochs')}; batch size: {values('batch_size')}; "
        f"learning rate: {values('learning_rate')}\n"
        f"- versions: {', '.join(versions)}"
    )


def _findings_section(findings: Sequence[Finding]) -> str:
    summary = _table(
        ["#", "finding of the preprint", "verdict"],
        ([i, f.claim, f"**{f.verdict}**"] for i, f in enumerate(findings, 1)),
    )
    details = "\n\n".join(
        f"{i}. **{f.verdict}**: {f.claim}\n   {f.evidence}"
        for i, f in enumerate(findings, 1)
    )
    return (
        "## The preprint's findings\n\n"
        f"{summary}\n\n{details}\n\n"
        "Rank claims are judged on mean accuracy over matched cells, with "
        "the Wilcoxon test of the gap to the nearest rival shown beside; "
        f"significance claims need a Holm-adjusted p <= {ALPHA} in the "
        "claimed direction. INCONCLUSIVE means the study cannot decide: "
        "a needed regularizer, activation or fraction is missing, or too "
        f"few matched cells exist for any test to reach p <= {ALPHA}."
    )


_METHOD = """## Method

- Runs are matched in cells: equal in every setting but the regularizer
  (activation, data set, train fraction, seed, epochs, batch size,
  learning rate, backend). Only cells where every regularizer finished
  count.
- Analyses: *overall* = every data set at train fraction 1.0, clean test
  accuracy; *clean* / *messy* = the clean / messy data sets at fraction
  1.0 (messy sets train on corrupted data, and are scored on the clean
  test set); *noise* = every data set at fraction 1.0, accuracy on
  corrupted test inputs; *scarcity* = train fractions below 1.0.
- Paired two-sided Wilcoxon signed-rank tests (`scipy.stats.wilcoxon`,
  zero differences dropped), Holm-corrected within each analysis; effect
  sizes: median paired difference and the matched-pairs rank-biserial
  correlation (positive: DREG better). Ranks via `scipy.stats.rankdata`
  (ties share the average rank). Confidence intervals: t-based 95%."""
