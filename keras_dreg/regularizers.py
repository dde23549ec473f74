"""The six regularizers of the DREG study, selected by name.

`regularize(model, name)` returns a trainable Keras model for each of

- `"none"`: the model as it is;
- `"weight_decay"`: `lam * sum ||W||^2` over the kernels
  (`keras_dreg.penalties.WeightDecay`, default `lam = 2.5e-4`);
- `"igpen"`: `lam * mean_i ||d l_i / d x_i||^2`, double backpropagation
  (`keras_dreg.penalties.InputGradientPenalty`, default `1e-2`);
- `"jacobian"`: `lam * mean_i ||d f(x_i) / d x_i||_F^2` by random
  projections (`keras_dreg.penalties.JacobianPenalty`, default `5e-2`);
- `"spectral_norm"`: every hidden Dense and Conv layer wrapped in
  `SpectralNormalization`, not a loss term; the output layer stays
  unnormalized (`keras_dreg.spectral_normalization`);
- `"dreg"`: the DREG penalty, `keras_dreg.wrap` (default `10**-2.5`).

The penalty-based ones log `<name>_penalty` beside `loss`. All but
`"spectral_norm"` share `model`'s layers and weights: training the
result trains `model`. `"spectral_norm"` rebuilds the model (see
`keras_dreg.spectral_normalization.spectral_normalized`).
"""

import inspect

import keras

from keras_dreg import model as dreg_model
from keras_dreg.penalized_model import PenalizedModel
from keras_dreg.penalized_model import PenalizedWrapper
from keras_dreg.penalized_model import WrapperMixin
from keras_dreg.penalties.dreg import DEFAULT_LAM as DREG_LAM
from keras_dreg.penalties.dreg import DREG
from keras_dreg.penalties.input_gradient import InputGradientPenalty
from keras_dreg.penalties.jacobian import JacobianPenalty
from keras_dreg.penalties.weight_decay import WeightDecay
from keras_dreg.spectral_normalization import SpectralNormalization  # noqa: F401 (re-export)
from keras_dreg.spectral_normalization import spectral_normalized

REGULARIZERS = (
    "none",
    "weight_decay",
    "igpen",
    "jacobian",
    "spectral_norm",
    "dreg",
)
"""The names `regularize` accepts: the DREG study's six regularizers."""

PENALTIES = {
    "weight_decay": WeightDecay,
    "igpen": InputGradientPenalty,
    "jacobian": JacobianPenalty,
}


def regularize(
    model: keras.Model, name: str, lam: float | None = None, **options
) -> keras.Model:
    """Returns a model that trains `model` with the regularizer `name`.

    Args:
        model: The model to regularize.
        name: One of `REGULARIZERS`.
        lam: Strength; `None` takes the regularizer's default. `"none"`
            and `"spectral_norm"` have no strength and take no `lam`.
        **options: The regularizer's own options: those of its penalty
            class (e.g. `num_projections` and `exact` for `"jacobian"`,
            `every_n_steps` for every penalty), of `keras_dreg.wrap` for
            `"dreg"`, and `power_iterations` and `normalize_output` for
            `"spectral_norm"`.

    Returns:
        A `keras_dreg.PenalizedModel`, to compile and fit. Given a model
        that `regularize` or `keras_dreg.wrap` made, the new regularizer
        is added beside the ones it has (DREG + weight decay is a normal
        combination); nothing is dropped.

    Raises:
        ValueError: for an unknown `name` (the message lists the valid
            ones), a subclassed model with `"spectral_norm"`, a
            regularizer the model has already, or a functional or
            subclassed `PenalizedModel` (give it all its penalties at
            once instead).
        TypeError: for an option the regularizer does not have.

    Example: the study's six runs.

    >>> def build_model():
    ...     inputs = keras.Input((4,))
    ...     x = keras.layers.Dense(8, activation="gelu")(inputs)
    ...     return keras.Model(inputs, keras.layers.Dense(3)(x))
    >>> x, y = np.ones((8, 4)), np.zeros(8)
    >>> for name in keras_dreg.REGULARIZERS:
    ...     model = keras_dreg.regularize(build_model(), name)
    ...     model.compile("adam", "sparse_categorical_crossentropy")
    ...     _ = model.fit(x, y, verbose=0)
    >>> model = keras_dreg.regularize(keras_dreg.wrap(build_model()), "igpen")
    >>> [p.name for p in model.penalties]  # DREG and IGPen together
    ['dreg', 'igpen']
    """
    if name not in REGULARIZERS:
        raise ValueError(
            f"Unknown regularizer {name!r}. Valid names: "
            f"{', '.join(REGULARIZERS)}."
        )
    if name in ("none", "spectral_norm") and lam is not None:
        raise TypeError(f"Regularizer {name!r} has no strength `lam`.")
    if isinstance(model, PenalizedModel):
        return _add_to_penalized(model, name, lam, options)
    if name == "none":
        _check_options(name, options, ())
        return PenalizedWrapper(model, penalties=[])
    if name == "spectral_norm":
        _check_options(name, options, ("power_iterations", "normalize_output"))
        return PenalizedWrapper(
            spectral_normalized(model, **options), penalties=[]
        )
    if name == "dreg":
        _check_options(
            name, options, _parameters(dreg_model.DREGRegularizedModel)
        )
        return dreg_model.wrap(
            model, lam=DREG_LAM if lam is None else lam, **options
        )
    penalty_class = PENALTIES[name]
    _check_options(name, options, _parameters(penalty_class))
    return PenalizedWrapper(model, penalties=[penalty_class(lam, **options)])


def _add_to_penalized(model, name, lam, options):
    """`model`'s wrapped model with its penalties and `name`'s."""
    if not isinstance(model, WrapperMixin):
        raise ValueError(
            f"Model '{model.name}' is a {type(model).__name__} with the "
            f"penalties {model.penalties} built in; `regularize` can add "
            f"{name!r} only to a model that `regularize` or "
            "`keras_dreg.wrap` made. Pass every penalty when you build "
            "it: `penalties=[...]` (e.g. `DREGRegularizedModel(inputs, "
            "outputs, penalties=[keras_dreg.penalties.WeightDecay()])`)."
        )
    combined = regularize(model.wrapped, name, lam, **options)
    penalties = model.penalties + combined.penalties
    names = [p.name for p in penalties]
    if len(set(names)) != len(names):
        raise ValueError(
            f"Model '{model.name}' already has the regularizer {name!r} "
            f"(its penalties: {model.penalties}). Set its strength when "
            "you first add it."
        )
    dreg = [p for p in penalties if isinstance(p, DREG)]
    others = [p for p in penalties if not isinstance(p, DREG)]
    if dreg:
        return dreg_model.wrap(
            combined.wrapped, **dreg[0].get_config(), penalties=others
        )
    return PenalizedWrapper(combined.wrapped, penalties=others)


def _parameters(cls) -> tuple[str, ...]:
    """The keyword options of `cls`'s constructor, but `lam`."""
    parameters = inspect.signature(cls.__init__).parameters.values()
    return tuple(
        p.name
        for p in parameters
        if p.kind == p.POSITIONAL_OR_KEYWORD or p.kind == p.KEYWORD_ONLY
        if p.name not in ("self", "lam")
    )


def _check_options(name, options, valid):
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise TypeError(
            f"Regularizer {name!r} has no option(s) {unknown}. Its options: "
            f"{', '.join(valid) or 'none'}."
        )
