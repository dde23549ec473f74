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

`survey()` also lists what it leaves out, and why (a normalization that
mixes units or a `Dropout` between kernel layer and activation, an
activation after `Add`, a recurrent layer, a softmax, an exclusion...):
`model.dreg_summary()` prints it, and `UnregularizedWarning` names the
gaps once.

During a training forward pass `ActivationCapture.recording()` hooks
exactly those layers through `keras_dreg.interception` (the activation
function of shape 1 and of `Activation` layers, the `call` of the other
activation layers and of the normalization layers of shape 2, and the
kernel layer's `call` where its input shape or mask is needed), records
what flows through them into per-thread lists and removes the hooks when
the pass has been traced or run. Hooks are installed once, whatever the
number of threads tracing at the same time (TF `MirroredStrategy`
replicas), and never outside a training pass, so saving, `evaluate` and
`predict` see the layers as they were built.

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
from collections.abc import Callable
from collections.abc import Sequence

import keras
from keras import layers

from keras_dreg import derivatives
from keras_dreg import interception
from keras_dreg import internals
from keras_dreg import penalty
from keras_dreg.backend import custom_gradient
from keras_dreg.backend import fast_path

ACTIVATION_LAYERS = (
    layers.Activation,
    layers.ReLU,
    layers.LeakyReLU,
    layers.ELU,
    layers.PReLU,
    layers.Softmax,
)
"""Layers whose only job is an activation, paired with the kernel layer
that feeds them."""

RECURRENT_LAYERS = (layers.RNN,)
"""Layers whose activations run inside their own `call` (reported)."""

NORMALIZATIONS_BETWEEN = (
    layers.LayerNormalization,
    layers.GroupNormalization,
    layers.UnitNormalization,
)
"""Normalizations that mix units: a site cannot pass through them."""


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


LayerSelector = str | type | keras.layers.Layer


@dataclasses.dataclass(frozen=True)
class Unregularized:
    """A kernel layer or nonlinear activation DREG does not regularize.

    Attributes:
        layer: The layer.
        activation: The activation's name.
        reason: Why, and what to do about it.
        expected: Whether this is the normal case (a linear layer, a
            softmax layer, a layer the user excluded) rather than
            something the user should hear about once.
    """

    layer: keras.layers.Layer
    activation: str
    reason: str
    expected: bool = False


@dataclasses.dataclass
class Survey:
    """What DREG found in a model: the sites and what it leaves out."""

    sites: list[RegularizedLayer]
    unregularized: list[Unregularized]

    def warning(self) -> str | None:
        """One message naming the unexpected gaps, or `None`."""
        gaps = [u for u in self.unregularized if not u.expected]
        if not gaps:
            return None
        lines = [
            f"  - {u.layer.name} ({u.activation}): {u.reason}" for u in gaps
        ]
        return (
            "DREG does not regularize these nonlinear activations:\n"
            + "\n".join(lines)
            + "\n`model.dreg_summary()` lists every layer. Silence this "
            "with `warnings.simplefilter('ignore', "
            "keras_dreg.UnregularizedWarning)`."
        )


class UnregularizedWarning(UserWarning):
    """A nonlinear activation of the model is not regularized by DREG.

    Issued once, when DREG surveys a model, naming each such layer and
    why; `model.dreg_summary()` lists every layer.

    Example:

    ```python
    import warnings

    warnings.simplefilter("ignore", keras_dreg.UnregularizedWarning)
    ```
    """


def find_regularized_layers(
    model: keras.Model,
    include: Sequence[LayerSelector] | None = None,
    exclude: Sequence[LayerSelector] = (),
    include_linear: bool = False,
) -> list[RegularizedLayer]:
    """Lists the layers of `model` (recursively) that DREG regularizes.

    See `survey`, which also says what is left out and why.

    Example:

    >>> inputs = keras.Input((4,))
    >>> x = keras.layers.Dense(8, activation="gelu", name="hidden")(inputs)
    >>> model = keras.Model(inputs, keras.layers.Dense(2)(x))
    >>> find_regularized_layers(model)
    [RegularizedLayer(hidden, activation=gelu)]
    """
    return survey(model, include, exclude, include_linear).sites


def survey(
    model: keras.Model,
    include: Sequence[LayerSelector] | None = None,
    exclude: Sequence[LayerSelector] = (),
    include_linear: bool = False,
) -> Survey:
    """The sites of `model` and every layer DREG leaves out, with why.

    Args:
        model: A built Keras model (Sequential models without
            `keras.Input` are built by their first call).
        include: Layers to keep: layer instances, layer names, or layer
            classes (a class, or a class name, matches instances of that
            class and its subclasses); `None` keeps all.
        exclude: Layers to drop, in the same forms.
        include_linear: Also regularize kernel layers whose activation is
            the identity (`phi' = 1`: the penalty is then `||W||_F^2`
            per position).

    Returns:
        A `Survey`: the sites in layer order, and each kernel layer,
        recurrent layer and nonlinear activation layer left out.
    """
    all_layers = _layers_in_order(model)
    sites, unregularized, paired = [], [], set()
    for layer in all_layers:
        if isinstance(layer, ACTIVATION_LAYERS):
            site, gap = _activation_layer_site(layer)
            if site is not None:
                paired.add(id(site.layer))
                sites.append(site)
            elif gap is not None:
                unregularized.append(gap)
        elif isinstance(layer, RECURRENT_LAYERS):
            unregularized.append(
                Unregularized(
                    layer,
                    "recurrent",
                    "a recurrent layer: its gate activations run inside "
                    "its own call, on the state as well as the input; "
                    "DREG's closed form does not cover them",
                )
            )
    for layer in all_layers:
        if penalty.is_kernel_layer(layer) and id(layer) not in paired:
            site, gap = _own_activation_site(layer, include_linear)
            if site is not None:
                sites.append(site)
            elif gap is not None:
                unregularized.append(gap)
    order = {id(layer): i for i, layer in enumerate(all_layers)}
    sites.sort(key=lambda site: order[id(site.layer)])
    kept = []
    for site in sites:
        if _matches(site.layer, include, default=True) and not _matches(
            site.layer, exclude, default=False
        ):
            kept.append(site)
        else:
            unregularized.append(
                Unregularized(
                    site.layer,
                    site.activation.name,
                    "excluded by `include`/`exclude`",
                    expected=True,
                )
            )
    return Survey(kept, unregularized)


def with_unit_slope(site: RegularizedLayer) -> RegularizedLayer:
    """`site` with `phi' = 1` (its penalty is `||W||_F^2` per position)."""
    unit = site.activation._replace(
        derivative=keras.ops.ones_like,
        second_derivative=None,
        value_and_derivatives=None,
    )
    return dataclasses.replace(site, activation=unit)


def _own_activation_site(layer, include_linear):
    """The site of a kernel layer's own activation, or why there is none."""
    info = derivatives.describe_activation(layer.activation)
    site = RegularizedLayer(layer, info)
    if info.kind == "elementwise":
        return site, None
    if info.kind == "non_elementwise":
        reason = (
            f"its activation {info.name} is not elementwise (its Jacobian "
            "is not diagonal), so the closed form does not apply; "
            "expected for an output softmax"
        )
        return None, Unregularized(layer, info.name, reason)
    if include_linear:
        return with_unit_slope(site), None
    reason = "linear (include_linear=True adds ||W||^2 per position)"
    return None, Unregularized(layer, "linear", reason, expected=True)


def _activation_layer_site(layer):
    """The site an activation layer closes, or why it closes none."""
    info = derivatives.describe_activation(layer)
    if info.kind == "linear":
        return None, None
    if info.kind == "non_elementwise":
        reason = (
            "not elementwise (its Jacobian is not diagonal); expected for "
            "an output or attention softmax"
        )
        return None, Unregularized(layer, info.name, reason, expected=True)
    if not internals.is_in_graph(layer):
        reason = (
            "used outside a layer graph (in a subclassed model's or a "
            "layer's own `call`), so the kernel layer feeding it cannot "
            "be known; give that kernel layer `activation=` instead"
        )
        return None, Unregularized(layer, info.name, reason)
    producer, batch_norm, reason = _kernel_producer(layer)
    if reason is not None:
        return None, Unregularized(layer, info.name, reason)
    return RegularizedLayer(producer, info, layer, batch_norm), None


def _kernel_producer(activation_layer):
    """`(kernel_layer, batch_norm, None)` if one kernel layer (optionally
    through a `BatchNormalization`) feeds `activation_layer` alone, else
    `(None, None, reason)`."""
    producer = _single_producer(activation_layer)
    if producer is None:
        return (
            None,
            None,
            (
                "its input is not one layer's output (several inputs, or a "
                "layer called more than once)"
            ),
        )
    if not _feeds_only(producer, activation_layer):
        return (
            None,
            None,
            (
                f"the output of {producer.name} also feeds other layers, so "
                "the activation's input is not that layer's alone"
            ),
        )
    batch_norm = None
    if isinstance(producer, layers.BatchNormalization):
        batch_norm, producer = producer, _single_producer(producer)
        if producer is None or not _feeds_only(producer, batch_norm):
            return (
                None,
                None,
                (
                    f"{batch_norm.name} (BatchNormalization) is not fed by one "
                    "kernel layer alone"
                ),
            )
    if isinstance(producer, NORMALIZATIONS_BETWEEN):
        return (
            None,
            None,
            (
                f"{producer.name} ({type(producer).__name__}) stands between "
                "the kernel layer and the activation; it mixes units (its "
                "Jacobian is not diagonal per unit). Put the normalization "
                "after the activation, or give the kernel layer "
                "`activation=` and normalize after it"
            ),
        )
    if isinstance(producer, layers.Dropout):
        return (
            None,
            None,
            (
                f"{producer.name} (Dropout) stands between the kernel layer "
                "and the activation; move the Dropout after the activation"
            ),
        )
    if not penalty.is_kernel_layer(producer):
        return (
            None,
            None,
            (
                f"its input comes from {producer.name} "
                f"({type(producer).__name__}), not from a kernel layer "
                "(Dense, Conv*, ...); e.g. an activation after Add or "
                "Multiply, or the output of a nested model"
            ),
        )
    if derivatives.describe_activation(producer.activation).kind != "linear":
        return (
            None,
            None,
            (
                f"{producer.name} has its own activation already (that one is "
                "regularized); a second activation is not"
            ),
        )
    if batch_norm is not None and not _same_axis(producer, batch_norm):
        return (
            None,
            None,
            (
                f"{batch_norm.name} normalizes another axis than "
                f"{producer.name}'s units"
            ),
        )
    return producer, batch_norm, None


def _layers_in_order(model):
    """All nested layers of `model`, depth first, in the order built."""
    seen, ordered = set(), []

    def visit(layer):
        for sublayer in internals.direct_sublayers(layer):
            if id(sublayer) not in seen:
                seen.add(id(sublayer))
                ordered.append(sublayer)
                visit(sublayer)

    visit(model)
    return ordered


def _matches(layer, selectors, default):
    if selectors is None:
        return default
    return any(_selects(s, layer) for s in selectors)


def _selects(selector, layer) -> bool:
    """A layer instance selects itself; a class, or a class name, its
    instances (subclasses included); a string also the layer's name."""
    if isinstance(selector, keras.layers.Layer):
        return selector is layer
    if isinstance(selector, type):
        return isinstance(layer, selector)
    return selector == layer.name or any(
        cls.__name__ == selector for cls in type(layer).__mro__
    )


def _single_producer(layer):
    """The one layer whose output is `layer`'s only input, or `None`."""
    producers = set()
    for parents in internals.inbound_producers(layer):
        if len(parents) != 1:
            return None
        producers.add(parents[0])
    if len(producers) != 1:
        return None
    return producers.pop()


def _feeds_only(layer, consumer):
    consumers = internals.outbound_consumers(layer)
    return bool(consumers) and all(c is consumer for c in consumers)


def _same_axis(layer, batch_norm):
    axis = batch_norm.axis
    if isinstance(axis, (list, tuple)):
        if len(axis) != 1:
            return False
        axis = axis[0]
    rank = len(layer.output.shape)
    return axis % rank == penalty.unit_axis(layer) % rank


@dataclasses.dataclass
class Record:
    """What one call of a site recorded: `z`; `(phi'(z), phi''(z))` when
    the activation was evaluated with them (float32, no gradient
    history, of the first `sample_size` examples where the capture has
    one; `phi''(z)` may be the function `phi''`, deferred by a backend's
    fast path, see `keras_dreg.penalty.mean_squared_slope`);
    the kernel layer's input shape and mask where needed; the
    normalization's input and training flag when a `BatchNormalization`
    is involved."""

    pre_activation: object = None
    derivatives: tuple | None = None
    input_shape: tuple | None = None
    mask: object = None
    batch_norm_inputs: object = None
    batch_norm_training: bool = False


class ActivationCapture:
    """Records each site's `z` while a `recording()` block runs.

    The hooks go through `keras_dreg.interception`: installed when the
    first thread enters `recording()`, removed when the last one leaves;
    each thread records into its own lists.

    Args:
        sites: The sites to hook.
        evaluate_derivatives: Evaluate the activations that have
            `value_and_derivatives` with it and record `phi'` and `phi''`
            too (see the module docstring). Worth it only if every
            recorded step uses them.
        sample_size: Record `phi'` and `phi''` of the first
            `sample_size` examples of the batch only (DREG's
            `sample_size`: the penalty needs no more; a backend's fast
            path evaluates them there only); `None`, every example.

    Example:

    >>> inputs = keras.Input((4,))
    >>> x = keras.layers.Dense(8, activation="gelu")(inputs)
    >>> model = keras.Model(inputs, keras.layers.Dense(2)(x))
    >>> recorder = ActivationCapture(find_regularized_layers(model))
    >>> with recorder.recording() as records:
    ...     _ = model(np.ones((2, 4)), training=True)
    >>> tuple(records[0][0].pre_activation.shape)
    (2, 8)
    """

    def __init__(
        self,
        sites: Sequence[RegularizedLayer],
        evaluate_derivatives: bool = True,
        sample_size: int | None = None,
    ):
        self.sites = list(sites)
        self.evaluate_derivatives = evaluate_derivatives
        self.sample_size = sample_size
        self._local = threading.local()
        self._hooks = [
            h for i, s in enumerate(self.sites) for h in self._site_hooks(i, s)
        ]

    @property
    def records(self) -> list[list[Record]] | None:
        """This thread's records, one list per site, while recording."""
        return getattr(self._local, "records", None)

    def take_records(self) -> list[list[Record]]:
        """This thread's records, one list per site, handed over: the
        capture's own lists are emptied, so the next forward pass of the
        step records afresh and no tensor of this one stays reachable
        from the capture.

        Under `torch.compile` a tensor still reachable when the graph
        breaks at `loss.backward()` becomes an output of the compiled
        forward graph; AOTAutograd then keeps it until the backward pass
        and feeds that pass a zero gradient of its size (one `z`-sized
        `zeros` per layer and step).
        """
        records = self.records
        taken = [list(site_records) for site_records in records]
        for site_records in records:
            site_records.clear()
        return taken

    @contextlib.contextmanager
    def recording(self):
        """Hooks the sites for the duration of the block.

        Yields the records, one list of `Record`s per site (one per call of
        the layer). They are cleared when the block exits: tensors traced
        in a step must not outlive it.
        """
        self._local.records = [[] for _ in self.sites]
        try:
            with contextlib.ExitStack() as stack:
                for layer, attribute, hook in self._hooks:
                    stack.enter_context(
                        interception.hooked(layer, attribute, hook)
                    )
                yield self._local.records
        finally:
            self._local.records = None

    def _site_hooks(self, index, site):
        """`(layer, attribute, hook)` for everything `site` records."""
        hooks = []
        if site.activation_layer is None:
            hooks.append(
                (site.layer, "activation", self._activation_hook(index, site))
            )
        elif type(site.activation_layer) is layers.Activation:
            hooks.append(
                (
                    site.activation_layer,
                    "activation",
                    self._activation_hook(index, site),
                )
            )
        else:
            hooks.append(
                (
                    site.activation_layer,
                    "call",
                    self._call_hook(index, _record_input),
                )
            )
        if _needs_layer_input(site.layer):
            hooks.append(
                (
                    site.layer,
                    "call",
                    self._call_hook(index, _record_layer_input),
                )
            )
        if site.batch_norm is not None:
            hooks.append(
                (
                    site.batch_norm,
                    "call",
                    self._call_hook(index, _record_bn_input),
                )
            )
        return hooks

    def _current(self, index, new_call=False):
        """This call's record of site `index`, or `None` when not
        recording (another thread, a paused or symbolic run)."""
        records = self.records
        if records is None or internals.in_symbolic_scope():
            # Shape inference (a first call building the layers) runs the
            # layer in a scratch graph; those tensors are not the step's.
            return None
        site_records = records[index]
        if (
            new_call
            or not site_records
            or site_records[-1].pre_activation is not None
        ):
            site_records.append(Record())
        return site_records[-1]

    def _activation_hook(self, index, site):
        """Records `z` at the activation function; evaluates it with its
        derivatives where it can."""
        joint = (
            site.activation.value_and_derivatives
            if self.evaluate_derivatives
            else None
        )

        def recording_activation(original, z, *args, **kwargs):
            record = self._current(index)
            if record is None:
                return original(z, *args, **kwargs)
            record.pre_activation = z
            if joint is None or args or kwargs:
                return original(z, *args, **kwargs)
            outputs = _evaluate_with_derivatives(
                record, z, joint, self.sample_size
            )
            if original is keras.activations.sigmoid:
                internals.keep_logits(outputs, z)
            return outputs

        return recording_activation

    def _call_hook(self, index, record_fn: Callable):
        def recording_call(original, inputs, *args, **kwargs):
            record = self._current(
                index, new_call=record_fn is _record_layer_input
            )
            if record is not None:
                record_fn(record, inputs, kwargs)
            return original(inputs, *args, **kwargs)

        return recording_call


def _evaluate_with_derivatives(record, z, value_and_derivatives, rows):
    """`phi(z)`, recording `(phi'(z), phi''(z))` of the first `rows`
    examples in `record` (see `activation_with_derivatives`, or the
    backend's fused equivalent, `keras_dreg.backend.fast_path`, where it
    has one)."""
    evaluate = (
        fast_path(activation_with_derivatives) or activation_with_derivatives
    )
    outputs, slope, curvature = evaluate(z, value_and_derivatives, rows)
    record.derivatives = (slope, curvature)
    return outputs


def activation_with_derivatives(z, value_and_derivatives, rows=None):
    """`(phi(z), phi'(z), phi''(z))` from one joint evaluation.

    `phi(z)` is in `z`'s dtype, with the gradient `upstream * phi'(z)`
    (from the `phi'(z)` computed here: `phi` is not differentiated
    again); `phi'(z)` and `phi''(z)` are float32, without gradient
    history, and of the first `rows` examples (axis 0) only, where
    `rows` is given (`phi''` may be deferred: the function, see
    `keras_dreg.backend.fast_path`). A backend's fused equivalent of
    `value_and_derivatives` is used where it has one.

    Example:

    >>> joint = derivatives.describe_activation("tanh").value_and_derivatives
    >>> value, slope, curvature = activation_with_derivatives(
    ...     keras.ops.zeros((2,)), joint
    ... )
    >>> keras.ops.convert_to_numpy(slope).tolist()
    [1.0, 1.0]
    """
    joint = fast_path(value_and_derivatives) or value_and_derivatives
    value, slope, curvature = joint(
        keras.ops.stop_gradient(keras.ops.cast(z, "float32"))
    )

    def activation(z, value, slope):
        def grad(upstream):
            upstream = keras.ops.cast(upstream, "float32")
            return keras.ops.cast(upstream * slope, z.dtype), None, None

        return keras.ops.cast(value, z.dtype), grad

    value = custom_gradient(activation)(z, value, slope)
    if not penalty.takes_every_example(rows, z):
        slope = slope[:rows]
        curvature = curvature if callable(curvature) else curvature[:rows]
    return value, slope, curvature


def _needs_layer_input(layer) -> bool:
    """Whether a site must record its kernel layer's input: its shape
    (convolutions whose norms vary by position) or its mask (a layer
    that may be fed a masked sequence; in a layer graph, known from the
    graph, else assumed where the layer supports masking)."""
    if penalty.needs_input_shape(layer):
        return True
    if internals.is_in_graph(layer):
        return any(
            internals.get_keras_mask(tensor) is not None
            for tensor in internals.inbound_tensors(layer)
        )
    return bool(getattr(layer, "supports_masking", False))


def _record_layer_input(record, inputs, kwargs):
    record.input_shape = tuple(inputs.shape)
    record.mask = internals.get_keras_mask(inputs)


def _record_input(record, inputs, kwargs):
    record.pre_activation = inputs


def _record_bn_input(record, inputs, kwargs):
    record.batch_norm_inputs = inputs
    record.batch_norm_training = bool(kwargs.get("training"))
