"""The `keras-dreg` command line.

    keras-dreg study run --preset quick --db results.sqlite
    keras-dreg study report --db results.sqlite --out report/
    keras-dreg study status --db results.sqlite

`study run` runs the grid of a preset (`quick`, the default, `paper` or
`paper-real`), optionally changed by a TOML file (`--config`) and by
flags (flags win over the file, the file over the preset). It stores
each run as it finishes and skips runs already stored, so the same
command resumes an interrupted study; `--max-hours H` starts no run
after H hours, so a long study can be run in slices. `--imports`
names modules that register data sets, models or regularizers of your
own; `--executor ray --ray-address HOST:PORT` runs on a Ray cluster.
`study report` writes `report.md` and PNG plots; `study status` counts
finished runs and shows their provenance (preset, strengths, commit,
code, backend) and the verdicts so far, each INCONCLUSIVE one with the
smallest detectable effect.
"""

import argparse
import dataclasses
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

_LIST_FLAGS = {
    "activations": (str, "Comma-separated, e.g. gelu,relu."),
    "regularizers": (str, "Comma-separated, e.g. none,dreg."),
    "datasets": (str, "Comma-separated, e.g. digits,digits_messy."),
    "train_fractions": (float, "Comma-separated, e.g. 0.1,0.25,1."),
    "imports": (
        str,
        "Comma-separated modules every worker imports first (ones that "
        "call register_dataset, register_model, register_regularizer).",
    ),
    "models": (str, "Comma-separated, e.g. default,my_cnn."),
}


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the command line; returns the exit status.

    Example:

    >>> main(["study", "status", "--db", "results.sqlite"])  # doctest: +SKIP
    results.sqlite: 192 runs stored (jax: 192)
    0
    """
    args = _parser().parse_args(argv)
    return args.command(args)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="keras-dreg", description="keras-dreg tools."
    )
    commands = parser.add_subparsers(required=True, metavar="{study}")
    study = commands.add_parser(
        "study", help="Re-run the DREG study and report on it."
    )
    actions = study.add_subparsers(required=True, metavar="{run,report,status}")
    _add_run(actions)
    report = actions.add_parser("report", help="Write the Markdown report.")
    report.add_argument("--db", required=True, help="The results file.")
    report.add_argument("--out", required=True, help="The report folder.")
    report.set_defaults(command=_report)
    status = actions.add_parser(
        "status",
        help="Count finished runs; show their provenance and verdicts.",
    )
    status.add_argument("--db", required=True, help="The results file.")
    status.set_defaults(command=_status)
    return parser


def _add_run(actions) -> None:
    run = actions.add_parser(
        "run",
        help="Run (or resume) a study grid.",
        description="Run every run of the grid that is not yet in --db.",
    )
    run.add_argument(
        "--preset",
        choices=("quick", "paper", "paper-real"),
        help="The grid to start from (default: the config's, else quick).",
    )
    run.add_argument("--config", help="A TOML file of study settings.")
    run.add_argument(
        "--db", default="results.sqlite", help="Results (%(default)s)."
    )
    run.add_argument(
        "--executor",
        choices=("local", "ray"),
        help="A local process pool (default) or a Ray cluster.",
    )
    run.add_argument(
        "--workers",
        type=int,
        help="Worker processes (default: one per CPU core; 0: in-process).",
    )
    run.add_argument(
        "--backend",
        choices=("jax", "tensorflow", "torch"),
        help="Keras backend of every run (default: Keras's own).",
    )
    run.add_argument("--ray-address", help="Address of a Ray cluster.")
    for name, (kind, text) in _LIST_FLAGS.items():
        run.add_argument(
            "--" + name.replace("_", "-"), type=_comma_list(kind), help=text
        )
    run.add_argument(
        "--seeds",
        type=_seeds,
        help="N (the seeds 0..N-1) or a comma-separated list.",
    )
    run.add_argument("--epochs", type=int)
    run.add_argument("--batch-size", type=int)
    run.add_argument("--learning-rate", type=float)
    run.add_argument(
        "--max-hours",
        type=float,
        help="Start no run after this many hours; the runs in flight "
        "finish and are stored. Run the same command again to go on.",
    )
    run.add_argument("--quiet", action="store_true", help="No progress bar.")
    run.set_defaults(command=_run)


def _comma_list(kind):
    def parse(text: str) -> tuple:
        return tuple(kind(item) for item in text.split(",") if item)

    return parse


def _seeds(text: str) -> int | tuple[int, ...]:
    return _comma_list(int)(text) if "," in text else int(text)


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    names = (
        *_LIST_FLAGS,
        "seeds",
        "epochs",
        "batch_size",
        "learning_rate",
        "backend",
        "workers",
        "executor",
        "ray_address",
    )
    return {n: getattr(args, n) for n in names if getattr(args, n) is not None}


def _run(args: argparse.Namespace) -> int:
    from keras_dreg.study.config import load_config
    from keras_dreg.study.runner import run_study

    study = load_config(args.config, args.preset, **_overrides(args))
    progress = run_study(
        study, args.db, verbose=not args.quiet, max_hours=args.max_hours
    )
    print(
        f"{progress.finished} runs finished, {progress.skipped} were "
        f"already stored, {len(progress.failed)} failed, "
        f"{progress.left} left."
    )
    if progress.left:
        print("Run the same command again to go on.")
    if progress.failed:
        print("Run the same command again to retry the failed runs.")
    return 1 if progress.failed else 0


def _missing(db: str) -> bool:
    """Reports a database file that does not exist (and is not created)."""
    if Path(db).exists():
        return False
    print(f"No results file {db}.", file=sys.stderr)
    return True


def _report(args: argparse.Namespace) -> int:
    from keras_dreg.study.report import write_report
    from keras_dreg.study.settings import ABLATIONS
    from keras_dreg.study.stats import at_study_strength
    from keras_dreg.study.store import ResultStore
    from keras_dreg.study.verdicts import assess_findings

    if _missing(args.db):
        return 2
    with ResultStore(args.db) as store:
        rows = store.rows()
        slices, failures = store.slices(), store.failures()
    path = write_report(rows, args.out, slices=slices, failures=failures)
    print(f"Wrote {path}")
    main = [
        r for r in at_study_strength(rows) if r["regularizer"] not in ABLATIONS
    ]
    for finding in assess_findings(main):
        print(f"  {finding.verdict:<15} {finding.claim}")
    return 0


def _status(args: argparse.Namespace) -> int:
    from keras_dreg.study.config import StudyConfig
    from keras_dreg.study.report import provenance_lines
    from keras_dreg.study.runner import expand_grid
    from keras_dreg.study.runner import validate
    from keras_dreg.study.settings import ABLATIONS
    from keras_dreg.study.stats import at_study_strength
    from keras_dreg.study.store import ResultStore
    from keras_dreg.study.verdicts import assess_findings
    from keras_dreg.study.verdicts import power_statement

    if _missing(args.db):
        return 2
    with ResultStore(args.db) as store:
        counts = store.counts_by_backend()
        done = store.finished_keys()
        studies = store.studies()
        rows = store.rows()
        failed = len(store.failures())
    per_backend = ", ".join(f"{b}: {n}" for b, n in sorted(counts.items()))
    print(f"{args.db}: {len(done)} runs stored ({per_backend or 'none'})")
    if failed:
        print(
            f"  {failed} runs failed (`study report` lists their errors; "
            "`study run` retries them)"
        )
    for study in studies:
        config = StudyConfig(**study["config"])
        try:
            validate(config)
        except (ImportError, ValueError) as error:
            print(
                f"  grid started {study['started_at']} on {config.backend}: "
                f"not counted ({error}; run status where its --imports "
                "modules are importable)"
            )
            continue
        grid = expand_grid(config)
        finished = len({run.key for run in grid} & done)
        print(
            f"  grid started {study['started_at']} on {config.backend}: "
            f"{finished}/{len(grid)} done ({100 * finished / len(grid):.0f}%) "
            "with this code (a changed code or setting runs again)"
        )
        for code, commits in _other_codes(rows, grid[0].code).items():
            stored = {dataclasses.replace(run, code=code).key for run in grid}
            print(
                f"    {len(stored & done)}/{len(grid)} done by other code "
                f"({code}; commit {commits}): go on at that commit to "
                "continue them"
            )
    if not rows:
        return 0
    print("\n".join(provenance_lines(rows)))
    main = [
        r for r in at_study_strength(rows) if r["regularizer"] not in ABLATIONS
    ]
    print("Verdicts so far:")
    for finding in assess_findings(main):
        print(f"  {finding.verdict:<15} {finding.claim}")
        if finding.verdict == "INCONCLUSIVE":
            print(f"  {'':<15} {power_statement(finding.tests)}")
    return 0


def _other_codes(rows, code: str) -> dict[str, str]:
    """`{code identity: its commits}` of stored rows made by other code."""
    commits = {}
    for row in rows:
        if row.get("code") not in (None, code):
            commits.setdefault(row["code"], set()).add(str(row["git_commit"]))
    return {c: ", ".join(sorted(found)) for c, found in commits.items()}


if __name__ == "__main__":
    sys.exit(main())
