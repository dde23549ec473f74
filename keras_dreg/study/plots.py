"""The study report's plots (matplotlib's object API, no pyplot state).

- `accuracy_by_regularizer.png`: mean accuracy of each regularizer per
  analysis, with 95% confidence intervals over matched cells;
- `rank_heatmap.png`: average rank (1 = best) of each regularizer under
  each activation;
- `scarcity_advantage.png`: DREG's advantage over the other
  regularizers versus the training fraction, per unit of analysis;
- `lam_sensitivity.png` (studies with a `lam` grid): accuracy against
  `lam` for each regularizer run at several strengths.
"""

from pathlib import Path

import numpy as np

from keras_dreg.study import stats
from keras_dreg.study import verdicts
from keras_dreg.study.tables import matched
from keras_dreg.study.tables import num_cells

PLOTS = {
    "accuracy": "accuracy_by_regularizer.png",
    "ranks": "rank_heatmap.png",
    "scarcity": "scarcity_advantage.png",
    "sensitivity": "lam_sensitivity.png",
}


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


def plot_accuracy(analyses, regs, reference, path: Path) -> None:
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
        ax.set_title(f"{analysis} ({num_cells(selected)} cells)")
        ax.set_xlabel("test accuracy (%)")
        ax.grid(axis="x", alpha=0.3)
    axes[0].set_yticks(range(len(regs)), regs)
    axes[0].invert_yaxis()
    fig.suptitle("Accuracy by regularizer (mean, 95% CI)")
    fig.savefig(path, dpi=120)


def plot_rank_heatmap(rows, regs, path: Path) -> None:
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


def plot_scarcity(rows, regs, reference, path: Path) -> bool:
    """The reference's advantage versus train fraction; False if no data.

    Thin lines: the mean over units of the reference minus each other
    regularizer; thick: minus the mean of the others, with its t-based
    95% confidence interval over units.
    """
    advantage = verdicts.scarcity_units(rows, reference)
    if len(advantage) < 2:
        return False
    fractions = list(advantage)
    fig = _figure(6.0, 4.0)
    ax = fig.subplots()
    main = [r for r in regs if r in verdicts.REGULARIZERS]
    for other in [r for r in main if r != reference]:
        diffs = []
        for f in fractions:
            analysis = "overall" if f >= 1.0 else "scarcity"
            units = verdicts.unit_scores(rows, analysis, main, train_fraction=f)
            diffs.append(
                np.mean([u[reference] - u[other] for u in units.values()])
            )
        ax.plot(
            fractions,
            100 * np.asarray(diffs),
            marker=".",
            lw=1,
            alpha=0.7,
            label=other,
        )
    summaries = [stats.summarize(list(u.values())) for u in advantage.values()]
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


def plot_sensitivity(points, reference, path: Path) -> bool:
    """Accuracy against `lam` per regularizer; False if no grid was run.

    One line per regularizer (mean over its matched cells, 95% CI), the
    study strength marked by a ring; log-scaled `lam`.
    """
    if not points:
        return False
    fig = _figure(6.0, 4.0)
    ax = fig.subplots()
    for regularizer in dict.fromkeys(p.regularizer for p in points):
        own = [p for p in points if p.regularizer == regularizer]
        line = ax.errorbar(
            [p.lam for p in own],
            [100 * p.accuracy.mean for p in own],
            yerr=[
                0 if np.isnan(p.accuracy.ci95) else 100 * p.accuracy.ci95
                for p in own
            ],
            marker="o",
            capsize=3,
            color=_color(regularizer, reference)
            if regularizer == reference
            else None,
            label=regularizer,
        )
        for p in own:
            if p.default:
                ax.plot(
                    p.lam,
                    100 * p.accuracy.mean,
                    "o",
                    ms=12,
                    mfc="none",
                    color=line[0].get_color(),
                )
    ax.set_xscale("log")
    ax.set_xlabel("lam")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("Accuracy against lam (ring: the study strength)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    fig.savefig(path, dpi=120)
    return True
