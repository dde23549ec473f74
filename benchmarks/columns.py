"""DREG's cost in the five configurations users run, side by side.

Runs `step_time.py` once per configuration, each in its own process
(Keras fixes the backend at its first import), and prints two tables
of ratios to the plain step ("none") of the same run: of the time per
step, and of the peak memory per step (`peak_memory.step_memory`; "n/a"
where the configuration cannot measure it, TensorFlow on a CPU, with
the reason under the settings), each with "none"'s own figure (ms, MiB)
in its row. The configurations:

| column        | backend    | `jit_compile`                           |
|---------------|------------|-----------------------------------------|
| JAX (XLA)     | jax        | Keras's default (XLA)                   |
| TF eager      | tensorflow | `False` (Keras's default on a CPU)      |
| TF + XLA      | tensorflow | `True` (Keras's default on a GPU)       |
| torch eager   | torch      | `False` (Keras's default)               |
| torch.compile | torch      | `True`                                  |

Every other argument is passed on to `step_time.py`, e.g.

    PYTHONPATH=. python benchmarks/columns.py --variants dreg_stop_gradient \\
        dreg_every_4 dreg_sample_quarter --steps 30

`--only "TF eager" torch.compile` runs only those columns; time three
models per process under `torch.compile` (see `step_time.py`).

A configuration that fails (e.g. `torch.compile` without a C++
compiler) is reported and left blank; the others still print. A row
that one configuration cannot train (the input-gradient and Jacobian
penalties under `torch.compile`, which cannot differentiate twice) is
left blank there, and named with the error under the settings.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

COLUMNS = {
    "JAX (XLA)": ("jax", "auto"),
    "TF eager": ("tensorflow", "false"),
    "TF + XLA": ("tensorflow", "true"),
    "torch eager": ("torch", "false"),
    "torch.compile": ("torch", "true"),
}
STEP_TIME = Path(__file__).with_name("step_time.py")


def measure(backend: str, jit_compile: str, args: list[str]) -> dict | None:
    """`step_time.py`'s medians for one configuration, or `None`."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "medians.json"
        command = [sys.executable, str(STEP_TIME), "--jit-compile"]
        command += [jit_compile, "--json", str(out), *args]
        env = {**os.environ, "KERAS_BACKEND": backend}
        done = subprocess.run(command, env=env, capture_output=True, text=True)
        if done.returncode != 0:
            print(
                f"{backend} jit_compile={jit_compile} failed:", file=sys.stderr
            )
            print(done.stderr[-2000:], file=sys.stderr)
            return None
        return json.loads(out.read_text())


UNITS = {"medians": (1e3, "ms"), "memory": (2**-20, "MiB")}
"""The figures `table` shows: `step_time.py`'s JSON key, then the scale
and the unit of the plain step's own figure."""


def table(measured: dict, key: str = "medians") -> str:
    """Rows (model, regularizer), a column of ratios per configuration,
    and the plain step's own figure in the "none" row: of the time
    (`key="medians"`) or of the memory per step (`key="memory"`)."""
    found = {c: m[key] for c, m in measured.items() if m}
    first = next(iter(found.values()))
    lines = [
        "| model | row | " + " | ".join(found) + " |",
        "|---|---|" + "---:|" * len(found),
    ]
    for model, rows in first.items():
        for row in rows:
            cells = []
            for column in found:
                figures = found[column].get(model)
                if not figures or row not in figures:
                    cells.append("")
                else:
                    cells.append(_cell(key, row, figures))
            lines.append(f"| {model} | {row} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _cell(key: str, row: str, figures: dict) -> str:
    """The plain step's own figure in the "none" row, else the ratio to
    it; "n/a" where either was not measured."""
    value, none = figures[row], figures["none"]
    if value is None or not none:
        return "n/a"
    if row == "none":
        scale, unit = UNITS[key]
        return f"{scale * value:.1f} {unit}"
    return f"{value / none:.2f}"


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--only", nargs="+", choices=list(COLUMNS), default=list(COLUMNS)
    )
    args, argv = parser.parse_known_args(argv)
    measured = {
        column: measure(backend, jit, argv)
        for column, (backend, jit) in COLUMNS.items()
        if column in args.only
    }
    for column, result in measured.items():
        if result:
            print(f"{column}: {result['settings']}")
            for row, error in result.get("skipped", {}).items():
                print(f"  skipped {row}: {error}")
            if result["memory_unmeasured"]:
                print(f"  step MiB n/a: {result['memory_unmeasured']}")
    if not any(measured.values()):
        return 1
    print(table(measured))
    print()
    print(table(measured, "memory"))
    return 0 if all(measured.values()) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
