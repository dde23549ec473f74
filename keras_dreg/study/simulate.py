"""Study tables with a known truth, to calibrate the verdicts.

`simulate_rows(design, world, rng)` draws the rows a study of `design`
would store if the truth were `world`. Accuracy of one run is

    base[data set] + effect(world, regularizer, fraction)
        + tau * b[base data set, regularizer]       (data-set heterogeneity)
        + sigma_unit * e[unit, regularizer]
        + sigma_seed * s[cell]                      (shared by a cell's runs)
        + sigma_run * e[run]

`b` is shared by a data set and its messy twin and by every activation,
so units of one data set are correlated; `s` is shared by all
regularizers of one cell (the seed's data split and initialization), so
seeds are correlated too. The noisy-input accuracy is drawn the same
way. Worlds: `null` (no effect), `better` (+3 pp for DREG everywhere),
`worse` (-3 pp), `scarcity` (+3 pp only at fractions below 1.0).

Example:

>>> rows = simulate_rows(QUICK, "null", np.random.default_rng(0))
>>> len(rows)
288
"""

import dataclasses
import itertools

import numpy as np

from keras_dreg.regularizers import REGULARIZERS

WORLDS = ("null", "better", "worse", "scarcity")
EFFECT = 0.03
_TASKS = {
    "digits": "image",
    "mnist1d": "sequence",
    "text_rule": "text",
    "breast_cancer": "tabular",
}


@dataclasses.dataclass(frozen=True)
class Design:
    """A study's grid, for simulation.

    Example:

    ```python
    design = Design(datasets=8, seeds=5)
    ```
    """

    datasets: tuple[str, ...]
    activations: tuple[str, ...]
    fractions: tuple[float, ...]
    seeds: int
    tau: float = 0.005
    sigma_unit: float = 0.007
    sigma_seed: float = 0.02
    sigma_run: float = 0.01


QUICK = Design(
    ("digits", "digits_messy", "mnist1d", "mnist1d_messy"),
    ("gelu", "relu"),
    (0.25, 1.0),
    3,
)
"""The quick preset's grid."""
PAPER = Design(
    tuple(f"{b}{m}" for b in _TASKS for m in ("", "_messy")),
    ("relu", "gelu", "silu", "tanh"),
    (0.1, 0.25, 1.0),
    5,
)
"""The paper preset's grid."""


def _effect(world: str, regularizer: str, fraction: float) -> float:
    if regularizer != "dreg" or world == "null":
        return 0.0
    if world == "better":
        return EFFECT
    if world == "worse":
        return -EFFECT
    return EFFECT if fraction < 1.0 else 0.0


def simulate_rows(
    design: Design, world: str, rng: np.random.Generator
) -> list[dict]:
    """The rows of one simulated study; see the module docstring.

    Example:

    ```python
    rows = simulate_rows(Design(), effect=0.03, seed=0)
    ```
    """
    if world not in WORLDS:
        raise ValueError(f"world must be one of {WORLDS}.")
    bases = sorted({d.removesuffix("_messy") for d in design.datasets})
    regs = len(REGULARIZERS)
    shared = {b: rng.normal(0, design.tau, (2, regs)) for b in bases}
    rows = []
    for dataset, activation, fraction in itertools.product(
        design.datasets, design.activations, design.fractions
    ):
        base = dataset.removesuffix("_messy")
        messy = dataset.endswith("_messy")
        level = 0.85 - 0.1 * messy - 0.05 * (1 - fraction)
        unit = rng.normal(0, design.sigma_unit, (2, regs))
        for seed in range(design.seeds):
            cell = rng.normal(0, design.sigma_seed, 2)
            noise = rng.normal(0, design.sigma_run, (2, regs))
            for i, reg in enumerate(REGULARIZERS):
                effect = _effect(world, reg, fraction)
                clean, noisy = (
                    level + effect + shared[base][:, i] + unit[:, i] + cell
                ) + noise[:, i]
                rows.append(
                    dict(
                        activation=activation,
                        regularizer=reg,
                        dataset=dataset,
                        train_fraction=fraction,
                        seed=seed,
                        epochs=1,
                        batch_size=64,
                        learning_rate=1e-3,
                        backend="simulated",
                        code="simulated",
                        messy=messy,
                        task=_TASKS[base],
                        accuracy=float(clean),
                        noisy_accuracy=float(noisy - 0.2),
                    )
                )
    return rows
