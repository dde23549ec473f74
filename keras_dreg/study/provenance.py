"""What produced a run: the code, the libraries and the git commit.

A run's key (`config.RunConfig.key`) includes `code_identity`, so a
study resumed after a change to the code that trains (any module of
`keras_dreg` but the analysis ones, `ANALYSIS_MODULES`) or to the
Keras, NumPy or backend version runs again instead of silently reusing
old rows. The git commit is recorded beside each row, not keyed: a
commit that only touches documentation changes no result.

Example:

>>> code_identity("jax")  # doctest: +SKIP
'keras_dreg 0.1.0 src 3f2a9c1e0b7d; keras 3.15.1; numpy 2.3.4; jax 0.8.1'
"""

import functools
import hashlib
import importlib.metadata
import os
import platform
import subprocess
from pathlib import Path

import keras_dreg

PACKAGE = Path(keras_dreg.__file__).parent
ANALYSIS_MODULES = frozenset(
    {
        "cli.py",
        "study/plots.py",
        "study/provenance.py",
        "study/report.py",
        "study/simulate.py",
        "study/stats.py",
        "study/store.py",
        "study/tables.py",
        "study/verdicts.py",
        "study/__main__.py",
    }
)
"""Modules that read results but never change one (left out of the hash)."""

_BACKEND_PACKAGES = {
    "jax": ("jax", "jaxlib"),
    "tensorflow": ("tensorflow",),
    "torch": ("torch",),
}


@functools.lru_cache(maxsize=1)
def source_hash() -> str:
    """SHA-256 (12 hex digits) of the package's training code.

    Example:

    >>> len(source_hash())
    12
    """
    digest = hashlib.sha256()
    for path in sorted(PACKAGE.rglob("*.py")):
        name = path.relative_to(PACKAGE).as_posix()
        if name not in ANALYSIS_MODULES:
            digest.update(name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:12]


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


@functools.lru_cache(maxsize=None)
def code_identity(backend: str) -> str:
    """keras_dreg's version and source hash, Keras, NumPy and the backend.

    Read without importing the backend (package metadata), so a process
    on another backend computes the same identity.

    Example:

    ```python
    identity = code_identity("jax")  # a hash of the code and versions
    ```
    """
    libraries = ("keras", "numpy", *_BACKEND_PACKAGES.get(backend, ()))
    parts = [f"keras_dreg {keras_dreg.__version__} src {source_hash()}"]
    parts += [f"{name} {_version(name)}" for name in libraries]
    return "; ".join(parts)


@functools.lru_cache(maxsize=1)
def git_commit() -> str | None:
    """The checkout's commit, `+dirty` when training code has changes.

    `None` when the package is not in a git checkout (an installed wheel)
    or git is missing.

    Example:

    >>> git_commit()  # doctest: +SKIP
    'd5a5db433ad860582cce0bf7ae33d9bfa29b44ff+dirty'
    """
    try:
        commit = _git("rev-parse", "HEAD")
        changed = _git("status", "--porcelain", "--", str(PACKAGE))
    except (OSError, subprocess.CalledProcessError):
        return None
    dirty = any(
        line[3:].split("keras_dreg/", 1)[-1] not in ANALYSIS_MODULES
        for line in changed.splitlines()
        if line.strip()
    )
    return commit + ("+dirty" if dirty else "")


def machine() -> str:
    """The computer this process runs on: OS, CPU model and count, Python.

    Example:

    >>> machine()  # doctest: +SKIP
    'Linux x86_64, 2 CPUs (AMD EPYC 9B14), Python 3.11.7'
    """
    return (
        f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPUs "
        f"({_cpu_model()}), Python {platform.python_version()}"
    )


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown model"


def _git(*args: str) -> str:
    return subprocess.run(
        ["git", *args],
        cwd=PACKAGE,
        capture_output=True,
        text=True,
        check=True,
        timeout=10,
    ).stdout.strip()
