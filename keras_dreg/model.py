"""`DREGRegularizedModel`: a `keras.Model` trained with the DREG penalty."""

import keras
from keras import ops

from keras_dreg import capture
from keras_dreg import internals
from keras_dreg import penalized_model
from keras_dreg import summary
from keras_dreg.penalties.dreg import DEFAULT_LAM
from keras_dreg.penalties.dreg import DREG


@keras.saving.register_keras_serializable(package="keras_dreg")
class DREGRegularizedModel(penalized_model.PenalizedModel):
    """A `keras.Model` whose training loss includes the DREG penalty.

    For a layer with kernel `W` and elementwise activation `phi`,
    `z = h W + b`, the penalty is the squared Frobenius norm of the
    layer Jacobian `da/dh = W diag(phi'(z))`:

        DREG(x) = lam * sum_l w_l * mean_{batch, positions}
                  sum_j phi'(z_j)^2 ||W[:, j]||^2

    summed over the regularized layers `l` (see `keras_dreg.penalty` for
    convolutions and `BatchNormalization`). `fit` logs the weighted
    penalty as `dreg_penalty`; `loss` includes it. `evaluate` and
    `predict` never compute it.

    Example: the three ways to build one.

    ```python
    # Functional
    inputs = keras.Input((784,))
    x = keras.layers.Dense(256, activation="gelu")(inputs)
    outputs = keras.layers.Dense(10)(x)
    model = keras_dreg.DREGRegularizedModel(inputs, outputs, lam=10**-2.5)

    # Subclassing
    class Net(keras_dreg.DREGRegularizedModel):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.hidden = keras.layers.Dense(256, activation="gelu")
            self.out = keras.layers.Dense(10)

        def call(self, x):
            return self.out(self.hidden(x))

    # Wrapping any existing model (layers and weights are shared)
    model = keras_dreg.wrap(existing_model, lam=10**-2.5)
    ```

    Args:
        lam: Penalty strength, a finite number >= 0. Defaults to
            `10**-2.5`, the single value of the DREG study.
        include: Layer names, class names or classes to regularize; `None`
            regularizes every eligible layer.
        exclude: Layer names, class names or classes not to regularize.
        include_linear: Also regularize kernel layers with no activation
            (`phi' = 1`, which gives `||W||_F^2` per position).
        stop_gradient_derivative: Treat `phi'(z)` as a constant in the
            backward pass, so only the weight norms receive gradient.
        unit_slope: An ablation: `phi'(z) = 1` on DREG's layers (see
            `keras_dreg.penalties.DREG`).
        every_n_steps: Apply the penalty on every `k`-th training step
            only (a cheaper mode); other steps add zero. On the torch
            backend, deciding whether a step is due reads one scalar
            from the device.
        layer_weights: Optional `{layer_name: weight}` multiplying each
            layer's term; layers not named get weight 1.
        sample_size: Compute the penalty on the first `sample_size`
            examples of each batch only, a cheaper, unbiased estimate
            when batches are shuffled (see `keras_dreg.penalties.DREG`);
            `None` (default) uses the whole batch.
        penalties: Further `keras_dreg.penalties.Penalty` instances to
            add beside DREG.
        **kwargs: Passed to `keras.Model` (`inputs`, `outputs`, `name`).
    """

    def __init__(
        self,
        *args,
        lam: float = DEFAULT_LAM,
        include=None,
        exclude=(),
        include_linear: bool = False,
        stop_gradient_derivative: bool = False,
        every_n_steps: int = 1,
        layer_weights: dict | None = None,
        unit_slope: bool = False,
        sample_size: int | None = None,
        penalties=(),
        **kwargs,
    ):
        dreg = DREG(
            lam=lam,
            include=include,
            exclude=exclude,
            include_linear=include_linear,
            stop_gradient_derivative=stop_gradient_derivative,
            every_n_steps=every_n_steps,
            layer_weights=layer_weights,
            unit_slope=unit_slope,
            sample_size=sample_size,
        )
        super().__init__(*args, penalties=[dreg, *penalties], **kwargs)

    @property
    def dreg(self) -> DREG:
        """The DREG penalty, with its options (`lam`, `include`, ...)."""
        return self._penalties[0]

    @property
    def lam(self) -> float:
        """The penalty strength."""
        return self.dreg.lam

    @property
    def dreg_layers(self) -> list[capture.RegularizedLayer]:
        """The layers regularized, each with the activation found for it."""
        return list(self.penalty_state(self.dreg).capture.sites)

    def dreg_summary(self, print_fn=None) -> str:
        """Prints every kernel layer and nonlinear activation of the model:
        regularized by DREG, or not and why, in the style of
        `model.summary()`.

        Args:
            print_fn: Called with the table; defaults to `print`.

        Returns:
            The table, as a string.

        Example:

        >>> inputs = keras.Input((4,))
        >>> x = keras.layers.Dense(8, activation="gelu", name="hidden")(inputs)
        >>> outputs = keras.layers.Dense(2)(x)
        >>> model = keras_dreg.wrap(keras.Model(inputs, outputs))
        >>> _ = model.dreg_summary()
        DREG summary of '...': 1 layer(s) regularized, 1 not
        ...
        """
        table = summary.format_survey(self, self.penalty_state(self.dreg))
        (print_fn or print)(table)
        return table

    def dreg_penalty(self, x, per_layer: bool = False):
        """The weighted penalty of `x`, outside training.

        Runs the model in inference mode (`training=False`, so a
        `BatchNormalization` uses its moving statistics).

        Args:
            x: A batch of inputs.
            per_layer: Return `{layer_name: value}` instead of the sum.

        Returns:
            A float32 scalar tensor, or a dict of them.

        Example:

        >>> inputs = keras.Input((4,))
        >>> x = keras.layers.Dense(8, activation="gelu", name="hidden")(inputs)
        >>> outputs = keras.layers.Dense(2)(x)
        >>> model = keras_dreg.wrap(keras.Model(inputs, outputs))
        >>> x_batch = np.random.normal(size=(16, 4))
        >>> total = model.dreg_penalty(x_batch)
        >>> per_layer = model.dreg_penalty(x_batch, per_layer=True)
        >>> sorted(per_layer)
        ['hidden']
        """
        state = self.penalty_state(self.dreg)
        with self.dreg.recording(state) as records:
            self(x, training=False)
            terms = self.dreg.layer_terms(state, records)
        if per_layer:
            return terms
        return ops.sum(ops.stack(list(terms.values())))

    def mean_squared_derivatives(self, x) -> dict:
        """`{layer_name: mean(phi'(z)^2)}` on `x`, with `training=False`.

        Shows where the activation derivative, and so the pressure of the
        penalty, is largest.

        Example:

        >>> inputs = keras.Input((4,))
        >>> x = keras.layers.Dense(8, activation="tanh", name="hidden")(inputs)
        >>> outputs = keras.layers.Dense(2)(x)
        >>> model = keras_dreg.wrap(keras.Model(inputs, outputs))
        >>> means = model.mean_squared_derivatives(np.zeros((2, 4)))
        >>> float(means["hidden"])  # tanh'(z)^2 <= 1, = 1 at z = 0 (bias 0)
        1.0
        """
        state = self.penalty_state(self.dreg)
        with self.dreg.recording(state) as records:
            self(x, training=False)
            return self.dreg.mean_squared_derivatives(state, records)

    def get_config(self):
        config = super().get_config()
        config["penalties"] = config["penalties"][1:]
        config.update(self.dreg.get_config())
        return config


@keras.saving.register_keras_serializable(package="keras_dreg")
class FunctionalDREGModel(DREGRegularizedModel, internals.Functional):
    """`DREGRegularizedModel(inputs, outputs)` builds one of these."""


penalized_model.register_functional_class(
    DREGRegularizedModel, FunctionalDREGModel
)


@keras.saving.register_keras_serializable(package="keras_dreg")
class DREGWrapper(penalized_model.WrapperMixin, DREGRegularizedModel):
    """A `DREGRegularizedModel` around an existing model; see `wrap`."""


def wrap(model: keras.Model, lam: float = DEFAULT_LAM, **options):
    """Returns a `DREGRegularizedModel` that trains `model` with DREG.

    The result shares `model`'s layers and weights (nothing is copied):
    training it trains `model`. Works for Sequential, Functional and
    subclassed models, and models nested inside models. `model` itself
    is left as it was: saving it needs nothing from keras-dreg.

    Args:
        model: The model to regularize.
        lam: Penalty strength; defaults to `10**-2.5`.
        **options: The other options of `DREGRegularizedModel`.

    Example:

    >>> base = keras.Sequential(
    ...     [keras.Input((4,)), keras.layers.Dense(8, activation="gelu"),
    ...      keras.layers.Dense(3)]
    ... )
    >>> model = keras_dreg.wrap(base)
    >>> model.compile("adam", "sparse_categorical_crossentropy")
    >>> history = model.fit(np.ones((8, 4)), np.zeros(8), verbose=0)
    >>> sorted(history.history)
    ['dreg_penalty', 'loss']
    """
    return DREGWrapper(model, lam=lam, **options)
