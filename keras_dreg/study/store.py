"""The study's results: a SQLite file with one row per finished run.

Rows are keyed by `RunConfig.key`, a hash of the run's configuration,
and written with `INSERT OR IGNORE` in a transaction of their own as
each run finishes. A run that is killed leaves no row, a finished run
is never lost, and running the same grid again skips the keys already
present, so an interrupted study resumes with nothing lost or
duplicated. The `studies` table remembers each grid that was started,
so `keras-dreg study status` can count what is left; `failures` keeps
the error of each run that failed and has not succeeded since, and
`slices` one row per `run_study` call (when, where, how many runs), so
a report can say how a study made in several slices was run.

Example:

```python
with ResultStore("results.sqlite") as store:
    store.add(result)            # True: inserted; False: already there
    done = store.finished_keys()
    rows = store.rows()          # dicts, one per run
    failed = store.failures()    # runs whose last attempt raised
```
"""

import dataclasses
import datetime
import hashlib
import json
import sqlite3
from pathlib import Path
from typing import Any

from keras_dreg.study.config import RunConfig

_RUN_COLUMNS = (
    ("key", "TEXT PRIMARY KEY"),
    ("activation", "TEXT NOT NULL"),
    ("regularizer", "TEXT NOT NULL"),
    ("dataset", "TEXT NOT NULL"),
    ("train_fraction", "REAL NOT NULL"),
    ("seed", "INTEGER NOT NULL"),
    ("epochs", "INTEGER NOT NULL"),
    ("batch_size", "INTEGER NOT NULL"),
    ("learning_rate", "REAL NOT NULL"),
    ("backend", "TEXT NOT NULL"),
    ("messy", "INTEGER NOT NULL"),
    ("accuracy", "REAL NOT NULL"),
    ("noisy_accuracy", "REAL NOT NULL"),
    ("penalty", "REAL"),
    ("epochs_run", "INTEGER NOT NULL"),
    ("wall_time", "REAL NOT NULL"),
    ("versions", "TEXT NOT NULL"),
    ("finished_at", "TEXT NOT NULL"),
    ("options", "TEXT"),
    ("code", "TEXT"),
    ("git_commit", "TEXT"),
    ("preset", "TEXT"),
    ("task", "TEXT"),
    ("model", "TEXT"),
)
"""Columns; the last six (provenance) are NULL in files from before them."""
_PROVENANCE = ("options", "code", "git_commit", "preset", "task", "model")
_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS runs (
    {", ".join(f"{name} {kind}" for name, kind in _RUN_COLUMNS)}
);
CREATE TABLE IF NOT EXISTS studies (
    key TEXT PRIMARY KEY,
    backend TEXT NOT NULL,
    config TEXT NOT NULL,
    total INTEGER NOT NULL,
    started_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS failures (
    key TEXT PRIMARY KEY,
    config TEXT NOT NULL,
    message TEXT NOT NULL,
    failed_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS slices (
    started_at TEXT NOT NULL,
    ended_at TEXT NOT NULL,
    backend TEXT NOT NULL,
    executor TEXT NOT NULL,
    machine TEXT NOT NULL,
    git_commit TEXT,
    finished INTEGER NOT NULL,
    failed INTEGER NOT NULL,
    left_over INTEGER NOT NULL
);
"""
SLICE_FIELDS = (
    "started_at",
    "ended_at",
    "backend",
    "executor",
    "machine",
    "git_commit",
    "finished",
    "failed",
    "left_over",
)
"""Columns of the `slices` table, one row per `runner.run_study` call."""


@dataclasses.dataclass(frozen=True)
class RunResult:
    """What one finished run produced.

    Args:
        config: The run.
        messy: Whether the data set is one of the "messy" ones.
        accuracy: Test accuracy on the clean test set.
        noisy_accuracy: Test accuracy on the corrupted test inputs.
        penalty: The regularizer's penalty logged in the last epoch, or
            `None` for regularizers without one.
        epochs_run: Epochs actually trained.
        wall_time: Seconds to build, train and score the model (data
            loading, cached per worker, is left out).
        versions: Package versions, e.g. `{"keras": "3.15.1", ...}`.
        task: The data set's kind (`"image"`, `"text"`, ...).
        git_commit: The checkout's commit (`provenance.git_commit`), or
            `None` outside a git checkout.

    Example:

    >>> result = train_run(run)  # doctest: +SKIP
    >>> result.accuracy, result.as_row()["regularizer"]  # doctest: +SKIP
    (0.97, 'dreg')
    """

    config: RunConfig
    messy: bool
    accuracy: float
    noisy_accuracy: float
    penalty: float | None
    epochs_run: int
    wall_time: float
    versions: dict[str, str]
    task: str | None = None
    git_commit: str | None = None

    def as_row(self) -> dict[str, Any]:
        """The row stored for this run (without `finished_at`, `preset`)."""
        return {
            "key": self.config.key,
            **dataclasses.asdict(self.config),
            "options": json.dumps(self.config.options, sort_keys=True),
            "task": self.task,
            "git_commit": self.git_commit,
            "messy": int(self.messy),
            "accuracy": float(self.accuracy),
            "noisy_accuracy": float(self.noisy_accuracy),
            "penalty": None if self.penalty is None else float(self.penalty),
            "epochs_run": int(self.epochs_run),
            "wall_time": float(self.wall_time),
            "versions": json.dumps(self.versions, sort_keys=True),
        }


class ResultStore:
    """A SQLite file of finished runs; see the module docstring.

    Args:
        path: The database file; created with its tables if missing.

    Example:

    >>> with ResultStore(":memory:") as store:
    ...     len(store.finished_keys())
    0
    """

    def __init__(self, path: str | Path):
        self.path = str(path)
        self._conn = sqlite3.connect(self.path, timeout=60.0)
        self._conn.row_factory = sqlite3.Row
        with self._conn:
            self._conn.executescript(_SCHEMA)
            columns = {
                r[1] for r in self._conn.execute("PRAGMA table_info(runs)")
            }
            for name in _PROVENANCE:
                if name not in columns:
                    self._conn.execute(f"ALTER TABLE runs ADD COLUMN {name}")

    def __enter__(self) -> "ResultStore":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection."""
        self._conn.close()

    def add(self, result: RunResult, preset: str | None = None) -> bool:
        """Insert one run's row in its own transaction.

        `preset` names the grid the run was part of (`StudyConfig.name`).
        Returns `False`, and changes nothing, when a row with the same key
        is already there. A failure stored for the same key is removed.
        """
        row = result.as_row()
        row["finished_at"] = now()
        row["preset"] = preset
        names = [name for name, _ in _RUN_COLUMNS]
        sql = (
            f"INSERT OR IGNORE INTO runs ({', '.join(names)}) "
            f"VALUES ({', '.join(':' + n for n in names)})"
        )
        with self._conn:
            self._conn.execute(
                "DELETE FROM failures WHERE key = ?", (row["key"],)
            )
            return self._conn.execute(sql, row).rowcount == 1

    def add_failure(self, config: RunConfig, message: str) -> None:
        """Remember that `config` raised `message` (its latest attempt)."""
        text = json.dumps(dataclasses.asdict(config), sort_keys=True)
        with self._conn:
            self._conn.execute(
                "INSERT OR REPLACE INTO failures VALUES (?, ?, ?, ?)",
                (config.key, text, message, now()),
            )

    def failures(self) -> list[dict[str, Any]]:
        """The runs that failed and have not finished since, oldest first:
        dicts with `config` (the run's fields), `message`, `failed_at`."""
        cursor = self._conn.execute(
            "SELECT config, message, failed_at FROM failures ORDER BY rowid"
        )
        return [
            {"config": json.loads(c), "message": m, "failed_at": t}
            for c, m, t in cursor
        ]

    def record_slice(self, **fields: Any) -> None:
        """Store one `run_study` call; `fields` are `SLICE_FIELDS`."""
        if set(fields) != set(SLICE_FIELDS):
            raise ValueError(f"A slice has the fields {SLICE_FIELDS}.")
        names = ", ".join(SLICE_FIELDS)
        values = ", ".join(":" + name for name in SLICE_FIELDS)
        with self._conn:
            self._conn.execute(
                f"INSERT INTO slices ({names}) VALUES ({values})", fields
            )

    def slices(self) -> list[dict[str, Any]]:
        """The stored `run_study` calls, oldest first."""
        cursor = self._conn.execute("SELECT * FROM slices ORDER BY rowid")
        return [dict(r) for r in cursor]

    def finished_keys(self) -> set[str]:
        """The keys of every stored run."""
        return {r[0] for r in self._conn.execute("SELECT key FROM runs")}

    def rows(self) -> list[dict[str, Any]]:
        """Every stored run as a dict; `versions` and `options` are
        parsed, `messy` a bool.

        Rows come in the order they were stored; provenance columns of
        rows stored before they existed are `None`.
        """
        rows = []
        for r in self._conn.execute("SELECT * FROM runs ORDER BY rowid"):
            row = dict(r)
            row["messy"] = bool(row["messy"])
            row["versions"] = json.loads(row["versions"])
            if row["options"] is not None:
                row["options"] = json.loads(row["options"])
            rows.append(row)
        return rows

    def record_study(self, config: dict[str, Any], total: int) -> None:
        """Remember a grid that was started (once per distinct config)."""
        text = json.dumps(config, sort_keys=True)
        with self._conn:
            self._conn.execute(
                "INSERT OR IGNORE INTO studies VALUES (?, ?, ?, ?, ?)",
                (_hash(text), config["backend"], text, total, now()),
            )

    def studies(self) -> list[dict[str, Any]]:
        """The grids started on this file, oldest first."""
        cursor = self._conn.execute(
            "SELECT config, total, started_at FROM studies ORDER BY rowid"
        )
        return [
            {"config": json.loads(c), "total": t, "started_at": s}
            for c, t, s in cursor
        ]

    def counts_by_backend(self) -> dict[str, int]:
        """The number of stored runs per backend."""
        cursor = self._conn.execute(
            "SELECT backend, COUNT(*) FROM runs GROUP BY backend"
        )
        return dict(cursor.fetchall())


def now() -> str:
    """The current UTC time as the store writes it (ISO 8601, seconds)."""
    return datetime.datetime.now(datetime.timezone.utc).isoformat(
        timespec="seconds"
    )


def _hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:32]
