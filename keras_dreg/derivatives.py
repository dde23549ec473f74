"""Closed-form derivatives `phi'(z)` of elementwise activations.

DREG weights each unit's incoming weight norm by `phi'(z)^2`, the squared
derivative of the layer's activation at the unit's pre-activation `z`. This
module gives `phi'` in closed form, written with `keras.ops` only, so the
penalty needs no second backward pass and runs unchanged on every backend.
The closed forms are smooth `keras.ops` expressions: gradients flow through
`phi'(z)` into `z` during training. The smooth activations (GELU, tanh,
sigmoid, SiLU, softplus, the ELU family, exponential) also carry `phi''`
in closed form, which the penalty uses as the gradient of `phi'(z)^2`.

`describe_activation` classifies an activation (a function, its name, a
`functools.partial` of a known function, or an activation layer) as
`"elementwise"` (with `phi'`), `"linear"` (the identity) or
`"non_elementwise"` (softmax-like: its Jacobian is not diagonal).

Derivatives of the activations Keras ships (`[c]` is 1 where `c` holds,
else 0; `s(z)` is the sigmoid, `sp(z)` the softplus):

    relu(negative_slope=a, max_value=m, threshold=t)
                          [z > t] [0 < z < m] + a [z < t]
                          (the [0 < z < m] factor only when m is set;
                          with a != 0 and neither m nor t: leaky_relu)
    leaky_relu(negative_slope=a)   1 if z >= 0 else a
    relu6                 [0 < z < 6]
    elu(alpha=a)          1 if z > 0 else a exp(z)
    celu(alpha=a)         1 if z > 0 else exp(z / a)
    selu                  l if z > 0 else l b exp(z)
                          (l = 1.0507..., b = 1.6732...)
    gelu                  Phi(z) + z N(z)
                          (Phi, N: standard normal CDF and density)
    gelu(approximate=True)
                          (1 + u) / 2 + z (1 - u^2) c (1 + 3 k z^2) / 2,
                          u = tanh(c (z + k z^3)), c = sqrt(2 / pi),
                          k = 0.044715
    tanh                  1 - tanh(z)^2
    sigmoid               s(z) (1 - s(z))
    hard_sigmoid          [-3 < z < 3] / 6
    sparse_sigmoid        [-1 < z < 1] / 2
    silu, swish           s(z) (1 + z (1 - s(z)))
    hard_silu, hard_swish 0 if z <= -3, (2 z + 3) / 6 if z < 3, else 1
    softplus              s(z)
    softsign              1 / (1 + |z|)^2
    mish                  tanh(sp(z)) + z s(z) (1 - tanh(sp(z))^2)
    exponential           exp(z)
    log_sigmoid           s(-z)
    tanh_shrink           tanh(z)^2
    hard_tanh             [-1 <= z <= 1]
    soft_shrink(threshold=t), hard_shrink(threshold=t)
                          [|z| > t]
    squareplus(b)         (1 + z / sqrt(z^2 + b)) / 2
    sparse_plus           0 if z <= -1, (z + 1) / 2 if z < 1, else 1
    threshold(threshold=t, default_value=v)
                          [z > t]
    PReLU layer (weight a)
                          1 if z > 0 else a

KerasHub's own activations, recognized by the module and name that define
them, so `keras_hub` is never imported here (`a = 1.702`):

    gelu_approximate      gelu(approximate=True)'s
    quick_gelu (CLIP, MetaCLIP 2), z s(a z)
                          s(a z) (1 + a z (1 - s(a z)))

The same forms serve the `keras.ops` functions (`keras.ops.gelu` defaults
to `approximate=True`) and the `ReLU`, `LeakyReLU`, `ELU` and `PReLU`
layers. `linear` (and `None`) is `"linear"`; `softmax`, `log_softmax`,
`glu` and `sparsemax` (and the `Softmax` layer) are `"non_elementwise"`.

At a kink `phi'` takes one of its one-sided values, as the inequalities
above spell out: the one JAX's autodiff of the Keras implementation gives
(`relu'(0) = 0`, `leaky_relu'(0) = 1`, `elu'(0) = a`, `hard_tanh'(+-1) = 1`,
...). JAX gives neither side in two places: at the ends of a `clip` it
averages them (`relu(max_value=m)` at `m`, `sparse_sigmoid` at `+-1`), where
`phi'` is 0, the flat side; and for `PReLU` at 0 it gives 0, where `phi'`
is `a`, the slope below 0.

Other callables use the derivative registered for them with
`register_derivative`, or else autodiff: `keras.ops.jvp` with a tangent of
ones, which equals `phi'(z)` only for elementwise functions, with a one-time
warning. A probe of the Jacobian on a small input checks that first: a
function that mixes units (`tanh(x - mean(x))`) is `"non_elementwise"`,
so DREG leaves its layer out and says so, instead of a wrong value.
The JVP is itself differentiable on the TensorFlow, JAX and PyTorch
backends, so gradients flow through the fallback too.
"""

import functools
import inspect
import warnings
from collections.abc import Callable
from typing import Any
from typing import NamedTuple

import keras
from keras import layers
from keras import ops

Tensor = Any
Derivative = Callable[[Tensor], Tensor]

_ELEMENTWISE = "elementwise"
_LINEAR = "linear"
_NON_ELEMENTWISE = "non_elementwise"

_SELU_ALPHA = 1.6732632423543772848170429916717
_SELU_SCALE = 1.0507009873554804934193349852946
_GELU_C = 0.7978845608028654  # sqrt(2 / pi)
_GELU_K = 0.044715
_INV_SQRT_2 = 0.7071067811865476
_INV_SQRT_2PI = 0.3989422804014327
_QUICK_GELU_SCALE = 1.702


class ActivationInfo(NamedTuple):
    """What DREG needs to know about an activation.

    Attributes:
        name: Human-readable name, e.g. `"gelu(approximate=True)"`,
            `"ReLU(max_value=6.0)"` or `"my_act (autodiff)"`.
        kind: `"elementwise"`, `"linear"` or `"non_elementwise"`.
        derivative: `phi'`, mapping `z` to a tensor of the same shape and
            dtype; `None` unless `kind` is `"elementwise"`.
        second_derivative: `phi''` in closed form, for the smooth
            activations that have one, else `None`. The penalty uses it
            for the gradient of `phi'(z)^2`; without it, autodiff
            differentiates through `phi'`.
        value_and_derivatives: `z -> (phi(z), phi'(z), phi''(z))`, the
            three evaluated together (the GELU's `erf` and `exp` serve
            all three), wherever `second_derivative` is known, else
            `None`. The training step evaluates the activation with it
            (see `keras_dreg.capture`).

    Example:

    >>> info = describe_activation("tanh")
    >>> info.name, info.kind
    ('tanh', 'elementwise')
    >>> describe_activation(None).derivative is None
    True
    """

    name: str
    kind: str
    derivative: Derivative | None
    second_derivative: Derivative | None = None
    value_and_derivatives: Callable | None = None


class _Known(NamedTuple):
    fn: Callable
    kind: str
    derivative: Callable | None = None
    defaults: dict = {}
    second_derivative: Callable | None = None
    value_and_derivatives: Callable | None = None


def _indicator(condition, x):
    return ops.cast(condition, x.dtype)


def _between(x, low, high):
    return _indicator(ops.logical_and(x > low, x < high), x)


def _relu(x, negative_slope=0.0, max_value=None, threshold=0.0):
    if negative_slope != 0.0 and max_value is None and threshold == 0:
        return _leaky_relu(x, negative_slope)
    active = x > threshold
    if max_value is not None:
        active = ops.logical_and(active, ops.logical_and(x > 0, x < max_value))
    return _indicator(active, x) + negative_slope * _indicator(x < threshold, x)


def _leaky_relu(x, negative_slope=0.2):
    return _indicator(x >= 0, x) + negative_slope * _indicator(x < 0, x)


def _relu6(x):
    return _between(x, 0.0, 6.0)


def _elu(x, alpha=1.0):
    # `minimum` keeps the unselected branch finite, so its gradient is 0.
    return ops.where(
        x > 0, ops.ones_like(x), alpha * ops.exp(ops.minimum(x, 0))
    )


def _celu(x, alpha=1.0):
    return ops.where(
        x > 0, ops.ones_like(x), ops.exp(ops.minimum(x, 0) / alpha)
    )


def _selu(x):
    return _SELU_SCALE * _elu(x, _SELU_ALPHA)


def _gelu_tanh_terms(x):
    """`u = tanh(v)` and `v'` for `v = c (x + k x^3)`, the tanh GELU's."""
    u = ops.tanh(_GELU_C * (x + _GELU_K * x**3))
    return u, _GELU_C * (1.0 + 3.0 * _GELU_K * x**2)


def _normal_cdf(x):
    return 0.5 * (1.0 + ops.erf(x * _INV_SQRT_2))


def _normal_density(x_squared):
    return _INV_SQRT_2PI * ops.exp(-0.5 * x_squared)


def _gelu(x, approximate=False):
    if approximate:
        u, slope = _gelu_tanh_terms(x)
        return 0.5 * (1.0 + u) * (1.0 + x * (1.0 - u) * slope)
    return _normal_cdf(x) + x * _normal_density(x**2)


def _tanh(x):
    # (1 - t)(1 + t) rather than 1 - t^2: no cancellation where |t| ~ 1.
    t = ops.tanh(x)
    return (1.0 - t) * (1.0 + t)


def _sigmoid(x):
    s = ops.sigmoid(x)
    return s * (1.0 - s)


def _hard_sigmoid(x):
    return _between(x, -3.0, 3.0) / 6.0


def _sparse_sigmoid(x):
    return _between(x, -1.0, 1.0) / 2.0


def _silu(x):
    s = ops.sigmoid(x)
    return s * (1.0 + x * (1.0 - s))


def _hard_silu(x):
    return _between(x, -3.0, 3.0) * (2.0 * x + 3.0) / 6.0 + _indicator(
        x >= 3.0, x
    )


def _softplus(x):
    return ops.sigmoid(x)


def _softsign(x):
    return 1.0 / (1.0 + ops.abs(x)) ** 2


def _mish(x):
    t = ops.tanh(ops.softplus(x))
    return t + x * ops.sigmoid(x) * (1.0 - t) * (1.0 + t)


def _exponential(x):
    return ops.exp(x)


def _log_sigmoid(x):
    return ops.sigmoid(-x)


def _tanh_shrink(x):
    return ops.tanh(x) ** 2


def _hard_tanh(x):
    return _indicator(ops.abs(x) <= 1.0, x)


def _shrink(x, threshold=0.5):
    return _indicator(ops.abs(x) > threshold, x)


def _squareplus(x, b=4):
    return 0.5 * (1.0 + x / ops.sqrt(x**2 + b))


def _sparse_plus(x):
    return _between(x, -1.0, 1.0) * (x + 1.0) / 2.0 + _indicator(x >= 1.0, x)


def _threshold(x, threshold, default_value):
    del default_value  # `phi'` does not depend on it.
    return _indicator(x > threshold, x)


def _elu_second(x, alpha=1.0):
    return ops.where(
        x > 0, ops.zeros_like(x), alpha * ops.exp(ops.minimum(x, 0))
    )


def _celu_second(x, alpha=1.0):
    return ops.where(
        x > 0, ops.zeros_like(x), ops.exp(ops.minimum(x, 0) / alpha) / alpha
    )


def _selu_second(x):
    return _SELU_SCALE * _elu_second(x, _SELU_ALPHA)


def _gelu_second(x, approximate=False):
    if approximate:
        u, slope = _gelu_tanh_terms(x)
        return _gelu_tanh_second(x, u, slope)
    x_squared = x**2
    return _normal_density(x_squared) * (2.0 - x_squared)


def _gelu_tanh_second(x, u, slope):
    curvature = slope - x * u * slope**2 + 3.0 * _GELU_C * _GELU_K * x**2
    return (1.0 - u) * (1.0 + u) * curvature


def _gelu_joint(x, approximate=False):
    if approximate:
        u, slope = _gelu_tanh_terms(x)
        first = 0.5 * (1.0 + u) * (1.0 + x * (1.0 - u) * slope)
        return 0.5 * x * (1.0 + u), first, _gelu_tanh_second(x, u, slope)
    cdf, x_squared = _normal_cdf(x), x**2
    density = _normal_density(x_squared)
    return x * cdf, cdf + x * density, density * (2.0 - x_squared)


def _tanh_joint(x):
    t = ops.tanh(x)
    first = (1.0 - t) * (1.0 + t)
    return t, first, -2.0 * t * first


def _sigmoid_joint(x):
    s = ops.sigmoid(x)
    first = s * (1.0 - s)
    return s, first, first * (1.0 - 2.0 * s)


def _silu_joint(x):
    s = ops.sigmoid(x)
    first = s * (1.0 + x * (1.0 - s))
    return x * s, first, _silu_curvature(x, s)


def _tanh_second(x):
    # The joint form's value is the tanh it needs anyway.
    return _tanh_joint(x)[2]


def _sigmoid_second(x):
    return _sigmoid_joint(x)[2]


def _silu_second(x):
    return _silu_curvature(x, ops.sigmoid(x))


def _silu_curvature(x, s):
    """SiLU's `phi''` from `s = sigmoid(x)`."""
    return s * (1.0 - s) * (2.0 + x * (1.0 - 2.0 * s))


def _softplus_second(x):
    return _sigmoid(x)


def _prelu(x, layer):
    alpha = ops.cast(layer.alpha, x.dtype)
    return ops.where(x > 0, ops.ones_like(x), alpha)


# Names in `keras.activations` and `keras.ops`, with `phi'` taking the same
# arguments as the activation (missing names are skipped: older Keras).
class _Forms(NamedTuple):
    """One activation's closed forms: `phi'`, and for the smooth ones
    `phi''` and the joint `(phi, phi', phi'')` (sharing their
    transcendental functions; without it the three are evaluated one by
    one). Autodiff through `phi'` would replay its ten-odd operations in
    the backward pass; `phi''` in closed form is a few passes (see
    `penalty.layer_penalty`)."""

    derivative: Callable
    second_derivative: Callable | None = None
    value_and_derivatives: Callable | None = None


# Keras's elementwise activations, by their name in `keras.activations`
# and `keras.ops`.
_ELEMENTWISE_FORMS = {
    "relu": _Forms(_relu),
    "leaky_relu": _Forms(_leaky_relu),
    "relu6": _Forms(_relu6),
    "elu": _Forms(_elu, _elu_second),
    "celu": _Forms(_celu, _celu_second),
    "selu": _Forms(_selu, _selu_second),
    "gelu": _Forms(_gelu, _gelu_second, _gelu_joint),
    "tanh": _Forms(_tanh, _tanh_second, _tanh_joint),
    "sigmoid": _Forms(_sigmoid, _sigmoid_second, _sigmoid_joint),
    "hard_sigmoid": _Forms(_hard_sigmoid),
    "sparse_sigmoid": _Forms(_sparse_sigmoid),
    "silu": _Forms(_silu, _silu_second, _silu_joint),
    "swish": _Forms(_silu, _silu_second, _silu_joint),
    "hard_silu": _Forms(_hard_silu),
    "hard_swish": _Forms(_hard_silu),
    "softplus": _Forms(_softplus, _softplus_second),
    "softsign": _Forms(_softsign),
    "mish": _Forms(_mish),
    "exponential": _Forms(_exponential, _exponential),
    "exp": _Forms(_exponential, _exponential),
    "log_sigmoid": _Forms(_log_sigmoid),
    "tanh_shrink": _Forms(_tanh_shrink),
    "hard_tanh": _Forms(_hard_tanh),
    "soft_shrink": _Forms(_shrink),
    "hard_shrink": _Forms(_shrink),
    "squareplus": _Forms(_squareplus),
    "sparse_plus": _Forms(_sparse_plus),
    "threshold": _Forms(_threshold),
}
_NON_ELEMENTWISE_NAMES = ("softmax", "log_softmax", "glu", "sparsemax")


def _changed_defaults(fn, derivative):
    """`fn`'s defaults that differ from `derivative`'s (`ops.gelu`)."""
    reference = inspect.signature(derivative).parameters
    return {
        name: param.default
        for name, param in inspect.signature(fn).parameters.items()
        if name in reference
        and param.default is not inspect.Parameter.empty
        and param.default != reference[name].default
    }


def _builtin_table():
    table = {}
    for module in (keras.activations, ops):
        for name, forms in _ELEMENTWISE_FORMS.items():
            fn = getattr(module, name, None)
            if fn is not None:
                table[id(fn)] = _Known(
                    fn,
                    _ELEMENTWISE,
                    forms.derivative,
                    _changed_defaults(fn, forms.derivative),
                    forms.second_derivative,
                    forms.value_and_derivatives,
                )
        for name in _NON_ELEMENTWISE_NAMES:
            fn = getattr(module, name, None)
            if fn is not None:
                table[id(fn)] = _Known(fn, _NON_ELEMENTWISE)
    linear = keras.activations.linear
    table[id(linear)] = _Known(linear, _LINEAR)
    return table


def _quick_gelu(x):
    # z s(a z) = silu(a z) / a, so phi'(z) = silu'(a z).
    return _silu(_QUICK_GELU_SCALE * x)


def _quick_gelu_second(x):
    return _QUICK_GELU_SCALE * _silu_second(_QUICK_GELU_SCALE * x)


def _quick_gelu_joint(x):
    value, first, second = _silu_joint(_QUICK_GELU_SCALE * x)
    return value / _QUICK_GELU_SCALE, first, _QUICK_GELU_SCALE * second


_GELU_TANH_FORMS = tuple(
    functools.partial(form, approximate=True)
    for form in (_gelu, _gelu_second, _gelu_joint)
)
_QUICK_GELU_FORMS = (_quick_gelu, _quick_gelu_second, _quick_gelu_joint)
# KerasHub's activations, keyed by `(fn.__module__, fn.__qualname__)`:
# `(phi', phi'', z -> (phi, phi', phi''))`. tests/test_keras_hub.py checks each
# against autodiff of KerasHub's own function.
_KERAS_HUB_FORMS = {
    ("keras_hub.src.utils.keras_utils", "gelu_approximate"): _GELU_TANH_FORMS,
    ("keras_hub.src.models.clip.clip_layers", "quick_gelu"): _QUICK_GELU_FORMS,
    (
        "keras_hub.src.models.metaclip_2.metaclip_2_layers",
        "quick_gelu",
    ): _QUICK_GELU_FORMS,
}


def _keras_hub_entry(fn):
    """The known entry for a KerasHub activation, else `None`."""
    key = (getattr(fn, "__module__", None), getattr(fn, "__qualname__", None))
    forms = _KERAS_HUB_FORMS.get(key)
    if forms is None:
        return None
    derivative, second_derivative, joint = forms
    known = _Known(fn, _ELEMENTWISE, derivative, {}, second_derivative, joint)
    _BUILTINS[id(fn)] = known  # `known` keeps `fn` alive: `id` stays valid.
    return known


_BUILTINS = _builtin_table()
_REGISTRY = {}
_WARNED = {}


def register_derivative(
    fn: Callable,
    derivative: Callable,
    second_derivative: Callable | None = None,
) -> None:
    """Registers the closed-form derivative of a custom activation.

    `describe_activation` looks here first, so a registration also
    overrides a built-in derivative. The key is the function object itself;
    if `fn` is registered with `keras.saving.register_keras_serializable`,
    its registered name (e.g. `"my_package>my_act"`) resolves to it too.
    A `functools.partial` of `fn` gets `derivative` with the same bound
    arguments, so `derivative` should accept the arguments `fn` does.

    Example:

    >>> def scaled_tanh(x, scale=2.0):
    ...     return scale * keras.ops.tanh(x)
    >>> def scaled_tanh_derivative(x, scale=2.0):
    ...     return scale * (1.0 - keras.ops.tanh(x) ** 2)
    >>> register_derivative(scaled_tanh, scaled_tanh_derivative)
    >>> describe_activation(scaled_tanh).kind
    'elementwise'

    Args:
        fn: The activation, an elementwise callable.
        derivative: Its derivative `phi'`, a callable mapping `z` to a
            tensor of the same shape, written with `keras.ops`.
        second_derivative: Optionally `phi''`, likewise. Given, training
            uses it for the gradient of `phi'(z)^2` instead of
            differentiating through `derivative`: fewer passes over `z`
            when the backend does not fuse operations (PyTorch, and
            TensorFlow without XLA).

    Raises:
        TypeError: If `fn`, `derivative` or a given `second_derivative`
            is not callable.
    """
    arguments = {"fn": fn, "derivative": derivative}
    if second_derivative is not None:
        arguments["second_derivative"] = second_derivative
    for arg_name, value in arguments.items():
        if not callable(value):
            raise TypeError(
                f"register_derivative expects `{arg_name}` to be callable. "
                f"Received: {arg_name}={value!r} of type "
                f"{type(value).__name__}"
            )
    _REGISTRY[id(fn)] = _Known(
        fn, _ELEMENTWISE, derivative, second_derivative=second_derivative
    )


def describe_activation(activation) -> ActivationInfo:
    """Classifies an activation and returns its derivative `phi'`.

    Accepts a function from `keras.activations` or `keras.ops`, its name
    (or a registered custom object's name), `None` (linear), a
    `functools.partial` binding keyword options of a known or registered
    function (`partial(gelu, approximate=True)`), or an activation layer
    (`Activation`, `ReLU`, `LeakyReLU`, `ELU`, `PReLU`, `Softmax`). Other
    callables fall back to autodiff (see the module docstring) and warn
    once per callable.

    Example:

    >>> info = describe_activation("gelu")
    >>> info.name, info.kind
    ('gelu', 'elementwise')
    >>> keras.ops.convert_to_numpy(info.derivative(keras.ops.zeros((2,))))
    array([0.5, 0.5], dtype=float32)
    >>> describe_activation(keras.layers.ReLU(max_value=6.0)).name
    'ReLU(max_value=6.0)'
    >>> describe_activation("softmax").kind
    'non_elementwise'

    Args:
        activation: The activation to describe.

    Returns:
        An `ActivationInfo`.

    Raises:
        TypeError: If `activation` is neither callable nor an identifier.
        ValueError: If a name is not a known activation.
    """
    fn = _resolve(activation)
    known, options = _match(fn)
    if known is not None:
        return _describe_known(known, options)
    layer_info = _describe_layer(fn)
    if layer_info is not None:
        return layer_info
    return _describe_unknown(fn)


def _resolve(activation):
    if isinstance(activation, str):
        registered = keras.saving.get_registered_object(activation)
        if registered is not None:
            return registered
    if activation is None or isinstance(activation, (str, dict)):
        return keras.activations.get(activation)
    if not callable(activation):
        raise TypeError(
            "describe_activation expects a callable, an activation name or "
            f"None. Received: {activation!r} of type "
            f"{type(activation).__name__}"
        )
    return activation


def _lookup(fn):
    return (
        _REGISTRY.get(id(fn)) or _BUILTINS.get(id(fn)) or _keras_hub_entry(fn)
    )


def _match(fn):
    """The known entry for `fn` and the options bound to it, if any."""
    known = _lookup(fn)
    if known is not None:
        return known, {}
    # Bound positional arguments would take `x`'s place: not an option.
    if isinstance(fn, functools.partial) and not fn.args:
        known = _lookup(fn.func)
        if known is not None:
            return known, dict(fn.keywords)
    return None, None


def _describe_known(known, options):
    all_options = {**known.defaults, **options}
    derivative = _bind(known.derivative, all_options)
    second_derivative = _bind(known.second_derivative, all_options)
    joint = _bind(known.value_and_derivatives, all_options) or _joint_of(
        _bind(known.fn, options), derivative, second_derivative
    )
    name = _format_name(_callable_name(known.fn), all_options)
    return ActivationInfo(
        name, known.kind, derivative, second_derivative, joint
    )


def _joint_of(fn, derivative, second_derivative):
    """`(phi, phi', phi'')` evaluated one by one; `None` without `phi''`."""
    if second_derivative is None:
        return None
    return functools.partial(
        _evaluate_separately, fn, derivative, second_derivative
    )


def _evaluate_separately(fn, derivative, second_derivative, x):
    return fn(x), derivative(x), second_derivative(x)


def _bind(fn, options):
    if fn is None or not options:
        return fn
    return functools.partial(fn, **options)


_PARAMETRIC_LAYERS = {
    layers.ReLU: (_relu, None, ("max_value", "negative_slope", "threshold")),
    layers.LeakyReLU: (_leaky_relu, None, ("negative_slope",)),
    layers.ELU: (_elu, _elu_second, ("alpha",)),
}


def _describe_layer(layer):
    """Describes the activation layers Keras ships; `None` for others."""
    layer_type = type(layer)
    if layer_type is layers.Activation:
        return describe_activation(layer.activation)
    if layer_type is layers.Softmax:
        return ActivationInfo("Softmax", _NON_ELEMENTWISE, None)
    if layer_type is layers.PReLU:
        derivative = functools.partial(_prelu, layer=layer)
        return ActivationInfo("PReLU", _ELEMENTWISE, derivative)
    if layer_type not in _PARAMETRIC_LAYERS:
        return None
    derivative, second_derivative, names = _PARAMETRIC_LAYERS[layer_type]
    options = {name: getattr(layer, name) for name in names}
    defaults = inspect.signature(layer_type).parameters
    shown = {k: v for k, v in options.items() if v != defaults[k].default}
    derivative = functools.partial(derivative, **options)
    second_derivative = _bind(second_derivative, options)
    return ActivationInfo(
        _format_name(layer_type.__name__, shown),
        _ELEMENTWISE,
        derivative,
        second_derivative,
        _joint_of(layer, derivative, second_derivative),
    )


def _describe_unknown(fn):
    name = _callable_name(fn)
    if not _is_elementwise(fn):
        return ActivationInfo(f"{name} (mixes units)", _NON_ELEMENTWISE, None)
    if id(fn) not in _WARNED:
        _WARNED[id(fn)] = fn
        warnings.warn(
            f"The activation `{name}` has no registered closed-form "
            "derivative. DREG falls back to autodiff (`keras.ops.jvp`); a "
            "probe of its Jacobian found it elementwise. To silence this "
            "warning, register its derivative with "
            "`keras_dreg.register_derivative(fn, derivative)`.",
            UserWarning,
            stacklevel=3,
        )
    derivative = functools.partial(_autodiff_derivative, fn)
    return ActivationInfo(f"{name} (autodiff)", _ELEMENTWISE, derivative)


_PROBE = [[-1.7, -0.4, 0.3, 1.1], [0.9, -1.2, 2.1, -0.1]]


def _is_elementwise(fn) -> bool:
    """Probes the Jacobian of `fn` at a small input (2 x 4 units):
    elementwise iff each output unit moves with its own input only.

    A function that fails on the probe, or changes its shape, is not
    elementwise.
    """
    x = ops.convert_to_tensor(_PROBE, "float32")
    units = x.shape[-1]
    try:
        for unit in range(units):
            tangent = ops.broadcast_to(
                ops.one_hot(unit, units, dtype="float32"), x.shape
            )
            _, moved = ops.jvp(fn, (x,), (tangent,))
            if tuple(moved.shape) != tuple(x.shape):
                return False
            elsewhere = ops.abs(ops.cast(moved, "float32") * (1 - tangent))
            if float(ops.convert_to_numpy(ops.max(elsewhere))) > 1e-6:
                return False
    except Exception:  # noqa: BLE001 - any failure means "not elementwise"
        return False
    return True


def _autodiff_derivative(fn, x):
    return ops.jvp(fn, (x,), (ops.ones_like(x),))[1]


def _callable_name(fn):
    while isinstance(fn, functools.partial):
        fn = fn.func
    return getattr(fn, "__name__", type(fn).__name__)


def _format_name(base, options):
    if not options:
        return base
    args = ", ".join(f"{key}={value!r}" for key, value in options.items())
    return f"{base}({args})"
