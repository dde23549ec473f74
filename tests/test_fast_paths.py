"""The backends' fast paths agree with the `keras.ops` definitions.

Each fast path (`keras_dreg.backend.fast_path`) must give the values and
the gradients (with respect to `z` and to the kernel) of the `keras.ops`
function it replaces, rtol 1e-5, for every activation that has one
(also where the fast joint evaluation defers `phi''` to the penalty's
backward pass, returning the function `phi''`). The
absolute tolerance, 1e-6 on quantities of order 1, covers values near 0:
there the `keras.ops` GELU, `z * 0.5 * (1 + erf(z / sqrt(2)))`, loses
digits to cancellation (for z = -5 it is off by 3e-7), where torch's
fused kernel is accurate.
"""

import keras
import numpy as np
import pytest

from keras_dreg import backend
from keras_dreg import capture
from keras_dreg import derivatives
from keras_dreg import penalty
from tests.conftest import to_numpy

pytestmark = pytest.mark.skipif(
    keras.backend.backend() != "torch", reason="fast paths: PyTorch only"
)

FAST_JOINTS = [derivatives.describe_activation("gelu").value_and_derivatives]
"""The joint evaluations with a PyTorch fast path (the exact GELU's)."""

TOLERANCE = dict(rtol=1e-5, atol=1e-6)


def pre_activations(permuted):
    """`z` over [-9, 9], as a Keras convolution returns it on PyTorch (a
    permuted view) or contiguous."""
    import torch

    rng = np.random.default_rng(0)
    z = torch.tensor(3.0 * rng.normal(size=(8, 5, 7, 6)), dtype=torch.float32)
    z[0, 0, 0, :] = torch.tensor([-9.0, -1.5, 0.0, 2**0.5, 4.0, 9.0])
    return z.permute(0, 2, 3, 1) if permuted else z


def test_fast_paths_are_found_and_can_be_turned_off():
    for joint in FAST_JOINTS:
        assert backend.fast_path(joint) is not None
    assert backend.fast_path(penalty.mean_squared_slope) is not None
    assert backend.fast_path(capture.activation_with_derivatives) is not None
    with backend.fast_paths(False):
        assert backend.fast_path(penalty.mean_squared_slope) is None
    gelu_tanh = derivatives.describe_activation(
        keras.ops.gelu
    ).value_and_derivatives
    assert backend.fast_path(gelu_tanh) is None  # no fused form


@pytest.mark.parametrize("joint", FAST_JOINTS)
@pytest.mark.parametrize("permuted", [True, False])
def test_joint_evaluation_agrees(joint, permuted):
    z = pre_activations(permuted)
    fast = backend.fast_path(joint)(z)
    for got, want in zip(fast, joint(z)):
        if callable(got):  # a deferred phi''
            got = got(z)
        np.testing.assert_allclose(to_numpy(got), to_numpy(want), **TOLERANCE)


@pytest.mark.parametrize("joint", FAST_JOINTS)
@pytest.mark.parametrize("permuted", [True, False])
@pytest.mark.parametrize("axes", [(0, 1, 2), (0,)])
def test_mean_squared_slope_agrees(joint, permuted, axes):
    """The reference on `joint(z)`'s `(phi', phi'')` against the fast
    form on the fast joint's (its `phi''` deferred or not) and on the
    reference's, and the reference on the fast joint's."""
    import torch

    z = pre_activations(permuted)
    _, *evaluated = joint(z)
    _, *fast_evaluated = backend.fast_path(joint)(z)
    upstream = torch.rand((1,) * len(axes) + tuple(z.shape[len(axes) :]))
    reference = penalty.mean_squared_slope
    fast = backend.fast_path(reference)
    results = []
    for mean, (slope, curvature) in [
        (reference, evaluated),
        (fast, fast_evaluated),
        (fast, evaluated),
        (reference, fast_evaluated),
    ]:
        leaf = z.clone().requires_grad_(True)
        value = mean(leaf, slope, curvature, axes)
        (grad,) = torch.autograd.grad(value, [leaf], upstream.expand_as(value))
        results.append((value, grad))
    for result in results[1:]:
        for got, want in zip(result, results[0]):
            np.testing.assert_allclose(
                to_numpy(got), to_numpy(want), **TOLERANCE
            )


@pytest.mark.parametrize("joint", FAST_JOINTS)
@pytest.mark.parametrize("permuted", [True, False])
@pytest.mark.parametrize("axes", [(0, 1, 2), (0,)])
@pytest.mark.parametrize("differentiated", ["both", "activation", "penalty"])
def test_activation_and_penalty_gradients_agree(
    joint, permuted, axes, differentiated
):
    """The fused activation (`capture.activation_with_derivatives`'s
    fast form), whose backward pass also carries the penalty's gradient
    into `z`, against the reference: values, and the gradient into `z`
    of `<u, phi(z)> + <v, mean(phi'(z)^2)>`, of either part alone, or
    both."""
    import torch

    z = pre_activations(permuted)
    rng = np.random.default_rng(2)
    u = torch.tensor(rng.normal(size=z.shape), dtype=torch.float32)
    v = torch.rand((1,) * len(axes) + tuple(z.shape[len(axes) :]))

    def value_and_gradient():
        leaf = z.clone().requires_grad_(True)
        evaluate = backend.fast_path(capture.activation_with_derivatives) or (
            capture.activation_with_derivatives
        )
        output, slope, curvature = evaluate(leaf, joint)
        mean = backend.fast_path(penalty.mean_squared_slope) or (
            penalty.mean_squared_slope
        )
        term = torch.sum(mean(leaf, slope, curvature, axes) * v)
        loss = {
            "both": torch.sum(output * u) + term,
            "activation": torch.sum(output * u),
            "penalty": term,
        }[differentiated]
        (grad,) = torch.autograd.grad(loss, [leaf])
        return output, term, grad

    fast = value_and_gradient()
    with backend.fast_paths(False):
        reference = value_and_gradient()
    for got, want in zip(fast, reference):
        np.testing.assert_allclose(to_numpy(got), to_numpy(want), **TOLERANCE)


def conv_gelu():
    inputs = keras.Input((9, 9, 3))
    x = keras.layers.Conv2D(6, 3, activation="gelu", name="conv")(inputs)
    x = keras.layers.Conv2D(
        4, 3, padding="same", activation="gelu", name="same"
    )(x)
    x = keras.layers.Flatten()(x)
    x = keras.layers.Dense(5, activation="gelu", name="dense")(x)
    return keras.Model(inputs, x)


def penalty_and_gradients(model, x, sample_size):
    """`sum(outputs) + sum of the DREG terms`, its gradient with respect
    to the input, and to each kernel, as DREG trains."""
    import torch

    sites = capture.find_regularized_layers(model)
    recorder = capture.ActivationCapture(sites)
    x = x.clone().requires_grad_(True)
    with recorder.recording() as records:
        outputs = model(x, training=True)
        terms = [
            penalty.layer_penalty(
                site.layer,
                record.pre_activation,
                site.activation.derivative,
                second_derivative=site.activation.second_derivative,
                evaluated=record.derivatives,
                input_shape=record.input_shape,
                sample_size=sample_size,
            )
            for site, (record,) in zip(sites, records)
        ]
    loss = torch.sum(outputs * 0.1) + sum(terms)
    kernels = [site.layer.kernel.value for site in sites]
    grads = torch.autograd.grad(loss, [x, *kernels])
    return [loss, *terms, *grads]


@pytest.mark.parametrize("sample_size", [None, 3])
def test_layer_penalty_and_gradients_agree_end_to_end(sample_size):
    import torch

    keras.utils.set_random_seed(0)
    model = conv_gelu()
    x = torch.tensor(
        2.0 * np.random.default_rng(1).normal(size=(4, 9, 9, 3)),
        dtype=torch.float32,
    )
    fast = penalty_and_gradients(model, x, sample_size)
    with backend.fast_paths(False):
        reference = penalty_and_gradients(model, x, sample_size)
    for got, want in zip(fast, reference):
        np.testing.assert_allclose(to_numpy(got), to_numpy(want), **TOLERANCE)
