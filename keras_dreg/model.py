"""`DREGRegularizedModel`: a `keras.Model` that adds the DREG penalty.

The model keeps Keras's own `train_step` on every backend. It only
wraps it: the step runs inside `ActivationCapture.recording()`, which
records each regularized layer's pre-activation `z` during the forward
pass, and `compute_loss` adds

    lam * sum_l weight_l * DREG_l(x)

to the loss (see `keras_dreg.penalty`). Loss scaling under mixed
precision, metrics, `jit_compile`, JAX's stateless step and
`tf.distribute` therefore work as they do for any Keras model.
"""

import math
import numbers

import keras
from keras import ops
from keras.src.losses.loss import scale_loss_for_distribution
from keras.src.models.functional import Functional
from keras.src.models.model import functional_init_arguments

from keras_dreg import capture
from keras_dreg import penalty

DEFAULT_LAM = 10**-2.5
PENALTY_METRIC = "dreg_penalty"


@keras.saving.register_keras_serializable(package="keras_dreg")
class DREGRegularizedModel(keras.Model):
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

    Three ways to build one:

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
        every_n_steps: Apply the penalty on every `k`-th training step
            only (a cheaper mode); other steps add zero.
        layer_weights: Optional `{layer_name: weight}` multiplying each
            layer's term; layers not named get weight 1.
        **kwargs: Passed to `keras.Model` (`inputs`, `outputs`, `name`).
    """

    def __new__(cls, *args, **kwargs):
        if functional_init_arguments(args, kwargs) and not issubclass(
            cls, Functional
        ):
            cls = _functional_class(cls)
        return super().__new__(cls, *args, **kwargs)

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
        **kwargs,
    ):
        super().__init__(*args, **kwargs)
        self.lam = _validate_lam(lam)
        self.every_n_steps = _validate_every_n_steps(every_n_steps)
        self.include = None if include is None else _selectors(include)
        self.exclude = _selectors(exclude)
        self.include_linear = bool(include_linear)
        self.stop_gradient_derivative = bool(stop_gradient_derivative)
        self.layer_weights = _validate_layer_weights(layer_weights)
        self._dreg_penalty_tracker = keras.metrics.Mean(name=PENALTY_METRIC)
        if self.every_n_steps > 1:
            self._dreg_step = keras.Variable(
                0, dtype="int32", trainable=False, name="dreg_step"
            )
        self._dreg_capture = None
        if self._layers_known():
            self._capture()

    def _layers_known(self):
        return isinstance(self, Functional)

    @property
    def dreg_layers(self) -> list[capture.RegularizedLayer]:
        """The layers regularized, each with the activation found for it."""
        return list(self._capture().sites)

    def _capture(self):
        if self._dreg_capture is None:
            sites = capture.find_regularized_layers(
                self,
                include=self.include,
                exclude=self.exclude,
                include_linear=self.include_linear,
            )
            _check_sites(self, sites)
            self._dreg_capture = capture.ActivationCapture(sites)
        return self._dreg_capture

    def train_step(self, *args, **kwargs):
        with self._capture().recording():
            return super().train_step(*args, **kwargs)

    def compute_loss(
        self, x=None, y=None, y_pred=None, sample_weight=None, training=True
    ):
        loss = super().compute_loss(
            x=x,
            y=y,
            y_pred=y_pred,
            sample_weight=sample_weight,
            training=training,
        )
        records = self._dreg_capture.records if training else None
        if records is None:
            return loss
        weighted = self._scheduled_penalty(records)
        self._dreg_penalty_tracker.update_state(weighted)
        weighted = scale_loss_for_distribution(weighted)
        return loss + ops.cast(weighted, loss.dtype)

    def _scheduled_penalty(self, records):
        if self.every_n_steps == 1:
            return self._weighted_penalty(records)
        step = self._dreg_step
        due = ops.equal(ops.mod(step.value, self.every_n_steps), 0)
        step.assign(step.value + 1)
        return ops.cond(
            due,
            lambda: self._weighted_penalty(records),
            lambda: ops.zeros((), "float32"),
        )

    def _weighted_penalty(self, records):
        terms = self._layer_terms(records)
        return ops.sum(ops.stack(list(terms.values())))

    def _layer_terms(self, records):
        """`lam * weight_l * DREG_l` for each site, in float32."""
        terms = {}
        for site, site_records in zip(self._capture().sites, records):
            values = [
                self._record_penalty(site, record)
                for record in site_records
                if record.pre_activation is not None
            ]
            value = (
                ops.mean(ops.stack(values))
                if values
                else ops.zeros((), "float32")
            )
            weight = self.lam * self.layer_weights.get(site.name, 1.0)
            terms[site.name] = value * weight
        return terms

    def _record_penalty(self, site, record):
        unit_scale = None
        if site.batch_norm is not None:
            unit_scale = penalty.batch_norm_scale(
                site.batch_norm,
                record.batch_norm_inputs,
                record.batch_norm_training,
            )
        return penalty.layer_penalty(
            site.layer,
            record.pre_activation,
            site.activation.derivative,
            unit_scale=unit_scale,
            stop_gradient_derivative=self.stop_gradient_derivative,
        )

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

        >>> model.dreg_penalty(x_batch)
        >>> model.dreg_penalty(x_batch, per_layer=True)["dense"]
        """
        with self._capture().recording() as records:
            self(x, training=False)
            terms = self._layer_terms(records)
        if per_layer:
            return terms
        return ops.sum(ops.stack(list(terms.values())))

    def mean_squared_derivatives(self, x) -> dict:
        """`mean(phi'(z)^2)` of each regularized layer on `x`.

        Shows where the activation derivative, and so the pressure of the
        penalty, is largest. Runs the model with `training=False`.
        """
        with self._capture().recording() as records:
            self(x, training=False)
            return {
                site.name: ops.mean(
                    ops.stack(
                        [
                            ops.mean(
                                ops.square(
                                    site.activation.derivative(
                                        ops.cast(r.pre_activation, "float32")
                                    )
                                )
                            )
                            for r in site_records
                            if r.pre_activation is not None
                        ]
                    )
                )
                for site, site_records in zip(self._capture().sites, records)
            }

    def get_metrics_result(self):
        results = super().get_metrics_result()
        if self._dreg_capture is None or self._dreg_capture.records is None:
            results.pop(PENALTY_METRIC, None)
        return results

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "lam": self.lam,
                "include": None if self.include is None else list(self.include),
                "exclude": list(self.exclude),
                "include_linear": self.include_linear,
                "stop_gradient_derivative": self.stop_gradient_derivative,
                "every_n_steps": self.every_n_steps,
                "layer_weights": dict(self.layer_weights),
            }
        )
        return config


@keras.saving.register_keras_serializable(package="keras_dreg")
class FunctionalDREGModel(DREGRegularizedModel, Functional):
    """`DREGRegularizedModel(inputs, outputs)` builds one of these.

    A class of its own, so that functional construction does not mutate
    `DREGRegularizedModel` the way `keras.Model` subclasses otherwise are
    (keras-team/keras#17270).
    """


_FUNCTIONAL_CLASSES = {DREGRegularizedModel: FunctionalDREGModel}


def _functional_class(cls):
    if cls not in _FUNCTIONAL_CLASSES:
        _FUNCTIONAL_CLASSES[cls] = type(
            cls.__name__,
            (cls, Functional),
            {"__module__": cls.__module__, "__qualname__": cls.__qualname__},
        )
    return _FUNCTIONAL_CLASSES[cls]


@keras.saving.register_keras_serializable(package="keras_dreg")
class DREGWrapper(DREGRegularizedModel):
    """A `DREGRegularizedModel` around an existing model; see `wrap`."""

    def __init__(self, model: keras.Model, **kwargs):
        super().__init__(**kwargs)
        self.wrapped = model
        self._capture()

    def call(self, inputs, training=None):
        return self.wrapped(inputs, training=training)

    def get_config(self):
        config = super().get_config()
        config["model"] = keras.saving.serialize_keras_object(self.wrapped)
        return config

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        model = keras.saving.deserialize_keras_object(
            config.pop("model"), custom_objects=custom_objects
        )
        return cls(model, **config)


def wrap(model: keras.Model, lam: float = DEFAULT_LAM, **options):
    """Returns a `DREGRegularizedModel` that trains `model` with DREG.

    The result shares `model`'s layers and weights (nothing is copied):
    training it trains `model`. Works for Sequential, Functional and
    subclassed models, and models nested inside models.

    Args:
        model: The model to regularize.
        lam: Penalty strength; defaults to `10**-2.5`.
        **options: The other options of `DREGRegularizedModel`.

    Example:

    >>> base = keras.applications.ConvNeXtTiny(
    ...     weights=None, input_shape=(32, 32, 3), classes=10
    ... )
    >>> model = keras_dreg.wrap(base)
    >>> model.compile("adam", "sparse_categorical_crossentropy")
    >>> model.fit(x, y)
    """
    if not isinstance(model, keras.Model):
        raise TypeError(
            "`wrap` expects a `keras.Model`; received "
            f"{type(model).__name__}. Build a model first, e.g. with "
            "`keras.Sequential([...])`."
        )
    return DREGWrapper(model, lam=lam, **options)


def _validate_lam(lam):
    if isinstance(lam, bool) or not isinstance(lam, numbers.Real):
        raise TypeError(
            f"`lam` must be a real number, received {lam!r} of type "
            f"{type(lam).__name__}. The study's value is 10**-2.5."
        )
    if not math.isfinite(lam) or lam < 0:
        raise ValueError(
            f"`lam` must be finite and >= 0, received {lam}. Use lam=0 to "
            "train without the penalty."
        )
    return float(lam)


def _validate_every_n_steps(every_n_steps):
    if isinstance(every_n_steps, bool) or not isinstance(
        every_n_steps, numbers.Integral
    ):
        raise TypeError(
            f"`every_n_steps` must be an integer >= 1, received "
            f"{every_n_steps!r}."
        )
    if every_n_steps < 1:
        raise ValueError(
            f"`every_n_steps` must be >= 1, received {every_n_steps}."
        )
    return int(every_n_steps)


def _selectors(selectors):
    if isinstance(selectors, (str, type)):
        selectors = [selectors]
    return [s.__name__ if isinstance(s, type) else str(s) for s in selectors]


def _validate_layer_weights(layer_weights):
    layer_weights = dict(layer_weights or {})
    for name, weight in layer_weights.items():
        if isinstance(weight, bool) or not isinstance(weight, numbers.Real):
            raise TypeError(
                f"`layer_weights['{name}']` must be a number, received "
                f"{weight!r}."
            )
        if not math.isfinite(weight) or weight < 0:
            raise ValueError(
                f"`layer_weights['{name}']` must be finite and >= 0, "
                f"received {weight}."
            )
    return {name: float(w) for name, w in layer_weights.items()}


def _check_sites(model, sites):
    if not sites:
        raise ValueError(
            f"Model '{model.name}' has no layer DREG can regularize: DREG "
            "needs a kernel layer (Dense, EinsumDense, Conv*, "
            "DepthwiseConv*, SeparableConv*) followed by a nonlinear "
            "elementwise activation. Check `include`/`exclude`, or pass "
            "`include_linear=True` to regularize linear layers."
        )
    names = {site.name for site in sites}
    unknown = sorted(set(model.layer_weights) - names)
    if unknown:
        raise ValueError(
            f"`layer_weights` names layers DREG does not regularize: "
            f"{unknown}. Regularized layers: {sorted(names)}."
        )
