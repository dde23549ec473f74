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


def test_conv_transpose_linear_stride_one():
    """For a transposed convolution with stride 1 and identity
    activation, every input position reaches every kernel tap, so the
    penalty equals ||J||_F^2 divided by the number of input positions."""
    layer = keras.layers.Conv2DTranspose(2, 3)
    inputs = keras.Input((3, 3, 2))
    outputs = keras.layers.Dense(1)(keras.layers.Flatten()(layer(inputs)))
    model = keras_dreg.DREGRegularizedModel(
        inputs, outputs, lam=LAM, include=[layer.name], include_linear=True
    )
    x = _batch((3, 3, 2))
    expected = LAM * _jacobian_norm(layer, x) / 9
    np.testing.assert_allclose(_dreg_of(model, layer.name, x), expected, 1e-5)


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
