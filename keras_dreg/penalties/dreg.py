"""The DREG penalty as a `Penalty`: the sum of the layer terms."""

import dataclasses
import warnings

import keras
from keras import ops

from keras_dreg import capture
from keras_dreg import penalty
from keras_dreg.penalties import base

DEFAULT_LAM = 10**-2.5
"""DREG's default strength, `10**-2.5` (about 0.0031623): the single value
the DREG preprint uses on every data set."""


@keras.saving.register_keras_serializable(package="keras_dreg")
class DREG(base.Penalty):
    """`lam * sum_l w_l * mean_{batch, positions} sum_j phi'(z_j)^2
    ||w_j||^2`, the layer-wise Jacobian penalty.

    See `keras_dreg.penalty` for the math of each layer kind and
    `keras_dreg.capture` for the layers it covers. The pre-activations
    `z` are recorded during the training step's own forward pass, so no
    extra forward or backward pass is needed.

    Args:
        lam: Strength; defaults to `10**-2.5`, the DREG study's value.
        include: Layer names, class names or classes to regularize;
            `None` regularizes every eligible layer.
        exclude: Layer names, class names or classes not to regularize.
        include_linear: Also regularize kernel layers with no activation.
        stop_gradient_derivative: Treat `phi'(z)` as a constant in the
            backward pass.
        unit_slope: An ablation: take `phi'(z) = 1` on DREG's layers, so
            each layer adds `||W||_F^2` per position (weight decay placed
            and scaled as DREG). Separates "where the derivative is large"
            from "how much" at the same `lam`.
        every_n_steps: Apply it on every `k`-th training step only.
        layer_weights: Optional `{layer_name: weight}`; default 1.
        sample_size: A speed knob: compute each layer's term on the
            first `sample_size` examples of the batch only (the forward
            pass still runs on the whole batch, eager PyTorch's GELU
            evaluates `phi'` on those examples only, and a
            `BatchNormalization`'s scale stays the whole batch's). With
            `fit`'s default `shuffle=True` the batch is in random
            order, so this is an unbiased estimate of the exact penalty
            (with a mask of positions, a ratio of two unbiased means,
            nearly so). It is *not* unbiased when the batches are not
            shuffled (`shuffle=False`, a sorted `tf.data` pipeline):
            then the same examples are always the ones penalized.
            `None` (the default) uses every example; a `sample_size` of
            at least the batch size gives exactly the default's value.

    Example:

    ```python
    model = keras_dreg.PenalizedModel(
        inputs, outputs, penalties=[keras_dreg.penalties.DREG()]
    )
    ```
    """

    name = "dreg"
    default_lam = DEFAULT_LAM
    in_forward = True

    def __init__(
        self,
        lam: float | None = None,
        include=None,
        exclude=(),
        include_linear: bool = False,
        stop_gradient_derivative: bool = False,
        every_n_steps: int = 1,
        layer_weights: dict | None = None,
        unit_slope: bool = False,
        sample_size: int | None = None,
    ):
        super().__init__(lam, every_n_steps)
        self.sample_size = (
            None
            if sample_size is None
            else base.validate_positive_int(sample_size, "sample_size")
        )
        self.include = None if include is None else _selectors(include)
        self.exclude = _selectors(exclude)
        self.include_linear = bool(include_linear)
        self.stop_gradient_derivative = bool(stop_gradient_derivative)
        self.unit_slope = bool(unit_slope)
        self.layer_weights = _validate_layer_weights(layer_weights)

    def bind(self, model: keras.Model) -> "DREGState":
        """Finds the model's sites; warns once about the nonlinear
        activations left out (see `capture.survey`)."""
        survey = capture.survey(
            model,
            include=self.include,
            exclude=self.exclude,
            include_linear=self.include_linear,
        )
        self._check_sites(model, survey)
        message = survey.warning()
        if message is not None:
            warnings.warn(message, capture.UnregularizedWarning, stacklevel=2)
        sites = survey.sites
        if self.unit_slope:
            sites = [capture.with_unit_slope(site) for site in sites]
        # A step that skips the penalty would evaluate phi' and phi''
        # for nothing.
        recorder = capture.ActivationCapture(
            sites,
            evaluate_derivatives=self.every_n_steps == 1,
            sample_size=self.sample_size,
        )
        return DREGState(survey, recorder)

    def recording(self, state: "DREGState"):
        return state.capture.recording()

    def __call__(self, model, batch):
        state = model.penalty_state(self)
        terms = self.layer_terms(state, state.capture.take_records())
        return ops.sum(ops.stack(list(terms.values())))

    def layer_terms(self, state: "DREGState", records) -> dict:
        """`lam * w_l * DREG_l` for each layer, float32, from `records`."""
        terms = {}
        keys = site_keys(state.capture.sites)
        for key, site, site_records in zip(keys, state.capture.sites, records):
            values = [
                self._record_penalty(site, record)
                for record in site_records
                if record.pre_activation is not None
            ]
            weight = self.lam * self.layer_weights.get(site.name, 1.0)
            terms[key] = weight * _mean_or_zero(values)
        return terms

    def mean_squared_derivatives(self, state: "DREGState", records) -> dict:
        """`mean(phi'(z)^2)` of each layer, from `records`."""
        means = {}
        keys = site_keys(state.capture.sites)
        for key, site, site_records in zip(keys, state.capture.sites, records):
            values = [
                ops.mean(ops.square(_slope(site, r)))
                for r in site_records
                if r.pre_activation is not None
            ]
            means[key] = _mean_or_zero(values)
        return means

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
            second_derivative=site.activation.second_derivative,
            evaluated=record.derivatives,
            input_shape=record.input_shape,
            mask=record.mask,
            sample_size=self.sample_size,
        )

    def _check_sites(self, model, survey):
        sites = survey.sites
        if not sites:
            left_out = "".join(
                f"\n  - {u.layer.name} ({u.activation}): {u.reason}"
                for u in survey.unregularized
            )
            raise ValueError(
                f"Model '{model.name}' has no layer DREG can regularize: "
                "DREG needs a kernel layer (Dense, EinsumDense, Conv*, "
                "DepthwiseConv*, SeparableConv*) followed by a nonlinear "
                "elementwise activation (its own `activation=`, or an "
                "activation layer fed by it alone). What it found:"
                + (left_out or " no kernel layer at all.")
            )
        names = {site.name for site in sites}
        unknown = sorted(set(self.layer_weights) - names)
        if unknown:
            raise ValueError(
                "`layer_weights` names layers DREG does not regularize: "
                f"{unknown}. Regularized layers: {sorted(names)}."
            )

    def get_config(self) -> dict:
        return {
            **super().get_config(),
            "include": None
            if self.include is None
            else _serialized_selectors(self.include),
            "exclude": _serialized_selectors(self.exclude),
            "include_linear": self.include_linear,
            "stop_gradient_derivative": self.stop_gradient_derivative,
            "unit_slope": self.unit_slope,
            "layer_weights": dict(self.layer_weights),
            "sample_size": self.sample_size,
        }


@dataclasses.dataclass
class DREGState:
    """What DREG keeps per model: the survey of its layers and the
    capture that records the sites' `z` in a training forward pass."""

    survey: capture.Survey
    capture: capture.ActivationCapture


def site_keys(sites) -> list[str]:
    """Each site's layer name, or its path (`"encoder_1/dense"`) where
    names repeat (KerasHub names every block's feed-forward layer alike),
    so per-layer results have one entry per layer."""
    names = [site.name for site in sites]
    return [
        site.layer.path if names.count(site.name) > 1 else site.name
        for site in sites
    ]


def _slope(site, record):
    """`phi'(z)` of one recorded call, float32, on every example (the
    recorded `phi'` may be of the first `sample_size` only)."""
    return site.activation.derivative(
        ops.cast(record.pre_activation, "float32")
    )


def _mean_or_zero(values):
    if not values:
        return ops.zeros((), "float32")
    return ops.mean(ops.stack(values))


def _selectors(selectors):
    """Layer instances, names and classes, as a list (see
    `capture.survey`); anything else raises."""
    if isinstance(selectors, (str, type, keras.layers.Layer)):
        selectors = [selectors]
    selectors = list(selectors)
    for selector in selectors:
        if not isinstance(selector, (str, type, keras.layers.Layer)):
            raise TypeError(
                "`include`/`exclude` take layer instances, layer names or "
                f"layer classes; received {selector!r}."
            )
    return selectors


def _serialized_selectors(selectors):
    """Names in place of instances and classes, for `get_config`."""
    return [
        s.name
        if isinstance(s, keras.layers.Layer)
        else s.__name__
        if isinstance(s, type)
        else s
        for s in selectors
    ]


def _validate_layer_weights(layer_weights):
    return {
        name: base.validate_non_negative(weight, f"layer_weights['{name}']")
        for name, weight in dict(layer_weights or {}).items()
    }
