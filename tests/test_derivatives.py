"""Tests for `keras_dreg.derivatives` against each backend's own autodiff."""

import functools
import warnings

import keras
import numpy as np
import pytest
from keras import activations
from keras import layers
from keras import ops
from keras.src.activations import ALL_OBJECTS

from keras_dreg import penalty
from keras_dreg.derivatives import describe_activation
from keras_dreg.derivatives import register_derivative
from tests.conftest import to_numpy

BACKEND = keras.backend.backend()
partial = functools.partial

# Every kink of the cases below; samples stay 1e-3 away from them.
KINKS = np.array([-3.0, -1.0, -0.5, 0.0, 0.3, 0.5, 1.0, 3.0, 4.0, 6.0])

ELEMENTWISE_CASES = [
    # keras.activations, by name, with their defaults.
    "relu",
    "relu6",
    "leaky_relu",
    "elu",
    "celu",
    "selu",
    "gelu",
    "tanh",
    "sigmoid",
    "hard_sigmoid",
    "sparse_sigmoid",
    "silu",
    "swish",
    "hard_silu",
    "hard_swish",
    "softplus",
    "softsign",
    "mish",
    "exponential",
    "log_sigmoid",
    "tanh_shrink",
    "hard_tanh",
    "soft_shrink",
    "hard_shrink",
    "squareplus",
    "sparse_plus",
    # keras.activations with non-default options.
    partial(activations.relu, negative_slope=0.1),
    partial(activations.relu, max_value=4.0),
    partial(activations.relu, max_value=6.0),
    partial(activations.relu, threshold=1.0),
    partial(activations.relu, threshold=-1.0, negative_slope=0.2),
    partial(activations.relu, negative_slope=0.1, max_value=4.0, threshold=1.0),
    partial(activations.relu, threshold=1.0, max_value=3.0),
    partial(activations.leaky_relu, negative_slope=0.5),
    partial(activations.elu, alpha=0.5),
    partial(activations.celu, alpha=2.0),
    partial(activations.gelu, approximate=True),
    partial(activations.soft_shrink, threshold=1.0),
    partial(activations.hard_shrink, threshold=1.0),
    partial(activations.squareplus, b=2.0),
    partial(activations.threshold, threshold=0.3, default_value=-2.0),
    # keras.ops (ops.gelu defaults to approximate=True).
    ops.relu,
    ops.relu6,
    ops.gelu,
    partial(ops.gelu, approximate=False),
    ops.silu,
    ops.sigmoid,
    ops.tanh,
    ops.softplus,
    ops.elu,
    partial(ops.elu, alpha=0.5),
    ops.selu,
    ops.leaky_relu,
    ops.hard_sigmoid,
    ops.hard_silu,
    ops.softsign,
    ops.log_sigmoid,
    ops.celu,
    ops.sparse_sigmoid,
    ops.sparse_plus,
    ops.soft_shrink,
    ops.hard_shrink,
    ops.tanh_shrink,
    ops.hard_tanh,
    ops.squareplus,
    ops.exp,
    partial(ops.threshold, threshold=0.3, default_value=1.0),
    # Activation layers.
    layers.ReLU(dtype="float64"),
    layers.ReLU(max_value=6.0, dtype="float64"),
    layers.ReLU(
        max_value=4.0, negative_slope=0.1, threshold=1.0, dtype="float64"
    ),
    layers.LeakyReLU(dtype="float64"),
    layers.LeakyReLU(negative_slope=0.5, dtype="float64"),
    layers.ELU(alpha=0.5, dtype="float64"),
    layers.Activation("gelu", dtype="float64"),
    layers.Activation(partial(ops.gelu, approximate=True), dtype="float64"),
]


def case_id(activation):
    if isinstance(activation, str):
        return activation
    name = describe_activation(activation).name
    if isinstance(activation, layers.Activation):
        return f"Activation({name})"
    if isinstance(activation, layers.Layer):
        return name
    fn = base_function(activation)
    return f"{'ops' if '.ops.' in fn.__module__ else 'activations'}.{name}"


def as_callable(activation):
    if isinstance(activation, str):
        return activations.get(activation)
    return activation


def base_function(activation):
    fn = as_callable(activation)
    return fn.func if isinstance(fn, partial) else fn


@pytest.fixture(autouse=True)
def float64_on_jax():
    if BACKEND != "jax":
        yield
        return
    import jax

    with jax.enable_x64(True):
        yield


def sample_points(shape=(293,), seed=0):
    z = np.random.default_rng(seed).uniform(-7.5, 7.5, size=shape)
    near_kink = np.abs(z[..., None] - KINKS).min(axis=-1) < 1e-3
    return np.where(near_kink, z + 2e-3, z)


def grad_of_sum(fn, z):
    """`d sum(fn(z)) / dz` by the backend's native reverse-mode autodiff.

    For an elementwise `fn` this is `fn'(z)`, independent of `keras.ops`.
    Returns zeros where `fn(z)` does not depend on `z`; differentiable, so
    nesting it gives second derivatives.
    """
    if BACKEND == "jax":
        import jax

        return jax.grad(lambda t: jax.numpy.sum(fn(t)))(z)
    if BACKEND == "torch":
        import torch

        if not z.requires_grad:
            z = z.detach().requires_grad_()
        total = fn(z).sum()
        if not total.requires_grad:
            return torch.zeros_like(z)
        (grad,) = torch.autograd.grad(total, z, create_graph=True)
        return grad
    import tensorflow as tf

    with tf.GradientTape() as tape:
        tape.watch(z)
        total = tf.reduce_sum(fn(z))
    return tape.gradient(
        total, z, unconnected_gradients=tf.UnconnectedGradients.ZERO
    )


def assert_close(actual, expected, atol=1e-9):
    np.testing.assert_allclose(
        to_numpy(actual), to_numpy(expected), rtol=1e-5, atol=atol
    )


def atol_for(activation, atol):
    """`atol`, or float32's where Keras computes the activation in float32.

    On JAX, Keras computes `ops.tanh` of float64 in float32 (its type
    promotion maps 64-bit results to 32-bit there, whatever JAX's x64 flag).
    """
    name = describe_activation(activation).name
    uses_tanh = any(s in name for s in ("tanh", "mish", "approximate=True"))
    return 2e-5 if BACKEND == "jax" and uses_tanh else atol


def describe_quietly(activation):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return describe_activation(activation)


@pytest.mark.parametrize("activation", ELEMENTWISE_CASES, ids=case_id)
def test_closed_form_matches_autodiff(activation):
    info = describe_quietly(activation)
    assert info.kind == "elementwise"
    z = ops.convert_to_tensor(sample_points(), dtype="float64")
    assert_close(
        info.derivative(z),
        grad_of_sum(as_callable(activation), z),
        atol=atol_for(activation, 1e-9),
    )


# Native second derivatives the backends lack.
NO_DOUBLE_BACKWARD = {
    "torch": (activations.hard_sigmoid, ops.hard_sigmoid),
    "tensorflow": (activations.softsign, ops.softsign),
}


@pytest.mark.parametrize("activation", ELEMENTWISE_CASES, ids=case_id)
def test_gradient_flows_through_closed_form(activation):
    # d/dz phi'(z) must equal the native second derivative phi''(z).
    fn = as_callable(activation)
    if base_function(fn) in NO_DOUBLE_BACKWARD.get(BACKEND, ()):
        pytest.skip(f"{BACKEND} has no second derivative of {fn.__name__}")
    derivative = describe_quietly(activation).derivative
    z = ops.convert_to_tensor(sample_points(), dtype="float64")
    assert_close(
        grad_of_sum(derivative, z),
        grad_of_sum(lambda t: grad_of_sum(fn, t), z),
        atol=atol_for(activation, 1e-7),
    )


SMOOTH_CASES = [
    case
    for case in ELEMENTWISE_CASES
    if describe_quietly(case).second_derivative is not None
]


def test_the_smooth_activations_have_a_second_derivative():
    smooth = {describe_quietly(case).name for case in SMOOTH_CASES}
    expected = {"gelu", "gelu(approximate=True)", "tanh", "sigmoid", "silu"}
    assert expected <= smooth
    assert describe_quietly("relu").second_derivative is None


@pytest.mark.parametrize("activation", SMOOTH_CASES, ids=case_id)
def test_second_derivative_matches_autodiff(activation):
    fn = as_callable(activation)
    second_derivative = describe_quietly(activation).second_derivative
    z = ops.convert_to_tensor(sample_points(), dtype="float64")
    assert_close(
        second_derivative(z),
        grad_of_sum(lambda t: grad_of_sum(fn, t), z),
        atol=atol_for(activation, 1e-7),
    )
    extremes = ops.convert_to_tensor([-100.0, -30.0, 30.0], dtype="float32")
    assert np.all(np.isfinite(to_numpy(second_derivative(extremes))))


@pytest.mark.parametrize("activation", SMOOTH_CASES, ids=case_id)
def test_value_and_derivatives_match_the_activation(activation):
    # `(phi, phi', phi'')` evaluated together: the activation's own value
    # (float32, as the training step uses it), `phi'` and `phi''`.
    info = describe_quietly(activation)
    z = ops.convert_to_tensor(sample_points(), dtype="float32")
    value, first, second = info.value_and_derivatives(z)
    assert_close(value, as_callable(activation)(z), atol=1e-6)
    assert_close(first, info.derivative(z), atol=1e-6)
    assert_close(second, info.second_derivative(z), atol=1e-6)


def test_only_smooth_activations_are_evaluated_with_derivatives():
    assert describe_quietly("relu").value_and_derivatives is None
    layer_info = describe_quietly(layers.Activation("gelu"))
    assert layer_info.value_and_derivatives is not None


@pytest.mark.parametrize("activation", SMOOTH_CASES, ids=case_id)
def test_penalty_gradient_in_closed_form_matches_autodiff(activation):
    # `layer_penalty` with `phi''` (a custom gradient) against autodiff
    # through `phi'`: same value, same gradient with respect to `z`.
    info = describe_quietly(activation)
    layer = layers.Conv1D(4, 2)
    layer.build((None, 5, 3))
    z = ops.convert_to_tensor(sample_points((2, 4, 4)), dtype="float32")

    def penalty_with(second_derivative):
        return lambda t: penalty.layer_penalty(
            layer, t, info.derivative, second_derivative=second_derivative
        )

    closed_form = penalty_with(info.second_derivative)
    reference = penalty_with(None)
    assert_close(closed_form(z), reference(z), atol=1e-7)
    np.testing.assert_allclose(
        to_numpy(grad_of_sum(closed_form, z)),
        to_numpy(grad_of_sum(reference, z)),
        rtol=1e-4,
        atol=1e-6,
    )


@pytest.mark.parametrize("shape", [(5, 3), (2, 2, 4, 3)], ids=str)
def test_squared_column_norms_and_their_gradient_match_numpy(shape):
    # The weight norms' gradient is written out (`2 * kernel * upstream`):
    # checked against float64 numpy, with a weighted sum as the upstream.
    rng = np.random.default_rng(0)
    kernel = rng.normal(size=shape)
    weights = rng.normal(size=shape[-1])
    kernel_tensor = ops.convert_to_tensor(kernel, dtype="float32")

    def weighted_norms(k):
        return penalty.squared_column_norms(k) * ops.convert_to_tensor(
            weights, dtype="float32"
        )

    axes = tuple(range(len(shape) - 1))
    np.testing.assert_allclose(
        to_numpy(penalty.squared_column_norms(kernel_tensor)),
        np.sum(kernel**2, axis=axes),
        rtol=1e-6,
    )
    np.testing.assert_allclose(
        to_numpy(grad_of_sum(weighted_norms, kernel_tensor)),
        2.0 * kernel * weights,
        rtol=1e-6,
        atol=1e-6,
    )


@pytest.mark.parametrize("activation", ELEMENTWISE_CASES, ids=case_id)
def test_closed_form_keeps_shape_and_dtype(activation):
    z = ops.convert_to_tensor(sample_points((4, 3)), dtype="float32")
    result = describe_quietly(activation).derivative(z)
    assert tuple(result.shape) == (4, 3)
    assert keras.backend.standardize_dtype(result.dtype) == "float32"


@pytest.mark.parametrize("activation", ELEMENTWISE_CASES, ids=case_id)
def test_closed_form_and_its_gradient_stay_finite(activation):
    # e.g. exp in an unselected `where` branch would overflow to a NaN
    # gradient.
    if base_function(activation) in (activations.exponential, ops.exp):
        pytest.skip("exp overflows by definition")
    z = ops.convert_to_tensor([-100.0, -30.0, 30.0, 100.0], dtype="float32")
    derivative = describe_quietly(activation).derivative
    assert np.all(np.isfinite(to_numpy(derivative(z))))
    assert np.all(np.isfinite(to_numpy(grad_of_sum(derivative, z))))


# (activation, z, phi'(z), whether JAX's autodiff gives the same value).
KINK_CASES = [
    ("relu", 0.0, 0.0, True),
    ("leaky_relu", 0.0, 1.0, True),
    (partial(activations.relu, negative_slope=0.1), 0.0, 1.0, True),
    (partial(activations.relu, max_value=4.0), 0.0, 0.0, True),
    (partial(activations.relu, max_value=4.0), 4.0, 0.0, False),
    (partial(activations.relu, threshold=1.0), 1.0, 0.0, True),
    ("relu6", 0.0, 0.0, True),
    ("relu6", 6.0, 0.0, True),
    (partial(activations.elu, alpha=0.5), 0.0, 0.5, True),
    ("hard_sigmoid", -3.0, 0.0, True),
    ("hard_sigmoid", 3.0, 0.0, True),
    ("hard_silu", -3.0, 0.0, True),
    ("hard_silu", 3.0, 1.0, True),
    ("hard_tanh", -1.0, 1.0, True),
    ("hard_tanh", 1.0, 1.0, True),
    ("sparse_sigmoid", -1.0, 0.0, False),
    ("sparse_sigmoid", 1.0, 0.0, False),
    ("sparse_plus", 1.0, 1.0, True),
    ("soft_shrink", 0.5, 0.0, True),
    ("hard_shrink", -0.5, 0.0, True),
    (
        partial(activations.threshold, threshold=0.3, default_value=-1.0),
        0.3,
        0.0,
        True,
    ),
]


@pytest.mark.parametrize("activation, z, expected, jax_agrees", KINK_CASES)
def test_value_at_kinks(activation, z, expected, jax_agrees):
    z = ops.convert_to_tensor([z], dtype="float64")
    result = describe_activation(activation).derivative(z)
    np.testing.assert_array_equal(to_numpy(result), [expected])
    if BACKEND == "jax" and jax_agrees:
        assert_close(result, grad_of_sum(as_callable(activation), z))


NOT_ELEMENTWISE = {
    "linear": "linear",
    "softmax": "non_elementwise",
    "log_softmax": "non_elementwise",
    "glu": "non_elementwise",
    "sparsemax": "non_elementwise",
}


def test_every_keras_activation_is_classified():
    # A function a new Keras adds fails here until it is classified.
    kinds = {fn.__name__: describe_quietly(fn).kind for fn in ALL_OBJECTS}
    assert kinds == {
        name: NOT_ELEMENTWISE.get(name, "elementwise") for name in kinds
    }


def test_every_elementwise_keras_activation_is_checked_numerically():
    checked = {id(base_function(case)) for case in ELEMENTWISE_CASES}
    unchecked = [
        fn.__name__
        for fn in ALL_OBJECTS
        if describe_activation(fn).kind == "elementwise"
        and id(fn) not in checked
    ]
    assert not unchecked


@pytest.mark.parametrize(
    "activation",
    [
        activations.softmax,
        activations.log_softmax,
        activations.glu,
        activations.sparsemax,
        "softmax",
        partial(activations.softmax, axis=1),
        ops.softmax,
        ops.log_softmax,
        ops.glu,
        ops.sparsemax,
        layers.Softmax(),
        layers.Activation("softmax"),
    ],
)
def test_softmax_like_is_non_elementwise(activation):
    info = describe_quietly(activation)
    assert info.kind == "non_elementwise"
    assert info.derivative is None


@pytest.mark.parametrize(
    "activation", [None, "linear", activations.linear, layers.Activation(None)]
)
def test_identity_is_linear(activation):
    assert describe_quietly(activation) == (
        "linear",
        "linear",
        None,
        None,
        None,
    )


@pytest.mark.parametrize(
    "activation, name",
    [
        ("gelu", "gelu"),
        (activations.gelu, "gelu"),
        (ops.gelu, "gelu(approximate=True)"),
        (partial(activations.gelu, approximate=True), "gelu(approximate=True)"),
        (
            partial(activations.relu, negative_slope=0.1),
            "relu(negative_slope=0.1)",
        ),
        ("swish", "silu"),
        (layers.ReLU(max_value=6.0), "ReLU(max_value=6.0)"),
        (layers.LeakyReLU(), "LeakyReLU"),
        (layers.ELU(alpha=0.5), "ELU(alpha=0.5)"),
        (layers.PReLU(), "PReLU"),
        (layers.Softmax(), "Softmax"),
        (layers.Activation("tanh"), "tanh"),
    ],
)
def test_names(activation, name):
    assert describe_quietly(activation).name == name


def test_ops_gelu_defaults_to_tanh_approximation():
    z = ops.convert_to_tensor([1.5], dtype="float64")
    exact = describe_activation(activations.gelu).derivative(z)
    approximate = describe_activation(ops.gelu).derivative(z)
    assert abs(float(to_numpy(exact - approximate)[0])) > 1e-4


@pytest.mark.parametrize(
    "shared_axes, input_shape, alpha",
    [
        ([1], (4, 5, 3), [[0.1, -0.3, 1.7]]),
        ([1, 2], (2, 3, 4, 2), [[[0.25, 2.0]]]),
        (None, (6, 3), [0.5, 0.0, -1.0]),
    ],
)
def test_prelu_uses_its_alpha_weight(shared_axes, input_shape, alpha):
    layer = layers.PReLU(shared_axes=shared_axes, dtype="float64")
    layer.build((None,) + input_shape[1:])
    layer.alpha.assign(np.array(alpha))
    z_np = sample_points(input_shape, seed=1)
    z = ops.convert_to_tensor(z_np, dtype="float64")
    derivative = describe_quietly(layer).derivative
    expected = np.where(z_np > 0, 1.0, np.broadcast_to(alpha, z_np.shape))
    np.testing.assert_allclose(to_numpy(derivative(z)), expected)
    assert_close(derivative(z), grad_of_sum(layer, z))
    at_kink = derivative(ops.zeros(input_shape, dtype="float64"))
    np.testing.assert_array_equal(
        to_numpy(at_kink), np.broadcast_to(alpha, input_shape)
    )


def scaled_softplus(x, scale=2.0):
    return scale * ops.softplus(x)


def scaled_softplus_derivative(x, scale=2.0):
    return scale * ops.sigmoid(x)


def test_registered_derivative_is_used():
    register_derivative(scaled_softplus, scaled_softplus_derivative)
    info = describe_quietly(scaled_softplus)
    assert info == (
        "scaled_softplus",
        "elementwise",
        scaled_softplus_derivative,
        None,
        None,
    )
    wrapped = describe_quietly(layers.Activation(scaled_softplus))
    assert wrapped.derivative is scaled_softplus_derivative


def test_registered_second_derivative_is_used():
    def second(x, scale=2.0):
        return scale * ops.sigmoid(x) * (1.0 - ops.sigmoid(x))

    register_derivative(scaled_softplus, scaled_softplus_derivative, second)
    info = describe_quietly(scaled_softplus)
    assert info.second_derivative is second
    z = ops.convert_to_tensor(sample_points(), dtype="float32")
    value, first, curvature = info.value_and_derivatives(z)
    assert_close(value, scaled_softplus(z))
    assert_close(first, scaled_softplus_derivative(z))
    assert_close(curvature, second(z))
    with pytest.raises(TypeError, match="`second_derivative` to be callable"):
        register_derivative(scaled_softplus, scaled_softplus_derivative, 2.0)


def test_registered_derivative_gets_partial_arguments():
    register_derivative(scaled_softplus, scaled_softplus_derivative)
    activation = partial(scaled_softplus, scale=3.0)
    info = describe_quietly(activation)
    assert info.name == "scaled_softplus(scale=3.0)"
    z = ops.convert_to_tensor(sample_points(), dtype="float64")
    assert_close(info.derivative(z), grad_of_sum(activation, z))


def test_registered_name_of_serializable_resolves():
    @keras.saving.register_keras_serializable(package="dreg_test")
    def cube(x):
        return x**3

    def cube_derivative(x):
        return 3.0 * x**2

    register_derivative(cube, cube_derivative)
    info = describe_quietly("dreg_test>cube")
    assert info.derivative is cube_derivative


@pytest.mark.parametrize(
    "fn, derivative, message",
    [
        ("relu", scaled_softplus_derivative, "`fn` to be callable"),
        (scaled_softplus, None, "`derivative` to be callable"),
        (scaled_softplus, 1.0, "`derivative` to be callable"),
    ],
)
def test_register_derivative_rejects_non_callables(fn, derivative, message):
    with pytest.raises(TypeError, match=message):
        register_derivative(fn, derivative)


def test_describe_activation_rejects_bad_identifiers():
    with pytest.raises(TypeError, match="expects a callable"):
        describe_activation(3)
    with pytest.raises(ValueError):
        describe_activation("no_such_activation")


def test_autodiff_fallback_warns_once_and_is_exact():
    def wiggle(x):
        return x * ops.exp(-(x**2))

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        info = describe_activation(wiggle)
        assert describe_activation(wiggle).name == "wiggle (autodiff)"
    messages = [str(w.message) for w in caught if "wiggle" in str(w.message)]
    assert len(messages) == 1
    assert "no registered closed-form derivative" in messages[0]
    assert "keras_dreg.register_derivative(fn, derivative)" in messages[0]
    assert info.kind == "elementwise"

    z_np = sample_points()
    z = ops.convert_to_tensor(z_np, dtype="float64")
    gauss = np.exp(-(z_np**2))
    first = gauss * (1.0 - 2.0 * z_np**2)
    second = gauss * (4.0 * z_np**3 - 6.0 * z_np)
    assert_close(info.derivative(z), first)
    assert_close(grad_of_sum(info.derivative, z), second)


def test_partial_with_positional_arguments_falls_back():
    # partial(squareplus, 5.0)(z) is squareplus(5.0, b=z): z is not `x`.
    activation = partial(activations.squareplus, 5.0)
    with pytest.warns(UserWarning, match="`squareplus`"):
        info = describe_activation(activation)
    assert info.name == "squareplus (autodiff)"
    z_np = np.abs(sample_points())
    z = ops.convert_to_tensor(z_np, dtype="float64")
    expected = 0.25 / np.sqrt(25.0 + z_np)
    assert_close(info.derivative(z), expected)


def test_autodiff_fallback_through_activation_layer():
    def cubic(x):
        return x**3 / 3.0

    with pytest.warns(UserWarning, match="`cubic`"):
        info = describe_activation(layers.Activation(cubic))
    z_np = sample_points()
    z = ops.convert_to_tensor(z_np, dtype="float64")
    assert_close(info.derivative(z), z_np**2)
