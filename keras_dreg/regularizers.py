"""The six regularizers of the DREG study, selected by name.

`regularize(model, name)` returns a trainable Keras model for each of

- `"none"`: the model as it is;
- `"weight_decay"`: `lam * sum ||W||^2` over the kernels
  (`keras_dreg.penalties.WeightDecay`, default `lam = 5e-4`);
- `"igpen"`: `lam * mean_i ||d l_i / d x_i||^2`, double backpropagation
  (`keras_dreg.penalties.InputGradientPenalty`, default `1e-2`);
- `"jacobian"`: `lam * mean_i ||d f(x_i) / d x_i||_F^2` by random
  projections (`keras_dreg.penalties.JacobianPenalty`, default `1e-2`);
- `"spectral_norm"`: every Dense and Conv layer wrapped in
  `keras.layers.SpectralNormalization`, not a loss term;
- `"dreg"`: the DREG penalty, `keras_dreg.wrap` (default `10**-2.5`).

The penalty-based ones log `<name>_penalty` beside `loss`. All but
`"spectral_norm"` share `model`'s layers and weights: training the
result trains `model`. `"spectral_norm"` rebuilds the model (see
`spectral_normalized`).
"""

import inspect

import keras
from keras import ops

from keras_dreg import model as dreg_model
from keras_dreg.internals import Functional
from keras_dreg.penalized_model import PenalizedModel
from keras_dreg.penalized_model import PenalizedWrapper
from keras_dreg.penalized_model import WrapperMixin
from keras_dreg.penalties.dreg import DEFAULT_LAM as DREG_LAM
from keras_dreg.penalties.dreg import DREG
from keras_dreg.penalties.input_gradient import InputGradientPenalty
from keras_dreg.penalties.jacobian import JacobianPenalty
from keras_dreg.penalties.weight_decay import WeightDecay

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

SPECTRAL_LAYERS = (
    keras.layers.Dense,
    keras.layers.Conv1D,
    keras.layers.Conv2D,
    keras.layers.Conv3D,
    keras.layers.Conv1DTranspose,
    keras.layers.Conv2DTranspose,
    keras.layers.Conv3DTranspose,
)


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
            `"dreg"`, and `power_iterations` for `"spectral_norm"`.

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

    >>> for name in keras_dreg.REGULARIZERS:
    ...     model = keras_dreg.regularize(build_model(), name)
    ...     model.compile("adam", "sparse_categorical_crossentropy")
    ...     model.fit(x, y)
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
        _check_options(name, options, ("power_iterations",))
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


def spectral_normalized(
    model: keras.Model, power_iterations: int = 1
) -> keras.Model:
    """A copy of `model` with each Dense and Conv layer spectrally normalized.

    Every `Dense`, `Conv1D/2D/3D` and `Conv*Transpose` layer, also in
    nested Sequential and Functional models, is wrapped in
    `SpectralNormalization(layer, power_iterations)`. The copy starts from
    `model`'s weights (they are copied, not shared).

    Args:
        model: A Sequential or Functional model; a subclassed model
            cannot be rebuilt and raises a `ValueError`.
        power_iterations: Power iterations per training step.

    Example:

    >>> normalized = spectral_normalized(model, power_iterations=2)
    >>> normalized.layers[1]
    <SpectralNormalization name=dense_spectral_norm, built=True>
    """
    copies = []

    def clone(layer):
        if isinstance(layer, keras.Model):
            raise _subclassed_error(layer)
        copy = layer.__class__.from_config(layer.get_config())
        if not isinstance(layer, keras.layers.Layer):
            # An operation of the graph (the `NotEqual` of an Embedding's
            # mask, say): stateless, nothing to copy.
            return copy
        copies.append((layer, copy))
        if isinstance(layer, SPECTRAL_LAYERS):
            return SpectralNormalization(
                copy,
                power_iterations=power_iterations,
                name=f"{layer.name}_spectral_norm",
            )
        return copy

    if not isinstance(model, (keras.Sequential, Functional)):
        raise _subclassed_error(model)
    normalized = keras.models.clone_model(
        model, clone_function=clone, recursive=True
    )
    for layer, copy in copies:
        copy.set_weights(layer.get_weights())
    return normalized


@keras.saving.register_keras_serializable(package="keras_dreg")
class SpectralNormalization(keras.layers.SpectralNormalization):
    """`keras.layers.SpectralNormalization`, normalized on every backend.

    Keras's layer assigns `W / sigma(W)` to the wrapped kernel in each
    training call and runs inference with the kernel as stored. JAX's
    stateless training step drops assignments to trainable variables, so
    there the kernel is never normalized (its largest singular value
    drifts far above 1). This subclass never assigns the kernel: every
    call, in training or inference, runs the wrapped layer with
    `W / sigma(W)`, `sigma` estimated by power iteration from the stored
    vector `u`, which only training updates. That is spectral
    normalization as Miyato et al. (2018) define it, the same on every
    backend; gradients flow through `sigma` (with `u` held fixed).

    Example:

    >>> layer = SpectralNormalization(keras.layers.Dense(10))
    """

    def __init__(self, layer, **kwargs):
        super().__init__(layer, **kwargs)
        # Pass a mask on where the wrapped layer does (`Dense` on tokens).
        self.supports_masking = layer.supports_masking

    def call(self, inputs, training=False):
        vector_u, kernel = ops.cond(
            ops.all(ops.equal(self.kernel.value, 0)),
            lambda: (self.vector_u.value, self.kernel.value),
            self.normalized_weights,
        )
        if training:
            self.vector_u.assign(vector_u)
        values = [
            (v, kernel if v is self.kernel else v.value)
            for v in self.layer.variables
        ]
        with keras.StatelessScope(state_mapping=values):
            outputs = self.layer(inputs)
        return ops.cast(outputs, inputs.dtype)


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


def _subclassed_error(model):
    return ValueError(
        f"'spectral_norm' rebuilds the model with each Dense and Conv layer "
        f"wrapped in keras.layers.SpectralNormalization, which needs a "
        f"Sequential or Functional model; '{model.name}' is a subclassed "
        f"{type(model).__name__}. Wrap its kernel layers yourself "
        "(`keras_dreg.regularizers.SpectralNormalization(layer)` in its "
        "`__init__`) and use `regularize(model, 'none')`."
    )
