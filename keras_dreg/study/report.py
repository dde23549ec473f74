"""The study report: provenance, verdicts, tables and plots.

`write_report(rows, out_dir)` writes `report.md` and the plots of
`keras_dreg.study.plots` into `out_dir`. The report opens with what
produced the runs (preset or config file, strengths, commit, backend,
versions), how and where they were run and which failed (given the
store's `slices` and `failures`) and how the study differs from the
preprint, then the verdict
on each of the preprint's findings (`keras_dreg.study.verdicts`: three-
way, Holm-corrected, over units of analysis, each INCONCLUSIVE one with
the smallest effect the run could have detected), then the tables, and
for a study with a `lam` grid the accuracy against `lam`. Every number
is computed from `rows`, the stored runs.
"""

from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

from keras_dreg.study import plots
from keras_dreg.study import stats
from keras_dreg.study import tables
from keras_dreg.study import verdicts
from keras_dreg.study.settings import ABLATIONS
from keras_dreg.study.stats import ALPHA
from keras_dreg.study.stats import REFERENCE
from keras_dreg.study.stats import Row
from keras_dreg.study.verdicts import Finding
from keras_dreg.study.verdicts import assess_findings

PLOTS = plots.PLOTS

DIFFERENCES = """## How this differs from the preprint

- **Data sets.** The preprint's eight data sets are not named in its
  abstract; this study uses offline stand-ins (scikit-learn digits and
  breast cancer, MNIST-1D, a synthetic text task), each clean and with
  a "messy" twin whose training set this package corrupts. The quick
  preset uses only digits and MNIST-1D (no tabular, no NLP data).
- **NLP.** The only text data is `text_rule`, a synthetic topic task
  with a negation rule, classified by a one-block transformer: a
  stand-in for the preprint's NLP data, not a replication of it.
- **Regimes.** Clean, messy, noise (accuracy on corrupted test inputs)
  and data scarcity (train fractions below 1.0) are this package's
  definitions (`keras_dreg.study.regimes`), derived from the abstract.
- **The DREG formula.** The preprint's full text is not available. The
  penalty is this project's reading of "layer-wise Jacobian":
  `lam * sum_l mean_{batch, positions} sum_j phi'(z_j)^2 ||w_j||^2`
  (the contractive auto-encoder's closed form per layer), at the
  preprint's `lam = 10**-2.5`.
- **Peers.** The input-output Jacobian penalty is this project's choice
  of sixth regularizer; every strength but DREG's is borrowed or chosen
  (see the strengths above); spectral normalization leaves the output
  layer unnormalized.
- **Scale.** Small models and few epochs, on CPUs; one backend per run.
- **Statistics.** Tests are over units (seeds averaged within a data
  set, activation and fraction), not over runs; verdicts are three-way
  (see below)."""

_METHOD = f"""## Method

- Runs are matched in cells: equal in every setting but the regularizer
  (activation, data set, train fraction, seed, epochs, batch size,
  learning rate, backend, code). Only cells where every regularizer
  finished count. Accuracy tables average cells; tests average the
  seeds of each unit (data set, activation, fraction) first, so n counts
  units.
- Analyses: *overall* = every data set at train fraction 1.0, clean test
  accuracy; *clean* / *messy* = the clean / messy data sets at fraction
  1.0 (messy sets train on corrupted data, and are scored on the clean
  test set); *noise* = every data set at fraction 1.0, accuracy on
  corrupted test inputs; *scarcity* = train fractions below 1.0.
- Paired two-sided Wilcoxon signed-rank tests over units
  (`scipy.stats.wilcoxon`, zero differences dropped), Holm-corrected
  over the comparisons a finding needs (in the comparison tables: over
  the five comparisons of one analysis); effect sizes: mean paired
  difference with a t-based 95% confidence interval
  (`scipy.stats.ttest_1samp`) and the matched-pairs rank-biserial
  correlation (positive: DREG better).
- Verdicts: REPRODUCED when every comparison the finding needs has Holm
  p <= {ALPHA} in the claimed direction; NOT REPRODUCED when one has
  Holm p <= {ALPHA} against it; otherwise INCONCLUSIVE, with the
  smallest mean difference the run could detect at
  {100 * verdicts.POWER:.0f}% power (t approximation, Holm's strictest
  level, the observed spread of the differences).
- Calibration: `tests/test_study_calibration.py` runs these verdicts on
  simulated studies with a known truth (`keras_dreg.study.simulate`)."""


def write_report(
    rows: Sequence[Row],
    out_dir: str | Path,
    reference: str = REFERENCE,
    slices: Sequence[dict] = (),
    failures: Sequence[dict] = (),
) -> Path:
    """Writes `report.md` and the plots into `out_dir`; returns the file.

    The report is a function of its arguments only (no clock, no
    environment), so the same database always gives the same report.

    Args:
        rows: Stored runs (`store.ResultStore.rows()`).
        out_dir: Folder for the report (created if missing).
        reference: The regularizer compared against all others.
        slices: The `run_study` calls that made them
            (`ResultStore.slices()`), shown as *How it was run*.
        failures: Runs that failed (`ResultStore.failures()`), listed
            with their errors.

    Example:

    >>> with ResultStore("results.sqlite") as store:  # doctest: +SKIP
    ...     write_report(
    ...         store.rows(), "report/", slices=store.slices(),
    ...         failures=store.failures(),
    ...     )
    PosixPath('report/report.md')
    """
    rows = list(rows)
    if not rows:
        raise ValueError("The database holds no finished runs.")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    grid = stats.sensitivity(rows)
    every_run = rows
    rows = stats.at_study_strength(rows)
    main = [r for r in rows if r["regularizer"] not in ABLATIONS]
    regs = tables.order({r["regularizer"] for r in main})
    selected = tables.analyses(rows)
    plots.plot_accuracy(selected, regs, reference, out / PLOTS["accuracy"])
    plots.plot_rank_heatmap(main, regs, out / PLOTS["ranks"])
    has_scarcity = plots.plot_scarcity(
        main, regs, reference, out / PLOTS["scarcity"]
    )
    findings = assess_findings(main, reference)
    sections = [header(every_run)]
    if slices or failures:
        sections.append(how_it_was_run(slices, failures))
    sections += [
        DIFFERENCES,
        findings_section(findings),
        "## Accuracy by regularizer\n\n"
        f"![accuracy]({PLOTS['accuracy']})\n\n"
        "The intervals include the spread between data sets; the paired "
        "comparisons below compare regularizers within units.\n\n"
        + tables.accuracy_table(selected, regs),
        "## By activation (overall analysis)\n\n"
        f"![ranks]({PLOTS['ranks']})\n\n"
        + tables.grouped_table(main, "activation", regs),
        "## By data set (overall analysis)\n\n"
        + tables.grouped_table(main, "dataset", regs),
        f"## {reference} versus each regularizer (paired, over units)\n\n"
        f"Differences are {reference} minus the other, per unit (seeds "
        "averaged); W/T/L counts units won, tied and lost; Holm runs over "
        "the five tests of one analysis.\n\n"
        + tables.comparison_tables(main, regs, reference),
        "## Data scarcity\n\n"
        + (f"![scarcity]({PLOTS['scarcity']})\n\n" if has_scarcity else "")
        + f"{reference}'s accuracy minus the mean of the other "
        "regularizers, per unit and train fraction:\n\n"
        + tables.scarcity_table(main, reference),
    ]
    if plots.plot_sensitivity(grid, reference, out / PLOTS["sensitivity"]):
        sections.append(sensitivity_section(grid))
    ablations = tables.ablation_table(rows)
    if ablations:
        sections.append(
            "## Ablations (overall analysis, not among the six)\n\n"
            "Each regularizer minus its ablation, per unit: "
            "`dreg_unit_slope` is DREG with phi' fixed to 1 (same lam, same "
            "layers); `weight_decay_adamw` is decoupled weight decay.\n\n"
            + ablations
        )
    sections.append(_METHOD)
    path = out / "report.md"
    path.write_text("\n\n".join(sections) + "\n")
    return path


def sensitivity_section(points: Sequence[stats.LamPoint]) -> str:
    """The `lam` grid's table and plot (`stats.sensitivity`)."""
    return (
        "## Sensitivity to lam (train fraction 1.0, clean test set)\n\n"
        f"![sensitivity]({PLOTS['sensitivity']})\n\n"
        "Each regularizer of the `lam` grid over the cells in which all "
        "its strengths finished; *minus none* is the paired difference "
        "to no regularization in the same cells. The findings above use "
        "only the runs at each regularizer's study strength.\n\n"
        + tables.sensitivity_table(points)
    )


def provenance_lines(rows: Sequence[Row]) -> list[str]:
    """Preset, strengths, commit, code, backend and versions of `rows`.

    Example:

    >>> print("\\n".join(provenance_lines(rows)))  # doctest: +SKIP
    - preset: quick
    ...
    """

    def values(field):
        found = {r.get(field) for r in rows}
        known = sorted(str(v) for v in found if v is not None)
        unknown = ["unknown (stored before it was recorded)"]
        return ", ".join(known + (unknown if None in found else []))

    options = {}
    for r in rows:
        if r.get("options") is not None:
            options.setdefault(r["regularizer"], set()).add(
                ", ".join(
                    f"{k}={v}"
                    for k, v in sorted(r["options"].items())
                    if v is not None and k != "regularizer"
                )
            )
    strengths = [
        f"  - {reg}: {'; '.join(sorted(options.get(reg, {'unknown'})))}"
        for reg in tables.order({r["regularizer"] for r in rows})
    ]
    versions = sorted(
        {f"{k} {v}" for r in rows for k, v in r["versions"].items()}
    )
    return [
        f"- preset: {values('preset')}",
        f"- git commit: {values('git_commit')}",
        f"- code: {values('code')}",
        f"- backends: {values('backend')}",
        "- regularizer settings (lam and every option that changes a run):",
        *strengths,
        f"- versions: {', '.join(versions)}",
    ]


def header(rows: Sequence[Row]) -> str:
    """The report's title, run counts, grid and provenance."""

    def values(field):
        return ", ".join(str(v) for v in sorted({r[field] for r in rows}))

    hours = sum(r["wall_time"] for r in rows) / 3600
    return (
        "# DREG study report\n\n"
        f"{len(rows)} runs, {hours:.2f} h of training in total.\n\n"
        f"- activations: {values('activation')}\n"
        f"- regularizers: {values('regularizer')}\n"
        f"- data sets: {values('dataset')}\n"
        f"- train fractions: {values('train_fraction')}\n"
        f"- seeds: {values('seed')}\n"
        f"- epochs: {values('epochs')}; batch size: {values('batch_size')}; "
        f"learning rate: {values('learning_rate')}\n"
        + "\n".join(provenance_lines(rows))
    )


def how_it_was_run(slices: Sequence[dict], failures: Sequence[dict]) -> str:
    """Each `run_study` call (when, where, with what) and the failed runs.

    Example:

    >>> with ResultStore("results.sqlite") as store:  # doctest: +SKIP
    ...     print(how_it_was_run(store.slices(), store.failures()))
    """
    hours = sum(_hours(s["started_at"], s["ended_at"]) for s in slices)
    table = tables.markdown(
        [
            "#",
            "started (UTC)",
            "hours",
            "machine",
            "backend",
            "executor",
            "commit",
            "finished",
            "failed",
            "left",
        ],
        (
            [
                i,
                s["started_at"],
                f"{_hours(s['started_at'], s['ended_at']):.2f}",
                s["machine"],
                s["backend"],
                s["executor"],
                (s["git_commit"] or "unknown")[:12],
                s["finished"],
                s["failed"],
                s["left_over"],
            ]
            for i, s in enumerate(slices, 1)
        ),
    )
    failed = (
        tables.markdown(
            ["run", "error", "at (UTC)"],
            (
                [
                    _run_name(f["config"]),
                    f["message"].replace("\n", " "),
                    f["failed_at"],
                ]
                for f in failures
            ),
        )
        if failures
        else "No run failed."
    )
    return (
        "## How it was run\n\n"
        f"{len(slices)} slice(s), {hours:.2f} h of wall clock in all "
        "(`keras-dreg study run` calls on this database; *left*: runs of "
        "the grid not yet started when the call stopped).\n\n"
        f"{table}\n\n### Failed runs\n\n"
        "Runs whose last attempt raised; they have no row, and the next "
        f"`keras-dreg study run` retries them.\n\n{failed}"
    )


def _hours(start: str, end: str) -> float:
    elapsed = datetime.fromisoformat(end) - datetime.fromisoformat(start)
    return elapsed.total_seconds() / 3600


def _run_name(config: dict) -> str:
    return (
        f"{config['activation']} {config['regularizer']} {config['dataset']} "
        f"fraction {config['train_fraction']} seed {config['seed']}"
    )


def findings_section(findings: Sequence[Finding]) -> str:
    """The verdict table, the evidence and the power statement."""
    summary = tables.markdown(
        ["#", "finding of the preprint", "verdict", "detectable (pp)"],
        (
            [i, f.claim, f"**{f.verdict}**", _detectable(f)]
            for i, f in enumerate(findings, 1)
        ),
    )
    details = "\n\n".join(
        f"{i}. **{f.verdict}**: {f.claim}\n   {f.evidence}"
        for i, f in enumerate(findings, 1)
    )
    return (
        "## The preprint's findings\n\n"
        f"{summary}\n\n"
        "*detectable*: the smallest mean difference each finding's "
        f"comparisons could detect with {100 * verdicts.POWER:.0f}% power "
        "at this run's n and spread (∞: no outcome of so few units can "
        "reach significance).\n\n"
        f"{details}"
    )


def _detectable(finding: Finding) -> str:
    value = finding.detectable
    return "∞" if value == float("inf") else f"{100 * value:.2f}"
