"""How the study trains each regularizer: strength, options, optimizer.

Every regularizer runs at one fixed strength, chosen before any result
was seen and never tuned. The table gives each strength in this
package's convention (the penalty that is added to the loss) and where
the number comes from:

- `none`: no penalty.
- `weight_decay`: `lam * sum ||W||^2` over the kernels, `lam = 2.5e-4`:
  Hoffman et al.'s (2019) MNIST example trains with SGD
  `weight_decay=5e-4`, which adds `5e-4 * W` to the gradient, i.e. an
  L2 loss of `(5e-4 / 2) ||W||^2`. (The package's own default, 5e-4,
  is twice that.)
- `igpen`: `lam * mean_i ||d l_i / d x_i||^2`, `lam = 1e-2`: this
  project's choice; the preprint gives no strength for it, and no
  published setting of this loss-gradient penalty fits the study.
- `jacobian`: `lam * mean_i ||J_i||_F^2`, `lam = 5e-2`: Hoffman et al.'s
  reference code trains with `lambda_JR = 0.1` on
  `(1/2) mean_i ||J_i||_F^2`.
- `spectral_norm`: no strength; hidden layers normalized to largest
  singular value 1 (Miyato et al., 2018), the output layer
  unnormalized (`keras_dreg.spectral_normalization` says why), one
  power iteration per step.
- `dreg`: `lam * sum_l mean sum_j phi'(z_j)^2 ||w_j||^2`,
  `lam = 10**-2.5`: the preprint's one fixed strength.

Two ablations are available to a study (not among `REGULARIZERS`):

- `dreg_unit_slope`: DREG on the same layers at the same `lam` with
  `phi'` fixed to 1 (`unit_slope=True`): the kernel norms of DREG's
  layers. DREG minus this isolates "where the derivative is large"
  from "how much" and "which layers".
- `weight_decay_adamw`: decoupled weight decay, `keras.optimizers.AdamW`
  with `weight_decay=5e-4` on the kernels (biases, normalization scales
  and embeddings excluded, as `weight_decay` excludes them). Keras's
  AdamW shrinks each kernel by `learning_rate * weight_decay * W` per
  step, the decay SGD's `weight_decay=5e-4` applies at the same learning
  rate: the same source setting as `weight_decay`, decoupled from Adam's
  scaling. At the study's `1e-3` that is a shrink of `5e-7` per step,
  so expect it to train close to `none`.

A study may also train a regularizer at other strengths (a `lam` grid,
`config.StudyConfig.lam`): `Setting.record(lam)` and
`Setting.build(..., lam=lam)` give such a run, whose record also holds
`default_lam`, the setting's own strength, so the analysis can tell the
grid's runs from the runs at the study strength. Your own regularizers
join with `register_regularizer`.

Strength and placement are confounded between the rows of the table:
under ReLU, where `phi'^2` is 1 for the active units and 0 otherwise,
DREG is `10**-2.5` times the squared kernel norms of the hidden layers
weighted by how often each unit fires: with half of them firing, about
`0.5 * 10**-2.5 / 2.5e-4 = 6x` weight decay's strength there, and none
on the output layer. `dreg_unit_slope` keeps DREG's strength and layers
and removes only `phi'`.

Example:

>>> setting = SETTINGS["weight_decay"]
>>> setting.lam
0.00025
>>> model, optimizer = setting.build(model, 1e-3)  # doctest: +SKIP
"""

import dataclasses
from collections.abc import Callable
from typing import Any

import keras

from keras_dreg.regularizers import REGULARIZERS
from keras_dreg.regularizers import regularize

ABLATIONS = ("dreg_unit_slope", "weight_decay_adamw")
"""The ablations a study may add to `REGULARIZERS`."""

_NOT_DECAYED = ("bias", "gamma", "beta", "embeddings")


@dataclasses.dataclass(frozen=True)
class Setting:
    """One regularizer as the study trains it.

    Args:
        name: The study's name for it (`REGULARIZERS` or `ABLATIONS`).
        regularizer: The `keras_dreg.regularize` name it uses.
        lam: Its strength (`None` for those without one).
        options: Further `regularize` options.
        weight_decay: AdamW's decoupled decay; `None` trains with Adam.
        source: Where `lam` (or `weight_decay`) comes from.
        factory: For a regularizer of your own (`register_regularizer`),
            ``factory(model, lam=lam, **options)`` returns the
            regularized model; `None` uses `keras_dreg.regularize`.

    Example:

    ```python
    setting = SETTINGS["dreg"]
    setting.lam  # 10**-2.5
    ```
    """

    name: str
    regularizer: str
    lam: float | None = None
    options: tuple[tuple[str, Any], ...] = ()
    weight_decay: float | None = None
    source: str = ""
    factory: Callable[..., keras.Model] | None = None

    def record(self, lam: float | None = None) -> dict[str, Any]:
        """Everything about the setting that changes a run's result.

        `lam` (default: the setting's own) is the strength of the run;
        a different one is recorded with the setting's as `default_lam`.

        Example:

        >>> SETTINGS["dreg_unit_slope"].record()["unit_slope"]
        True
        >>> SETTINGS["dreg"].record(1e-2)["default_lam"]
        0.0031622776601683794
        """
        lam = self.strength(lam)
        record = {
            "regularizer": self.regularizer,
            "lam": lam,
            **dict(self.options),
            "optimizer": "adam" if self.weight_decay is None else "adamw",
            "weight_decay": self.weight_decay,
        }
        if self.factory is not None:
            record["factory"] = _qualified_name(self.factory)
        if lam != self.lam:
            record["default_lam"] = self.lam
        return record

    def strength(self, lam: float | None = None) -> float | None:
        """`lam` as a float, or the setting's own strength if `None`.

        Raises:
            ValueError: If the setting has no strength to change.

        Example:

        >>> SETTINGS["none"].strength(0.1)
        Traceback (most recent call last):
        ValueError: Regularizer 'none' has no lam to set.
        """
        if lam is None:
            return self.lam
        if self.lam is None:
            raise ValueError(f"Regularizer {self.name!r} has no lam to set.")
        if not lam > 0:
            raise ValueError(f"lam must be > 0, got {lam}.")
        return float(lam)

    def build(
        self,
        model: keras.Model,
        learning_rate: float,
        lam: float | None = None,
    ) -> tuple[keras.Model, keras.optimizers.Optimizer]:
        """The regularized model (at `lam`, default its own) and optimizer."""
        lam = self.strength(lam)
        strength = {} if lam is None else {"lam": lam}
        if self.factory is None:
            regularized = regularize(
                model, self.regularizer, **strength, **dict(self.options)
            )
        else:
            regularized = self.factory(model, **strength, **dict(self.options))
            if not isinstance(regularized, keras.Model):
                raise TypeError(
                    f"The factory of {self.name!r} returned "
                    f"{type(regularized).__name__}, not a keras.Model."
                )
        if self.weight_decay is None:
            return regularized, keras.optimizers.Adam(learning_rate)
        optimizer = keras.optimizers.AdamW(
            learning_rate, weight_decay=self.weight_decay
        )
        optimizer.exclude_from_weight_decay(var_names=list(_NOT_DECAYED))
        return regularized, optimizer


SETTINGS = {
    s.name: s
    for s in (
        Setting("none", "none"),
        Setting(
            "weight_decay",
            "weight_decay",
            lam=2.5e-4,
            source="SGD weight_decay=5e-4 (Hoffman et al. 2019, MNIST "
            "example) = an L2 loss (5e-4/2)||W||^2",
        ),
        Setting(
            "igpen",
            "igpen",
            lam=1e-2,
            source="this project's choice (no source in the preprint)",
        ),
        Setting(
            "jacobian",
            "jacobian",
            lam=5e-2,
            source="Hoffman et al. 2019: lambda_JR = 0.1 on (1/2) mean "
            "||J||_F^2",
        ),
        Setting(
            "spectral_norm",
            "spectral_norm",
            options=(("power_iterations", 1), ("normalize_output", False)),
            source="Miyato et al. 2018; output layer unnormalized",
        ),
        Setting(
            "dreg",
            "dreg",
            lam=10**-2.5,
            source="the preprint's fixed strength",
        ),
        Setting(
            "dreg_unit_slope",
            "dreg",
            lam=10**-2.5,
            options=(("unit_slope", True),),
            source="ablation: DREG's lam, phi' fixed to 1",
        ),
        Setting(
            "weight_decay_adamw",
            "none",
            weight_decay=5e-4,
            source="ablation: AdamW, the SGD setting 5e-4 decoupled "
            "(per step W -= lr * 5e-4 * W)",
        ),
    )
}
"""The study's regularizers and ablations, by name."""

assert set(REGULARIZERS) | set(ABLATIONS) == set(SETTINGS)


def register_regularizer(
    name: str,
    factory: Callable[..., keras.Model],
    lam: float | None = None,
    source: str = "",
    **options: Any,
) -> Setting:
    """Adds a regularizer of your own to the study, as `name`.

    A run of it calls ``factory(model, lam=lam, **options)`` (without
    `lam` when it is `None`) on the study's fresh model and trains what
    it returns with Adam, exactly as the built-in regularizers are
    trained. The model it returns adds its penalty as a loss of the
    training forward pass (`add_loss`, as Keras's activity regularizers
    do), or is the model itself with regularized layers. `lam` is its
    study strength; a `lam` grid (`StudyConfig.lam`) may run others. The
    factory's module and name are recorded with every run. Register it
    in a module that the study imports (`StudyConfig.imports`, the
    CLI's `--imports`), so that every worker has it.

    Args:
        name: The study's name for it; must be new.
        factory: ``factory(model, lam=..., **options) -> keras.Model``.
        lam: Its strength (`None`: it takes none).
        source: Where the strength comes from, for the record.
        **options: Further keyword arguments for `factory`.

    Returns:
        The new `Setting` (also in `SETTINGS`).

    Example:

    >>> def l2(model, lam):
    ...     return keras_dreg.regularize(model, "weight_decay", lam=lam)
    >>> register_regularizer("my_l2", l2, lam=1e-4).record()["lam"]
    0.0001
    >>> del SETTINGS["my_l2"]
    """
    if name in SETTINGS:
        raise ValueError(f"A regularizer named {name!r} is registered.")
    if not callable(factory):
        raise TypeError(f"factory must be callable, got {factory!r}.")
    setting = Setting(
        name,
        name,
        lam=None if lam is None else float(lam),
        options=tuple(sorted(options.items())),
        source=source,
        factory=factory,
    )
    SETTINGS[name] = setting
    return setting


def _qualified_name(function: Callable) -> str:
    module = getattr(function, "__module__", None) or "?"
    return f"{module}.{getattr(function, '__qualname__', repr(function))}"
