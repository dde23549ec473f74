"""DREG equals the squared Frobenius norm of the layer Jacobian.

For every covered layer kind, the penalty computed in closed form by
`keras_dreg` is compared with `||dA/dh||_F^2` from the backend's own
autodiff (`tests/autodiff.py`), averaged over the batch and divided by
the number of positions the layer is applied at.
"""

import keras
import numpy as np
import pytest

import keras_dreg
from keras_dreg import penalty
from keras_dreg.derivatives import describe_activation
from tests import autodiff

LAM = 0.5
RNG = np.random.default_rng(0)


def _batch(shape, size=3):
    return RNG.normal(size=(size,) + shape).astype("float32")


def _dreg_of(model, layer_name, x):
    terms = model.dreg_penalty(x, per_layer=True)
    return float(keras.ops.convert_to_numpy(terms[layer_name]))


def _jacobian_norm(block, x):
    """Batch mean of `||d block(h) / dh||_F^2`."""
    norms = []
    for sample in x:
        jac = autodiff.jacobian(lambda h: block(h[None])[0], sample)
        norms.append(np.sum(np.square(jac.astype("float64"))))
    return float(np.mean(norms))


CASES = {
    # name: (layer factory, input shape, number of output positions)
    "dense": (lambda: keras.layers.Dense(6, activation="gelu"), (5,), 1),
    "dense_sequence": (
        lambda: keras.layers.Dense(6, activation="tanh"),
        (4, 5),
        4,
    ),
    "einsum_dense": (
        lambda: keras.layers.EinsumDense(
            "ab,bc->ac", output_shape=6, bias_axes="c", activation="gelu"
        ),
        (5,),
        1,
    ),
    "einsum_dense_heads": (
        lambda: keras.layers.EinsumDense(
            "abc,cde->abde",
            output_shape=(4, 2, 3),
            bias_axes="de",
            activation="silu",
        ),
        (4, 5),
        4,
    ),
    "conv1d_channels_first": (
        lambda: keras.layers.Conv1D(
            3, 2, activation="softplus", data_format="channels_first"
        ),
        (2, 6),
        5,
    ),
    "conv2d": (
        lambda: keras.layers.Conv2D(4, 3, activation="silu"),
        (5, 5, 2),
        9,
    ),
    "conv2d_groups": (
        lambda: keras.layers.Conv2D(4, 2, groups=2, activation="elu"),
        (4, 4, 2),
        9,
    ),
    "conv3d": (
        lambda: keras.layers.Conv3D(2, 2, activation="tanh"),
        (3, 3, 3, 1),
        8,
    ),
    "depthwise_conv2d": (
        lambda: keras.layers.DepthwiseConv2D(
            2, depth_multiplier=2, activation="sigmoid"
        ),
        (4, 4, 2),
        9,
    ),
    "separable_conv1d": (
        lambda: keras.layers.SeparableConv1D(
            3, 3, depth_multiplier=2, activation="gelu"
        ),
        (6, 2),
        4,
    ),
    "separable_conv2d": (
        lambda: keras.layers.SeparableConv2D(3, 2, activation="mish"),
        (4, 4, 2),
        9,
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_penalty_equals_autodiff_jacobian_norm(case):
    make_layer, shape, positions = CASES[case]
    layer = make_layer()
    inputs = keras.Input(shape)
    outputs = keras.layers.Flatten()(layer(inputs))
    model = keras_dreg.DREGRegularizedModel(
        inputs, keras.layers.Dense(1)(outputs), lam=LAM
    )
    x = _batch(shape)
    expected = LAM * _jacobian_norm(layer, x) / positions
    np.testing.assert_allclose(_dreg_of(model, layer.name, x), expected, 1e-5)


@pytest.mark.parametrize(
    "activation_layer",
    [
        lambda: keras.layers.ReLU(),
        lambda: keras.layers.Activation("gelu"),
        lambda: keras.layers.LeakyReLU(negative_slope=0.1),
        lambda: keras.layers.PReLU(
            alpha_initializer=keras.initializers.RandomUniform(0.1, 0.5)
        ),
    ],
    ids=["relu", "activation_gelu", "leaky_relu", "prelu"],
)
def test_conv_batch_norm_activation_block(activation_layer):
    conv = keras.layers.Conv2D(3, 2, use_bias=False)
    batch_norm = keras.layers.BatchNormalization(
        gamma_initializer=keras.initializers.RandomUniform(0.5, 2.0),
        moving_variance_initializer=keras.initializers.RandomUniform(0.2, 3.0),
        moving_mean_initializer=keras.initializers.RandomNormal(),
    )
    activation = activation_layer()
    inputs = keras.Input((4, 4, 2))
    features = activation(batch_norm(conv(inputs)))
    outputs = keras.layers.Dense(1)(keras.layers.Flatten()(features))
    model = keras_dreg.DREGRegularizedModel(inputs, outputs, lam=LAM)
    [site] = model.dreg_layers
    assert site.layer is conv
    assert site.batch_norm is batch_norm
    assert site.activation_layer is activation

    def block(h):
        return activation(batch_norm(conv(h), training=False))

    x = _batch((4, 4, 2))
    expected = LAM * _jacobian_norm(block, x) / 9
    np.testing.assert_allclose(_dreg_of(model, conv.name, x), expected, 1e-5)


def test_dense_then_activation_layer():
    dense = keras.layers.Dense(5)
    activation = keras.layers.Activation("tanh")
    inputs = keras.Input((4,))
    outputs = keras.layers.Dense(1)(activation(dense(inputs)))
    model = keras_dreg.DREGRegularizedModel(inputs, outputs, lam=LAM)
    x = _batch((4,))
    expected = LAM * _jacobian_norm(lambda h: activation(dense(h)), x)
    np.testing.assert_allclose(_dreg_of(model, dense.name, x), expected, 1e-5)


def test_stop_gradient_derivative_keeps_the_value():
    inputs = keras.Input((3,))
    outputs = keras.layers.Dense(4, activation="gelu")(inputs)
    kwargs = dict(lam=LAM)
    model = keras_dreg.DREGRegularizedModel(inputs, outputs, **kwargs)
    stopped = keras_dreg.wrap(model, stop_gradient_derivative=True, **kwargs)
    x = _batch((3,))
    full, full_grads = autodiff.value_and_gradients(
        model, lambda: model.dreg_penalty(x)
    )
    value, grads = autodiff.value_and_gradients(
        stopped, lambda: stopped.dreg_penalty(x)
    )
    np.testing.assert_allclose(value, full, 1e-6)
    # The bias only reaches the penalty through phi'(z).
    np.testing.assert_allclose(grads[1], 0.0, atol=1e-12)
    assert np.abs(full_grads[1]).max() > 1e-4


# Convolutions whose taps land on padding at some output positions:
# called directly with `input_shape`, the layer term must still be
# ||J||_F^2 / (number of output positions), batch-mean.
L = keras.layers
POSITION_CASES = {
    # name: (layer factory, input shape, activation)
    "conv1d_same_odd": (lambda: L.Conv1D(3, 3, padding="same"), (7, 2)),
    "conv1d_same_even_stride2": (
        lambda: L.Conv1D(3, 4, strides=2, padding="same"),
        (7, 2),
    ),
    "conv1d_same_dilation2": (
        lambda: L.Conv1D(3, 3, padding="same", dilation_rate=2),
        (7, 2),
    ),
    "conv1d_causal": (lambda: L.Conv1D(3, 3, padding="causal"), (6, 2)),
    "conv1d_causal_dilation2": (
        lambda: L.Conv1D(3, 2, padding="causal", dilation_rate=2),
        (7, 2),
    ),
    "conv2d_same_odd": (lambda: L.Conv2D(3, 3, padding="same"), (5, 5, 2)),
    "conv2d_same_even": (lambda: L.Conv2D(3, 2, padding="same"), (5, 4, 2)),
    "conv2d_same_stride2": (
        lambda: L.Conv2D(3, 3, strides=2, padding="same"),
        (6, 5, 2),
    ),
    "conv2d_same_even_stride2": (
        lambda: L.Conv2D(3, (2, 4), strides=2, padding="same"),
        (5, 6, 2),
    ),
    "conv2d_same_dilation2": (
        lambda: L.Conv2D(2, 3, padding="same", dilation_rate=2),
        (6, 6, 2),
    ),
    "conv2d_same_groups": (
        lambda: L.Conv2D(4, 3, padding="same", groups=2),
        (5, 5, 2),
    ),
    "conv3d_same": (lambda: L.Conv3D(2, 3, padding="same"), (3, 4, 3, 1)),
    "conv3d_same_even_stride2": (
        lambda: L.Conv3D(2, 2, strides=2, padding="same"),
        (3, 3, 4, 1),
    ),
    "conv1d_transpose_valid": (lambda: L.Conv1DTranspose(3, 3), (4, 2)),
    "conv1d_transpose_stride2_same": (
        lambda: L.Conv1DTranspose(3, 3, strides=2, padding="same"),
        (4, 2),
    ),
    "conv1d_transpose_stride2_valid": (
        lambda: L.Conv1DTranspose(3, 2, strides=2),
        (4, 2),
    ),
    "conv1d_transpose_output_padding": (
        lambda: L.Conv1DTranspose(3, 3, strides=2, output_padding=1),
        (4, 2),
    ),
    "conv1d_transpose_dilation2": (
        lambda: L.Conv1DTranspose(2, 3, dilation_rate=2),
        (4, 2),
    ),
    "conv2d_transpose_valid": (lambda: L.Conv2DTranspose(2, 3), (3, 3, 2)),
    "conv2d_transpose_stride2_same": (
        lambda: L.Conv2DTranspose(2, 3, strides=2, padding="same"),
        (3, 3, 2),
    ),
    "conv2d_transpose_stride2_valid": (
        lambda: L.Conv2DTranspose(2, 3, strides=2),
        (3, 3, 2),
    ),
    "conv2d_transpose_output_padding": (
        lambda: L.Conv2DTranspose(
            2, 3, strides=2, padding="same", output_padding=(1, 0)
        ),
        (3, 3, 2),
    ),
    "conv3d_transpose_valid": (
        lambda: L.Conv3DTranspose(2, 2),
        (2, 2, 2, 1),
    ),
    "conv3d_transpose_stride2_same": (
        lambda: L.Conv3DTranspose(2, 3, strides=2, padding="same"),
        (2, 2, 2, 1),
    ),
    "depthwise_conv1d_same_stride2": (
        lambda: L.DepthwiseConv1D(
            3, strides=2, padding="same", depth_multiplier=2
        ),
        (7, 2),
    ),
    "depthwise_conv2d_same_stride2": (
        lambda: L.DepthwiseConv2D(
            3, strides=2, padding="same", depth_multiplier=2
        ),
        (5, 5, 2),
    ),
    "separable_conv1d_same": (
        lambda: L.SeparableConv1D(3, 3, padding="same", depth_multiplier=2),
        (6, 2),
    ),
    "separable_conv2d_same": (
        lambda: L.SeparableConv2D(3, (2, 3), padding="same"),
        (5, 5, 2),
    ),
    "separable_conv2d_same_stride2": (
        lambda: L.SeparableConv2D(2, 3, strides=2, padding="same"),
        (5, 5, 2),
    ),
    "conv1d_causal_channels_first": (
        lambda: L.Conv1D(3, 3, padding="causal", data_format="channels_first"),
        (2, 6),
    ),
    "conv2d_same_stride2_channels_first": (
        lambda: L.Conv2D(
            3, 3, strides=2, padding="same", data_format="channels_first"
        ),
        (2, 5, 5),
    ),
    "conv2d_transpose_stride2_same_channels_first": (
        lambda: L.Conv2DTranspose(
            2, 3, strides=2, padding="same", data_format="channels_first"
        ),
        (2, 3, 3),
    ),
    "depthwise_conv2d_same_channels_first": (
        lambda: L.DepthwiseConv2D(
            3, padding="same", depth_multiplier=2, data_format="channels_first"
        ),
        (2, 4, 4),
    ),
    "separable_conv1d_same_channels_first": (
        lambda: L.SeparableConv1D(
            3, 3, padding="same", data_format="channels_first"
        ),
        (2, 6),
    ),
}
ACTIVATIONS = ("gelu", "tanh", "silu", "softplus", "sigmoid")


def _position_case(case):
    """The layer (no activation), an activation's name and a batch."""
    make_layer, shape = POSITION_CASES[case]
    layer = make_layer()
    activation = ACTIVATIONS[sorted(POSITION_CASES).index(case) % 5]
    x = _batch(shape)
    layer.build((None,) + shape)
    return layer, activation, x


def _positions(layer, z):
    spatial = z.shape[2:] if penalty.unit_axis(layer) == 1 else z.shape[1:-1]
    return int(np.prod(spatial))


@pytest.mark.parametrize("closed_form", [True, False], ids=["phi2", "autodiff"])
@pytest.mark.parametrize("case", sorted(POSITION_CASES))
def test_padded_and_transposed_convs_equal_autodiff_jacobian_norm(
    case, closed_form
):
    layer, activation, x = _position_case(case)
    info = describe_activation(activation)
    assert penalty.needs_input_shape(layer)
    z = layer(x)
    term = penalty.layer_penalty(
        layer,
        z,
        info.derivative,
        second_derivative=info.second_derivative if closed_form else None,
        input_shape=x.shape,
    )
    block = keras.activations.get(activation)
    expected = _jacobian_norm(lambda h: block(layer(h)), x) / _positions(
        layer, z
    )
    np.testing.assert_allclose(keras.ops.convert_to_numpy(term), expected, 1e-5)


def test_padded_conv_batch_norm_activation_block():
    conv = keras.layers.Conv2D(3, 3, strides=2, padding="same", use_bias=False)
    batch_norm = keras.layers.BatchNormalization(
        gamma_initializer=keras.initializers.RandomUniform(0.5, 2.0),
        moving_variance_initializer=keras.initializers.RandomUniform(0.2, 3.0),
        moving_mean_initializer=keras.initializers.RandomNormal(),
    )
    activation = keras.layers.Activation("gelu")
    x = _batch((5, 6, 2))
    z = conv(x)
    normalized = batch_norm(z, training=False)
    scale = penalty.batch_norm_scale(batch_norm, z, training=False)
    term = penalty.layer_penalty(
        conv,
        normalized,
        describe_activation("gelu").derivative,
        unit_scale=scale,
        input_shape=x.shape,
    )

    def block(h):
        return activation(batch_norm(conv(h), training=False))

    expected = _jacobian_norm(block, x) / 9
    np.testing.assert_allclose(keras.ops.convert_to_numpy(term), expected, 1e-5)


def test_linear_conv_transpose_counts_output_positions():
    """Identity activation: every input position reaches every tap, so
    `||J||_F^2 = inputs * ||W||^2`; the term divides it by the number of
    output positions (5 x 5 here), not of input positions."""
    layer = keras.layers.Conv2DTranspose(2, 3)
    x = _batch((3, 3, 2))
    z = layer(x)
    term = penalty.layer_penalty(
        layer, z, keras.ops.ones_like, input_shape=x.shape
    )
    kernel = keras.ops.convert_to_numpy(layer.kernel).astype("float64")
    expected = 9 * np.sum(np.square(kernel)) / 25
    np.testing.assert_allclose(keras.ops.convert_to_numpy(term), expected, 1e-5)
    np.testing.assert_allclose(expected, _jacobian_norm(layer, x) / 25, 1e-6)


def test_needs_input_shape_only_where_norms_vary_by_position():
    assert penalty.needs_input_shape(L.Conv2D(2, 3, padding="same"))
    assert penalty.needs_input_shape(L.Conv1D(2, 2, padding="causal"))
    assert penalty.needs_input_shape(L.Conv2DTranspose(2, 3))
    assert penalty.needs_input_shape(L.DepthwiseConv1D(3, padding="same"))
    assert penalty.needs_input_shape(L.SeparableConv2D(2, 3, padding="same"))
    assert not penalty.needs_input_shape(L.Conv2D(2, 3, strides=2))
    assert not penalty.needs_input_shape(L.Conv2D(2, 1, padding="same"))
    assert not penalty.needs_input_shape(L.Dense(2))
    assert not penalty.needs_input_shape(L.EinsumDense("ab,bc->ac", 2))


def test_valid_conv_keeps_one_norm_per_unit():
    layer = L.Conv1D(3, 2, strides=2, activation="tanh")
    x = _batch((7, 2))
    z = layer(x)
    derivative = describe_activation("tanh").derivative
    with_shape = penalty.layer_penalty(
        layer, z, derivative, input_shape=x.shape
    )
    without = penalty.layer_penalty(layer, z, derivative)
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(with_shape),
        keras.ops.convert_to_numpy(without),
        rtol=0,
    )


@pytest.mark.parametrize(
    "input_shape", [None, (None, None, 2)], ids=["missing", "no_length"]
)
def test_position_dependent_layer_without_input_shape_raises(input_shape):
    layer = L.Conv1D(3, 3, padding="same", name="padded")
    x = _batch((6, 2))
    z = layer(x)
    with pytest.raises(ValueError, match="'padded'.*input_shape"):
        penalty.layer_penalty(
            layer, z, keras.ops.ones_like, input_shape=input_shape
        )


# Gradients: the layer term w.r.t. kernel and bias against central finite
# differences of a float64 reference, ||J||_F^2 from the layer's own
# linear map, assembled from its response to one-hot kernels and inputs.
GRADIENT_CASES = (
    "conv1d_same_even_stride2",
    "conv1d_causal_dilation2",
    "conv1d_transpose_output_padding",
    "conv2d_transpose_stride2_same",
    "depthwise_conv1d_same_stride2",
)


def _linear_maps(layer, x):
    """`A[e]`: the matrix (outputs x inputs) of the layer's linear map
    when its kernel is the `e`-th one-hot kernel, bias excluded."""
    config = layer.get_config() | {"use_bias": False, "activation": None}
    probe = type(layer).from_config(config)
    probe.build(x.shape)
    inputs = np.eye(x[0].size, dtype="float32").reshape((-1,) + x.shape[1:])
    kernel_shape = tuple(probe.kernel.shape)
    maps = []
    for e in np.eye(int(np.prod(kernel_shape)), dtype="float32"):
        probe.kernel.assign(e.reshape(kernel_shape))
        columns = keras.ops.convert_to_numpy(probe(inputs))
        maps.append(columns.reshape(len(inputs), -1).T)
    return np.stack(maps).astype("float64")


def _reference_term(maps, kernel, bias, x, layer, out_shape):
    """Batch-mean `||d tanh(z) / dh||_F^2 / positions`, in float64."""
    jacobian = np.einsum("e,eoi->oi", kernel.ravel(), maps)
    bias_shape = [1] * len(out_shape)
    bias_shape[penalty.unit_axis(layer)] = -1
    bias = np.broadcast_to(bias.reshape(bias_shape), out_shape).ravel()
    z = x.reshape(len(x), -1).astype("float64") @ jacobian.T + bias
    slope = 1.0 - np.tanh(z) ** 2
    row_norms = np.sum(np.square(jacobian), axis=1)
    units = out_shape[penalty.unit_axis(layer)]
    return np.mean(np.sum(slope**2 * row_norms, axis=1)) * units / z.shape[1]


@pytest.mark.parametrize("closed_form", [True, False], ids=["phi2", "autodiff"])
@pytest.mark.parametrize("case", GRADIENT_CASES)
def test_padded_and_transposed_gradients_match_finite_differences(
    case, closed_form
):
    make_layer, shape = POSITION_CASES[case]
    layer = make_layer()
    x = _batch(shape)
    layer.build(x.shape)
    info = describe_activation("tanh")

    def term():
        return penalty.layer_penalty(
            layer,
            layer(x),
            info.derivative,
            second_derivative=info.second_derivative if closed_form else None,
            input_shape=x.shape,
        )

    _, (kernel_grad, bias_grad) = autodiff.value_and_gradients(layer, term)

    maps = _linear_maps(layer, x)
    kernel = keras.ops.convert_to_numpy(layer.kernel).astype("float64")
    bias = keras.ops.convert_to_numpy(layer.bias).astype("float64")
    out_shape = tuple(layer(x).shape[1:])

    def reference(k, b):
        return _reference_term(maps, k, b, x, layer, out_shape)

    step = 1e-6
    expected = []
    for params, index in [(kernel, 0), (bias, 1)]:
        grad = np.zeros_like(params)
        for i in np.ndindex(params.shape):
            shifted = [kernel.copy(), bias.copy()]
            shifted[index][i] += step
            up = reference(*shifted)
            shifted[index][i] -= 2 * step
            grad[i] = (up - reference(*shifted)) / (2 * step)
        expected.append(grad)
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(term()),
        reference(kernel, bias),
        rtol=1e-5,
    )
    for measured, reference_grad in zip((kernel_grad, bias_grad), expected):
        np.testing.assert_allclose(
            measured,
            reference_grad,
            rtol=0,
            atol=1e-5 * np.max(np.abs(reference_grad)),
        )
