"""Finding the layers DREG regularizes and capturing their `z`.

A *site* is one kernel layer and the elementwise activation that follows
it. Two shapes are recognized:

1. A kernel layer with its own nonlinear activation,
   `Dense(64, activation="gelu")`: `z` is the input of `layer.activation`.
2. A kernel layer without activation whose output feeds only an
   activation layer (`Activation`, `ReLU`, `LeakyReLU`, `ELU`, `PReLU`),
   optionally through a `BatchNormalization` (`Conv -> BN -> ReLU`): `z`
   is the input of the activation layer. This needs the layer graph, so it
   is found in Functional and Sequential models (also nested ones).

During a training step `ActivationCapture.recording()` installs light
hooks on exactly those layers (the activation function of shape 1 and of
`Activation` layers, the `call` of the other activation layers and of
the normalization layers of shape 2), records what flows through them
into a thread-local list and removes the hooks when the step has been
traced or run. Hooks are installed once, whatever the number of threads
tracing at the same time (TF `MirroredStrategy` replicas), and never
outside a step, so saving, `evaluate` and `predict` see the layers as
they were built.

Where the activation has `value_and_derivatives` (the smooth built-in
ones, and custom ones registered with `phi''`), the hooked activation
returns `phi(z)` evaluated together with `phi'(z)` and `phi''(z)` and
records the two: DREG needs them, and the activation's own backward pass
becomes `upstream * phi'(z)`, reusing them instead of differentiating
`phi` again. Without a fusing compiler this saves most of the passes
over `z` that DREG adds (the GELU's `erf` and `exp` are evaluated once
per step, instead of two or three times each). The forward values are
those of the closed form, computed in float32 and cast to `z`'s dtype:
equal to the backend's own up to rounding.
"""

import contextlib
import dataclasses
import threading
import warnings
from collections.abc import Callable
from collections.abc import Sequence

import keras
from keras import layers
from keras.src.backend.common.symbolic_scope import in_symbolic_scope

from keras_dreg import derivatives
from keras_dreg import penalty

ACTIVATION_LAYERS = (
    layers.Activation,
    layers.ReLU,
    layers.LeakyReLU,
    layers.ELU,
    layers.PReLU,
    layers.Softmax,
)


@dataclasses.dataclass(frozen=True, eq=False)
class RegularizedLayer:
    """One layer DREG regularizes, with the activation found for it.

    Attributes:
        layer: The kernel layer (`Dense`, `Conv2D`, ...).
        activation: What `keras_dreg.derivatives.describe_activation`
            found: its name and derivative.
        activation_layer: The separate activation layer, or `None` when
            the activation is the kernel layer's own.
        batch_norm: The `BatchNormalization` between the two, if any.

    Example:

    >>> inputs = keras.Input((4,))
    >>> x = keras.layers.Dense(8, activation="gelu", name="hidden")(inputs)
    >>> model = keras_dreg.wrap(keras.Model(inputs, keras.layers.Dense(2)(x)))
    >>> model.dreg_layers
    [RegularizedLayer(hidden, activation=gelu)]
    >>> model.dreg_layers[0].layer.units
    8
    """

    layer: keras.layers.Layer
    activation: derivatives.ActivationInfo
    activation_layer: keras.layers.Layer | None = None
    batch_norm: keras.layers.BatchNormalization | None = None

    @property
    def name(self) -> str:
        return self.layer.name

    def __repr__(self) -> str:
        path = [self.layer.name]
        if self.batch_norm is not None:
            path.append(self.batch_norm.name)
        if self.activation_layer is not None:
            path.append(self.activation_layer.name)
        return (
            f"RegularizedLayer({' -> '.join(path)}, "
            f"activation={self.activation.name})"
        )


LayerSelector = str | type


def find_regularized_layers(
    model: keras.Model,
    include: Sequence[LayerSelector] | None = None,
    exclude: Sequence[LayerSelector] = (),
    include_linear: bool = False,
) -> list[RegularizedLayer]:
    """Lists the layers of `model` (recursively) that DREG regularizes.

    Args:
        model: Any Keras model.
        include: Layer names, class names or classes to keep; `None`
            keeps all. A class name matches that exact class only.
        exclude: Layer names, class names or classes to drop.
        include_linear: Also regularize kernel layers whose activation is
            the identity (`phi' = 1`: the penalty is then `||W||_F^2`
            per position).

    Returns:
        The sites, in layer order. Warns once for layers skipped because
        their activation is not elementwise (softmax) and once for
        activation layers outside any layer graph (in subclassed models),
        whose input layer cannot be known. Activation layers fed by
        something other than a kernel layer (`Add -> ReLU`) are not
        sites and need no warning.
    """
    all_layers = list(_layers_in_order(model, set()))
    sites, non_elementwise, unpaired = [], [], []
    paired = {}
    for layer in all_layers:
        if not isinstance(layer, ACTIVATION_LAYERS):
            continue
        kind = derivatives.describe_activation(layer).kind
        if kind == "linear":
            continue
        if not layer._inbound_nodes:
            # Outside any graph: a subclassed model's layer, or one used
            # inside another layer (the softmax of MultiHeadAttention).
            if kind == "elementwise":
                unpaired.append(layer.name)
            continue
        site = _pair_with_producer(layer)
        if site is not None:
            paired[id(site.layer)] = site
    for layer in all_layers:
        if not penalty.is_kernel_layer(layer):
            continue
        site = paired.get(id(layer)) or RegularizedLayer(
            layer, derivatives.describe_activation(layer.activation)
        )
        if site.activation.kind == "non_elementwise":
            non_elementwise.append(layer.name)
        elif site.activation.kind == "elementwise":
            sites.append(site)
        elif include_linear:
            sites.append(with_unit_slope(site))
    _warn_skipped(non_elementwise, unpaired)
    return [
        site
        for site in sites
        if _matches(site.layer, include, default=True)
        and not _matches(site.layer, exclude, default=False)
    ]


def with_unit_slope(site: RegularizedLayer) -> RegularizedLayer:
    """`site` with `phi' = 1` (its penalty is `||W||_F^2` per position)."""
    unit = site.activation._replace(
        derivative=keras.ops.ones_like,
        second_derivative=None,
        value_and_derivatives=None,
    )
    return dataclasses.replace(site, activation=unit)


def _layers_in_order(layer, seen):
    """All nested layers of `layer`, depth first, in the order built."""
    for sublayer in layer._layers:
        if id(sublayer) not in seen:
            seen.add(id(sublayer))
            yield sublayer
            yield from _layers_in_order(sublayer, seen)


def _matches(layer, selectors, default):
    if selectors is None:
        return default
    return any(
        s in (layer.name, type(layer).__name__)
        if isinstance(s, str)
        else isinstance(layer, s)
        for s in selectors
    )


def _single_producer(layer):
    """The one layer whose output is `layer`'s only input, or `None`."""
    producers = set()
    for node in layer._inbound_nodes:
        if len(node.parent_nodes) != 1:
            return None
        producers.add(node.parent_nodes[0].operation)
    if len(producers) != 1:
        return None
    return producers.pop()


def _feeds_only(layer, consumer):
    return bool(layer._outbound_nodes) and all(
        node.operation is consumer for node in layer._outbound_nodes
    )


def _pair_with_producer(activation_layer):
    producer = _single_producer(activation_layer)
    if producer is None or not _feeds_only(producer, activation_layer):
        return None
    batch_norm = None
    if isinstance(producer, layers.BatchNormalization):
        batch_norm, producer = producer, _single_producer(producer)
        if producer is None or not _feeds_only(producer, batch_norm):
            return None
    if not penalty.is_kernel_layer(producer):
        return None
    if derivatives.describe_activation(producer.activation).kind != "linear":
        return None
    if batch_norm is not None and not _same_axis(producer, batch_norm):
        return None
    info = derivatives.describe_activation(activation_layer)
    return RegularizedLayer(producer, info, activation_layer, batch_norm)


def _same_axis(layer, batch_norm):
    axis = batch_norm.axis
    if isinstance(axis, (list, tuple)):
        if len(axis) != 1:
            return False
        axis = axis[0]
    rank = len(layer.output.shape)
    return axis % rank == penalty.unit_axis(layer) % rank


def _warn_skipped(non_elementwise, unpaired):
    if non_elementwise:
        warnings.warn(
            "DREG skips layers whose activation is not elementwise "
            f"(softmax-like): {', '.join(non_elementwise)}. Their Jacobian "
            "is not diagonal, so the closed form does not apply. This is "
            "expected for an output softmax.",
            stacklevel=3,
        )
    if unpaired:
        warnings.warn(
            "DREG cannot tell which kernel layer feeds these activation "
            f"layers: {', '.join(unpaired)}, so they are not regularized. "
            "Use the kernel layer's own `activation=` argument, or build "
            "the model with the Functional or Sequential API.",
            stacklevel=3,
        )


@dataclasses.dataclass
class Record:
    """What one call of a site recorded: `z`; `(phi'(z), phi''(z))` when
    the activation was evaluated with them (float32, no gradient
    history); the normalization's input and training flag when a
    `BatchNormalization` is involved."""

    pre_activation: object = None
    derivatives: tuple | None = None
    batch_norm_inputs: object = None
    batch_norm_training: bool = False


class ActivationCapture:
    """Records each site's `z` while a `recording()` block runs.

    Args:
        sites: The sites to hook.
        evaluate_derivatives: Evaluate the activations that have
            `value_and_derivatives` with it and record `phi'` and `phi''`
            too (see the module docstring). Worth it only if every
            recorded step uses them.

    Example:

    >>> capture = ActivationCapture(model.dreg_layers)
    >>> with capture.recording() as records:
    ...     model(x, training=True)
    >>> records[0][0].pre_activation.shape
    """

    def __init__(
        self,
        sites: Sequence[RegularizedLayer],
        evaluate_derivatives: bool = True,
    ):
        self.sites = list(sites)
        self.evaluate_derivatives = evaluate_derivatives
        self._lock = threading.Lock()
        self._active_threads = 0
        self._local = threading.local()

    @property
    def records(self) -> list[list[Record]] | None:
        """This thread's records, one list per site, while recording."""
        return getattr(self._local, "records", None)

    @contextlib.contextmanager
    def recording(self):
        """Hooks the sites for the duration of the block.

        Yields the records, one list of `Record`s per site (one per call of
        the layer). They are cleared when the block exits: tensors traced
        in a step must not outlive it.
        """
        self._local.records = [[] for _ in self.sites]
        with self._lock:
            if self._active_threads == 0:
                self._install_hooks()
            self._active_threads += 1
        try:
            yield self._local.records
        finally:
            self._local.records = None
            with self._lock:
                self._active_threads -= 1
                if self._active_threads == 0:
                    self._remove_hooks()

    @contextlib.contextmanager
    def paused(self):
        """Records nothing in this thread for the duration of the block.

        For forward passes inside a recorded step that are not the step's
        own, such as the second run of the input-gradient penalty. The
        records made before the block are kept; other threads record on.

        Example:

        >>> with capture.recording() as records:
        ...     model(x, training=True)
        ...     with capture.paused():
        ...         model(x, training=True)  # not recorded
        >>> len(records[0])
        1
        """
        records = self.records
        self._local.records = None
        try:
            yield
        finally:
            self._local.records = records

    def _install_hooks(self):
        self._removers = []
        for index, site in enumerate(self.sites):
            if site.activation_layer is None:
                self._hook_activation(index, site.layer, site.activation)
            elif type(site.activation_layer) is layers.Activation:
                self._hook_activation(
                    index, site.activation_layer, site.activation
                )
            else:
                self._hook_call(index, site.activation_layer, _record_input)
            if site.batch_norm is not None:
                self._hook_call(index, site.batch_norm, _record_bn_input)

    def _remove_hooks(self):
        for remove in reversed(self._removers):
            remove()
        self._removers = []

    def _current(self, index):
        records = self.records
        if records is None or in_symbolic_scope():
            # Shape inference (a first call building the layers) runs the
            # layer in a scratch graph; those tensors are not the step's.
            return None
        site_records = records[index]
        if not site_records or site_records[-1].pre_activation is not None:
            site_records.append(Record())
        return site_records[-1]

    def _hook_activation(self, index, layer, info):
        """Hooks `layer.activation` (a kernel layer's or an `Activation`
        layer's), which `info` describes."""
        original = layer.activation
        joint = (
            info.value_and_derivatives if self.evaluate_derivatives else None
        )

        def recording_activation(z, *args, **kwargs):
            record = self._current(index)
            if record is None:
                return original(z, *args, **kwargs)
            record.pre_activation = z
            if joint is None or args or kwargs:
                return original(z, *args, **kwargs)
            outputs = _evaluate_with_derivatives(record, z, joint)
            if original is keras.activations.sigmoid:
                _keep_logits(outputs, z)
            return outputs

        object.__setattr__(layer, "activation", recording_activation)
        self._removers.append(
            lambda: object.__setattr__(layer, "activation", original)
        )

    def _hook_call(self, index, layer, record_fn: Callable):
        original = layer.call

        def recording_call(inputs, *args, **kwargs):
            record = self._current(index)
            if record is not None:
                record_fn(record, inputs, kwargs)
            return original(inputs, *args, **kwargs)

        object.__setattr__(layer, "call", recording_call)
        self._removers.append(lambda: layer.__dict__.pop("call", None))


def _evaluate_with_derivatives(record, z, value_and_derivatives):
    """`phi(z)`, recording `(phi'(z), phi''(z))` in `record`; its gradient
    is `upstream * phi'(z)`."""
    value, slope, curvature = value_and_derivatives(
        keras.ops.stop_gradient(keras.ops.cast(z, "float32"))
    )
    record.derivatives = (slope, curvature)

    @keras.ops.custom_gradient
    def activation(z, value, slope):
        def grad(*args, upstream=None):
            if upstream is None:
                (upstream,) = args
            upstream = keras.ops.cast(upstream, "float32")
            return keras.ops.cast(upstream * slope, z.dtype), None, None

        return keras.ops.cast(value, z.dtype), grad

    return activation(z, value, slope)


def _keep_logits(outputs, logits):
    """Like `keras.activations.sigmoid`: its output carries the logits, so
    that binary cross-entropy can use them (a stable loss)."""
    try:
        outputs._keras_logits = logits
    except AttributeError:
        pass


def _record_input(record, inputs, kwargs):
    record.pre_activation = inputs


def _record_bn_input(record, inputs, kwargs):
    record.batch_norm_inputs = inputs
    record.batch_norm_training = bool(kwargs.get("training"))
