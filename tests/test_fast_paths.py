"""PyTorch's fast paths agree with the `keras.ops` definitions
(TensorFlow and JAX have none: `tests/test_backend.py`).

Each fast path (`keras_dreg.backend.fast_path`) must give the values and
the gradients (with respect to `z` and to the kernel) of the `keras.ops`
function it replaces, rtol 1e-5, for every activation that has one
(also where the fast joint evaluation defers `phi''` to the penalty's
backward pass, returning the function `phi''`, and where the fused
activation carries the penalty's gradient into `z`). The absolute
tolerance, 1e-6 on quantities of order 1, covers values near 0: there
the `keras.ops` GELU, `z * 0.5 * (1 + erf(z / sqrt(2)))`, loses digits
to cancellation in float32 (for z = -5 it is off by 3e-7). The joint
evaluations are compared with the `keras.ops` forms in float64, as
closely as the float32 reference itself gets to them.
"""

import keras
import numpy as np
import pytest

from keras_dreg import backend
from keras_dreg import capture
from keras_dreg import derivatives
from keras_dreg import penalty
from tests.conftest import to_numpy
from tests.test_backend import FAST_JOINTS

if keras.backend.backend() != "torch":
    pytest.skip(
        "PyTorch's fast paths; TensorFlow and JAX have none "
        "(tests/test_backend.py checks that)",
        allow_module_level=True,
    )

TOLERANCE = dict(rtol=1e-5, atol=1e-6)


def pre_activations(permuted):
    """`z` over [-9, 9]; on PyTorch also as a Keras convolution may
    return it (a permuted view)."""
    rng = np.random.default_rng(0)
    z = 3.0 * rng.normal(size=(8, 5, 7, 6)).astype("float32")
    z[0, 0, 0, :] = [-9.0, -1.5, 0.0, 2**0.5, 4.0, 9.0]
    z = keras.ops.convert_to_tensor(z)
    return keras.ops.transpose(z, (0, 2, 3, 1)) if permuted else z


def test_under_torch_compile_only_the_activation_has_a_fast_path(
    monkeypatch,
):
    import torch

    from keras_dreg.backend import torch as torch_backend

    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    assert backend.fast_path(capture.activation_with_derivatives) is (
        torch_backend.compiled_activation_with_derivatives
    )
    for reference in (penalty.mean_squared_slope, *FAST_JOINTS):
        assert backend.fast_path(reference) is None


@pytest.mark.parametrize("permuted", [True, False])
def test_joint_evaluations_agree(permuted):
    z = pre_activations(permuted)
    exact = keras.ops.cast(z, "float64")
    for joint in FAST_JOINTS:
        fast = backend.fast_path(joint)(z)
        for got, want, own in zip(fast, joint(exact), joint(z)):
            if callable(got):  # a deferred phi''
                got = got(z)
            want = to_numpy(want)
            # About as close to the float64 values as the float32
            # reference (twice its own error: cancellation near phi = 0 or
            # phi' = 0), and within 2e-6 (some 16 float32 steps at 1).
            own_error = np.max(np.abs(to_numpy(own) - want))
            np.testing.assert_allclose(
                to_numpy(got),
                want,
                rtol=1e-5,
                atol=max(2e-6, 2 * own_error),
                err_msg=repr(joint),
            )


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
@pytest.mark.parametrize("rows", [None, 3])
@pytest.mark.parametrize("compiled", [False, True])
def test_activation_and_penalty_gradients_agree(
    joint, permuted, axes, differentiated, rows, compiled
):
    """The fused activation (`capture.activation_with_derivatives`'s
    fast form), whose backward pass also carries the penalty's gradient
    into `z`, against the reference: values, and the gradient into `z`
    of `<u, phi(z)> + <v, mean(phi'(z)^2)>`, of either part alone, or
    both; the penalty on every example or (`rows`, as `sample_size`
    cuts it) on the first 3 of 8. `compiled`: the forms `torch.compile`
    traces (the activation's, with the reference penalty), run eagerly."""
    import torch

    from keras_dreg.backend import torch as torch_backend

    z = pre_activations(permuted)
    rng = np.random.default_rng(2)
    u = torch.tensor(rng.normal(size=z.shape), dtype=torch.float32)
    v = torch.rand((1,) * len(axes) + tuple(z.shape[len(axes) :]))

    def value_and_gradient():
        leaf = z.clone().requires_grad_(True)
        evaluate = backend.fast_path(capture.activation_with_derivatives) or (
            capture.activation_with_derivatives
        )
        mean = backend.fast_path(penalty.mean_squared_slope) or (
            penalty.mean_squared_slope
        )
        if compiled and evaluate is not capture.activation_with_derivatives:
            # What torch.compile traces: the activation's form only.
            evaluate = torch_backend.compiled_activation_with_derivatives
            mean = penalty.mean_squared_slope
        output, slope, curvature = evaluate(leaf, joint, rows)
        sample = leaf if rows is None else leaf[:rows]
        term = torch.sum(mean(sample, slope, curvature, axes) * v)
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


def penalty_and_gradients(model, x, sample_size, captured_rows):
    """`sum(outputs) + sum of the DREG terms`, its gradient with respect
    to the input, and to each kernel, as DREG trains (there the capture
    evaluates `phi'` on `captured_rows = sample_size` examples)."""
    sites = capture.find_regularized_layers(model)
    recorder = capture.ActivationCapture(sites, sample_size=captured_rows)
    kernels = [site.layer.kernel for site in sites]

    def loss_and_terms(x):
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
        return keras.ops.sum(outputs * 0.1) + sum(terms), terms

    import torch

    x = x.clone().requires_grad_(True)
    loss, terms = loss_and_terms(x)
    values = [kernel.value for kernel in kernels]
    grads = torch.autograd.grad(loss, [x, *values])
    return [loss, *terms, *grads]


@pytest.mark.parametrize(
    "sample_size, captured_rows", [(None, None), (3, 3), (3, None), (4, 4)]
)
def test_layer_penalty_and_gradients_agree_end_to_end(
    sample_size, captured_rows
):
    keras.utils.set_random_seed(0)
    model = conv_gelu()
    x = keras.ops.convert_to_tensor(
        2.0
        * np.random.default_rng(1).normal(size=(4, 9, 9, 3)).astype("float32")
    )
    fast = penalty_and_gradients(model, x, sample_size, captured_rows)
    with backend.fast_paths(False):
        reference = penalty_and_gradients(model, x, sample_size, captured_rows)
    for got, want in zip(fast, reference):
        np.testing.assert_allclose(to_numpy(got), to_numpy(want), **TOLERANCE)


@pytest.mark.parametrize("permuted", [True, False])
def test_the_token_stands_for_its_z_or_its_first_rows_only(permuted):
    """The penalty's gradient takes the activation's token only for the
    `z` it was evaluated on, or (`sample_size`) its first rows as
    `layer_penalty` cuts them; any other tensor takes the fallback."""
    from keras_dreg.backend import torch as torch_backend

    joint = derivatives.describe_activation("gelu").value_and_derivatives
    z = pre_activations(permuted).requires_grad_(True)
    _, _, whole = torch_backend.activation_with_derivatives(z, joint)
    _, _, first = torch_backend.activation_with_derivatives(z, joint, 3)
    assert whole.stands_for(z)
    assert first.stands_for(z[:3])
    for other in (z[:3], z[1:4], z.detach()[:3], z.clone()):
        assert not whole.stands_for(other)
    for other in (z, z[1:4], z[:2], z.detach()[:3], z.clone()[:3]):
        assert not first.stands_for(other)
