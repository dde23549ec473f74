"""What a study runs: one `RunConfig` per training run, a `StudyConfig` grid.

A study is the fully crossed grid

    activations x regularizers x data sets x train fractions x seeds

run on one Keras backend. The grid holds no "regime": the analysis
(`keras_dreg.study.stats`) derives the preprint's regimes from the runs
(clean and messy data sets at fraction 1.0, the noisy-test accuracy,
fractions below 1.0 for data scarcity).

Three presets exist: `quick` (a small grid for a laptop: about ten
minutes on two CPU cores), `paper` (the preprint's 960-run design at
fraction 1.0, plus the data-scarcity fractions) and `paper-real` (the
same design on four real data sets that `keras.datasets` downloads, and
their messy twins). A TOML file can start from a preset and override
any field:

```toml
preset = "quick"
activations = ["gelu", "relu"]
datasets = ["digits", "breast_cancer"]
seeds = 3            # the seeds 0, 1, 2; or a list such as [0, 7]
epochs = 10
backend = "jax"
workers = 2
imports = ["my_project.data"]  # modules that call register_dataset,
                               # register_model, register_regularizer
models = ["default", "my_cnn"] # "default": the study's own networks

[lam]                          # a lam grid: these strengths instead of
dreg = [0.001, 0.0031622776601683794, 0.01]  # the setting's own one
weight_decay = [2.5e-5, 2.5e-4]
```

`0.0031622776601683794` is `10**-2.5` (DREG's study strength) to the
last digit; the report's analysis of the preprint's findings uses each
regularizer's runs at its study strength only, and a "sensitivity"
section shows accuracy against `lam` for each regularizer in `[lam]`.
"""

import dataclasses
import hashlib
import json
from collections.abc import Iterable
from collections.abc import Mapping
from pathlib import Path
from typing import Any

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    try:
        import tomli as tomllib
    except ModuleNotFoundError:
        tomllib = None

from keras_dreg.regularizers import REGULARIZERS
from keras_dreg.study import provenance
from keras_dreg.study.datasets import OFFLINE_DATASETS
from keras_dreg.study.datasets import REAL_DATASETS
from keras_dreg.study.models import ACTIVATIONS
from keras_dreg.study.models import DEFAULT_MODEL
from keras_dreg.study.regimes import TRAIN_FRACTIONS
from keras_dreg.study.settings import SETTINGS

BACKENDS = ("jax", "tensorflow", "torch")
_EXECUTION_FIELDS = {"workers", "executor", "ray_address", "imports"}
PRESETS = ("quick", "paper", "paper-real")
EXECUTORS = ("local", "ray")


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """One training run of the study; its `key` identifies it in the store.

    Example:

    `options` (default: `settings.SETTINGS[regularizer].record()`) is
    every setting of the regularizer that changes the result, its `lam`
    included; `code` (default: `provenance.code_identity(backend)`) the
    code and library versions. Both are part of the key, so a changed
    strength, option or training code never reuses a stored run.
    `model` names the network (`models.build_model`).

    >>> run = RunConfig("gelu", "dreg", "digits", 1.0, 0, 20, 64, 1e-3,
    ...                 "jax")
    >>> len(run.key), run.options["lam"]
    (32, 0.0031622776601683794)
    """

    activation: str
    regularizer: str
    dataset: str
    train_fraction: float
    seed: int
    epochs: int
    batch_size: int
    learning_rate: float
    backend: str
    options: Mapping[str, Any] | None = None
    code: str | None = None
    model: str = DEFAULT_MODEL

    def __post_init__(self):
        object.__setattr__(self, "train_fraction", float(self.train_fraction))
        object.__setattr__(self, "learning_rate", float(self.learning_rate))
        for name in ("seed", "epochs", "batch_size"):
            object.__setattr__(self, name, int(getattr(self, name)))
        if self.options is None:
            if self.regularizer not in SETTINGS:
                raise ValueError(
                    f"Unknown regularizer {self.regularizer!r}; known: "
                    f"{sorted(SETTINGS)}."
                )
            options = SETTINGS[self.regularizer].record()
            object.__setattr__(self, "options", options)
        object.__setattr__(self, "options", dict(self.options))
        if self.code is None:
            code = provenance.code_identity(self.backend)
            object.__setattr__(self, "code", code)

    @property
    def key(self) -> str:
        """A hash of every field: equal configurations share a key."""
        text = json.dumps(dataclasses.asdict(self), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:32]


@dataclasses.dataclass(frozen=True)
class StudyConfig:
    """A grid of runs and how to execute it.

    Args:
        activations: Hidden-layer activations (`models.ACTIVATIONS`).
        regularizers: Regularizer names (`regularizers.REGULARIZERS`,
            or the ablations `settings.ABLATIONS`), each at its
            strength in `settings.SETTINGS` (never tuned).
        datasets: Data set names (`datasets.available_datasets()`).
        train_fractions: Fractions of the training set to train on; keep
            1.0 in the list for the clean, messy and noise regimes.
        seeds: Seeds; each seeds the data set, the subsample, the
            weights and the training order.
        epochs: Training epochs per run.
        batch_size: Mini-batch size.
        learning_rate: Adam's learning rate.
        backend: The Keras backend of every run; `None` takes the
            current default backend.
        workers: Worker processes of the local executor, each with one
            compute thread; `None`: one per CPU core; 0: run in this
            process. The Ray executor takes one CPU per run instead.
        executor: `"local"` (a process pool) or `"ray"`.
        ray_address: Address of a Ray cluster; `None` starts or joins a
            local instance.
        imports: Modules to import in every worker before running, for
            data sets, models and regularizers of your own
            (`register_dataset`, `register_model`,
            `register_regularizer`).
        models: Model names (`models.available_models()`); `"default"`
            is the study's own network for each kind of data.
        lam: A `lam` grid: `{regularizer: strengths}` runs each listed
            regularizer at each of its strengths instead of its study
            strength (`settings.SETTINGS[name].lam`); the others run at
            theirs.
        name: Where the grid came from (a preset's name, or the config
            file), recorded with each run and named by the report.

    Example:

    >>> study = preset("quick").replace(seeds=(0,), epochs=2)
    >>> study.num_runs == (len(study.activations) * 6
    ...     * len(study.datasets) * len(study.train_fractions))
    True
    """

    activations: tuple[str, ...]
    regularizers: tuple[str, ...]
    datasets: tuple[str, ...]
    train_fractions: tuple[float, ...]
    seeds: tuple[int, ...]
    epochs: int
    batch_size: int = 64
    learning_rate: float = 1e-3
    backend: str | None = None
    workers: int | None = None
    executor: str = "local"
    ray_address: str | None = None
    imports: tuple[str, ...] = ()
    models: tuple[str, ...] = (DEFAULT_MODEL,)
    lam: Mapping[str, tuple[float, ...]] = dataclasses.field(
        default_factory=dict
    )
    name: str = "custom"

    def __post_init__(self):
        for name in (
            "activations",
            "regularizers",
            "datasets",
            "imports",
            "models",
        ):
            object.__setattr__(self, name, _names(name, getattr(self, name)))
        object.__setattr__(self, "lam", _lam_grid(self.lam, self.regularizers))
        fractions = tuple(float(f) for f in self.train_fractions)
        if not fractions or any(not 0.0 < f <= 1.0 for f in fractions):
            raise ValueError(
                f"train_fractions must lie in (0, 1], got {fractions}."
            )
        object.__setattr__(self, "train_fractions", fractions)
        object.__setattr__(self, "seeds", _seeds(self.seeds))
        for name in ("epochs", "batch_size"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1.")
        if self.workers is not None and int(self.workers) < 0:
            raise ValueError("workers must be >= 0.")
        if self.backend is not None and self.backend not in BACKENDS:
            raise ValueError(
                f"backend must be one of {BACKENDS}, got {self.backend!r}."
            )
        if self.executor not in EXECUTORS:
            raise ValueError(
                f"executor must be one of {EXECUTORS}, got {self.executor!r}."
            )

    @property
    def num_runs(self) -> int:
        """The number of runs in the grid."""
        settings = sum(len(self.lam.get(r, (None,))) for r in self.regularizers)
        return (
            len(self.activations)
            * settings
            * len(self.datasets)
            * len(self.train_fractions)
            * len(self.seeds)
            * len(self.models)
        )

    def replace(self, **changes: Any) -> "StudyConfig":
        """A copy with some fields changed (and validated)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """The fields as plain lists, dicts, numbers and strings."""
        values = dataclasses.asdict(self)
        values["lam"] = {k: list(v) for k, v in self.lam.items()}
        return {
            k: list(v) if isinstance(v, tuple) else v for k, v in values.items()
        }


def _names(field: str, value: Iterable[str] | str) -> tuple[str, ...]:
    names = (value,) if isinstance(value, str) else tuple(value)
    if field != "imports" and not names:
        raise ValueError(f"{field} must not be empty.")
    if len(set(names)) != len(names):
        raise ValueError(f"{field} has duplicates: {names}.")
    return tuple(str(n) for n in names)


def _lam_grid(
    value: Mapping[str, Iterable[float]], regularizers: tuple[str, ...]
) -> dict[str, tuple[float, ...]]:
    grid = {}
    for name, lams in dict(value).items():
        if name not in regularizers:
            raise ValueError(
                f"lam lists {name!r}, which is not among the regularizers "
                f"{regularizers}."
            )
        lams = (lams,) if isinstance(lams, (int, float)) else tuple(lams)
        lams = tuple(float(lam) for lam in lams)
        if not lams or len(set(lams)) != len(lams):
            raise ValueError(f"lam[{name!r}] must be distinct, non-empty.")
        if any(not lam > 0 for lam in lams):
            raise ValueError(f"lam[{name!r}] must be > 0, got {lams}.")
        grid[str(name)] = lams
    return grid


def _seeds(value: int | Iterable[int]) -> tuple[int, ...]:
    if isinstance(value, int):
        if value < 1:
            raise ValueError(f"seeds must be >= 1, got {value}.")
        return tuple(range(value))
    seeds = tuple(int(s) for s in value)
    if not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds must be distinct and non-empty: {seeds}.")
    return seeds


def preset(name: str) -> StudyConfig:
    """The `quick`, `paper` or `paper-real` study.

    - `paper`: the preprint's fully crossed design, 4 activations x 6
      regularizers x 8 offline data sets x 5 seeds = 960 runs at
      fraction 1.0, plus the same grid at the data-scarcity fractions
      (`regimes.TRAIN_FRACTIONS`), 2880 runs in all; 30 epochs.
    - `paper-real`: the same grid on `datasets.REAL_DATASETS`
      (CIFAR-10, Fashion-MNIST, IMDB, Reuters through `keras.datasets`,
      which needs internet on first use, and their messy twins), 2880
      runs of 10 epochs: these sets are 10 to 40 times larger than the
      offline ones.
    - `quick`: GELU and ReLU x all six regularizers x `digits`,
      `mnist1d` and their messy twins x fractions 0.25 and 1.0 x 3
      seeds = 288 runs of 10 epochs. Its 6 GELU cells on messy data are
      the fewest with which a Wilcoxon test can reach p <= 0.05.

    Example:

    >>> preset("paper").num_runs, preset("paper-real").num_runs
    (2880, 2880)
    """
    presets = {"quick": _quick, "paper": _paper, "paper-real": _paper_real}
    if name not in presets:
        raise ValueError(f"Unknown preset {name!r}; use one of {presets}.")
    return presets[name]().replace(name=name)


def _paper() -> StudyConfig:
    return StudyConfig(
        activations=ACTIVATIONS,
        regularizers=REGULARIZERS,
        datasets=OFFLINE_DATASETS,
        train_fractions=TRAIN_FRACTIONS,
        seeds=5,
        epochs=30,
    )


def _paper_real() -> StudyConfig:
    return _paper().replace(datasets=REAL_DATASETS, epochs=10)


def _quick() -> StudyConfig:
    return StudyConfig(
        activations=("gelu", "relu"),
        regularizers=REGULARIZERS,
        datasets=("digits", "digits_messy", "mnist1d", "mnist1d_messy"),
        train_fractions=(0.25, 1.0),
        seeds=3,
        epochs=10,
    )


def load_config(
    path: str | Path | None = None,
    preset_name: str | None = None,
    **overrides: Any,
) -> StudyConfig:
    """A `StudyConfig`: a preset, then a TOML file, then `overrides`.

    Later sources win. The preset is `preset_name`, else the file's
    `preset` key, else `quick`; the file's other keys and `overrides` are
    `StudyConfig` fields (see the module docstring for the file format).

    Example:

    >>> load_config(preset_name="quick", seeds=1).seeds
    (0,)
    >>> load_config("study.toml", epochs=3)  # doctest: +SKIP
    """
    values = _read_toml(path) if path is not None else {}
    name = values.pop("preset", "quick")
    values.update(overrides)
    fields = {f.name for f in dataclasses.fields(StudyConfig)}
    unknown = sorted(set(values) - fields)
    if unknown:
        raise ValueError(
            f"Unknown study settings {unknown}; known: {sorted(fields)}."
        )
    source = preset_name or name
    if path is not None:
        source = f"{source} + {Path(path).name}"
    changed = sorted(set(overrides) - _EXECUTION_FIELDS)
    if changed:
        source += " + flags " + ", ".join(changed)
    return preset(preset_name or name).replace(name=source, **values)


def _read_toml(path: str | Path) -> dict[str, Any]:
    if tomllib is None:
        raise ModuleNotFoundError(
            "Reading TOML on Python 3.10 needs `pip install tomli`."
        )
    with open(path, "rb") as f:
        return tomllib.load(f)
