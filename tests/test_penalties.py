"""The comparison penalties equal independent references.

- weight decay: the numpy sum of squared kernels;
- IGPen: a float64 finite-difference input gradient of a numpy copy of
  the network, for the value and (differentiating that again) for its
  gradient with respect to the weights; plus a fixture shared by the
  three backends;
- Jacobian: each backend's autodiff Jacobian (exact mode), and the mean
  of many random projections (within 3 standard errors).

`python -m tests.test_penalties` (any backend) rewrites the IGPen
fixture, `tests/fixtures/igpen_parity.npz`.
"""

import functools
import os

import keras
import numpy as np
import pytest

import keras_dreg
from keras_dreg import capture
from keras_dreg import interception
from keras_dreg.penalties import Batch
from keras_dreg.penalties import InputGradientPenalty
from keras_dreg.penalties import JacobianPenalty
from keras_dreg.penalties import WeightDecay
from tests import autodiff
from tests.conftest import LOSS
from tests.conftest import to_numpy

FIXTURE = os.path.join(
    os.path.dirname(__file__), "fixtures", "igpen_parity.npz"
)


def _wrapped(model, penalty):
    wrapped = keras_dreg.PenalizedWrapper(model, penalties=[penalty])
    wrapped.compile(optimizer=keras.optimizers.SGD(0.0), loss=LOSS)
    return wrapped


def _tanh_mlp(inputs=3, hidden=4, classes=3, seed=7):
    """Dense-tanh-Dense with fixed weights, a batch and labels."""
    rng = np.random.default_rng(seed)
    model = keras.Sequential(
        [
            keras.Input((inputs,)),
            keras.layers.Dense(hidden, activation="tanh"),
            keras.layers.Dense(classes),
        ]
    )
    model.set_weights(
        [rng.normal(scale=0.8, size=w.shape) for w in model.get_weights()]
    )
    x = rng.normal(size=(5, inputs)).astype("float32")
    y = rng.integers(0, classes, size=(5,))
    return model, x, y


# Float64 numpy references for the tanh MLP.


def _per_example_loss(params, x, y):
    kernel1, bias1, kernel2, bias2 = params
    logits = np.tanh(x @ kernel1 + bias1) @ kernel2 + bias2
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_z = np.log(np.exp(shifted).sum(axis=1))
    return log_z - shifted[np.arange(len(y)), y]


def _fd_input_gradient(params, x, y, h=1e-5):
    grad = np.zeros_like(x)
    for d in range(x.shape[1]):
        step = np.zeros_like(x)
        step[:, d] = h
        grad[:, d] = (
            _per_example_loss(params, x + step, y)
            - _per_example_loss(params, x - step, y)
        ) / (2 * h)
    return grad


def _reference_igpen(params, x, y, lam):
    grad = _fd_input_gradient(params, x, y)
    return lam * np.mean(np.sum(grad**2, axis=1))


def _reference_igpen_gradients(params, x, y, lam, h=1e-4):
    grads = []
    for p in params:
        grad = np.zeros_like(p)
        for index in np.ndindex(p.shape):
            saved = p[index]
            p[index] = saved + h
            upper = _reference_igpen(params, x, y, lam)
            p[index] = saved - h
            lower = _reference_igpen(params, x, y, lam)
            p[index] = saved
            grad[index] = (upper - lower) / (2 * h)
        grads.append(grad)
    return grads


def test_weight_decay_is_lam_times_the_sum_of_squared_kernels():
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((6, 6, 2)),
            keras.layers.Conv2D(3, 3, activation="gelu"),
            keras.layers.BatchNormalization(),
            keras.layers.DepthwiseConv2D(2),
            keras.layers.Flatten(),
            keras.layers.Dense(4),
        ]
    )
    kernels = [
        v for v in model.trainable_variables if v.name.endswith("kernel")
    ]
    assert len(kernels) == 3  # conv, depthwise, dense: no bias, no BN
    expected = 0.3 * sum(
        np.sum(v.numpy().astype(np.float64) ** 2) for v in kernels
    )
    wrapped = _wrapped(model, WeightDecay(0.3))
    value = to_numpy(wrapped.penalties[0](wrapped, Batch(None, None, None)))
    np.testing.assert_allclose(value, expected, rtol=1e-6)
    x = np.zeros((2, 6, 6, 2), "float32")
    logs = wrapped.train_on_batch(x, np.zeros(2), return_dict=True)
    np.testing.assert_allclose(
        logs["weight_decay_penalty"], expected, rtol=1e-6
    )


def test_weight_decay_default_lam():
    assert WeightDecay().lam == 2.5e-4


def test_igpen_equals_a_finite_difference_reference():
    model, x, y = _tanh_mlp()
    params = [w.astype("float64") for w in model.get_weights()]
    lam = 0.7
    wrapped = _wrapped(model, InputGradientPenalty(lam))
    penalty = wrapped.penalties[0]
    value, grads = autodiff.value_and_gradients(
        wrapped, lambda: penalty(wrapped, Batch(x, y, None))
    )
    expected = _reference_igpen(params, x.astype("float64"), y, lam)
    np.testing.assert_allclose(value, expected, rtol=1e-4)
    # The penalty's gradient w.r.t. the weights: double backpropagation.
    expected_grads = _reference_igpen_gradients(
        params, x.astype("float64"), y, lam
    )
    for grad, ref in zip(grads, expected_grads):
        np.testing.assert_allclose(
            grad, ref, rtol=0, atol=1e-4 * np.max(np.abs(ref))
        )


def test_igpen_squared_norms_are_per_example():
    model, x, y = _tanh_mlp()
    params = [w.astype("float64") for w in model.get_weights()]
    wrapped = _wrapped(model, InputGradientPenalty())
    norms = to_numpy(wrapped.penalties[0].squared_norms(wrapped, x, y))
    reference = _fd_input_gradient(params, x.astype("float64"), y)
    np.testing.assert_allclose(norms, np.sum(reference**2, axis=1), rtol=1e-4)


PER_EXAMPLE_LOSS = functools.partial(
    keras.losses.sparse_categorical_crossentropy, from_logits=True
)


@pytest.mark.parametrize(
    "loss",
    [LOSS, keras.saving.serialize_keras_object(LOSS), PER_EXAMPLE_LOSS],
    ids=["loss", "config", "per_example_function"],
)
def test_igpen_with_its_own_loss_needs_no_compiled_model(loss):
    model, x, y = _tanh_mlp()
    compiled = _wrapped(model, InputGradientPenalty())
    expected = compiled.penalties[0].squared_norms(compiled, x, y)
    penalty = InputGradientPenalty(loss=loss)
    uncompiled = keras_dreg.PenalizedWrapper(model, penalties=[penalty])
    norms = penalty.squared_norms(uncompiled, x, y)
    np.testing.assert_allclose(to_numpy(norms), to_numpy(expected), rtol=1e-6)
    if loss is not PER_EXAMPLE_LOSS:
        config = keras.saving.serialize_keras_object(penalty)
        restored = keras.saving.deserialize_keras_object(config)
        np.testing.assert_allclose(
            to_numpy(restored.squared_norms(uncompiled, x, y)), to_numpy(norms)
        )


def test_igpen_without_a_loss_raises():
    model, x, y = _tanh_mlp()
    uncompiled = keras_dreg.PenalizedWrapper(
        model, penalties=[InputGradientPenalty()]
    )
    with pytest.raises(ValueError, match="compile"):
        uncompiled.penalties[0].squared_norms(uncompiled, x, y)


def igpen_parity_case():
    """The model, batch and measure behind the IGPen fixture."""
    model, x, y = _tanh_mlp(inputs=4, hidden=6, classes=3, seed=11)
    wrapped = _wrapped(model, InputGradientPenalty(0.5))
    penalty = wrapped.penalties[0]
    value, grads = autodiff.value_and_gradients(
        wrapped, lambda: penalty(wrapped, Batch(x, y, None))
    )
    return {"penalty": np.float32(value)} | {
        f"grad_{i}": g for i, g in enumerate(grads)
    }


def test_igpen_matches_the_cross_backend_fixture():
    measured = igpen_parity_case()
    with np.load(FIXTURE) as fixture:
        expected = {k: fixture[k] for k in fixture.files if k != "backend"}
    assert sorted(measured) == sorted(expected)
    for key, value in expected.items():
        np.testing.assert_allclose(
            measured[key],
            value,
            rtol=0,
            atol=1e-5 * np.max(np.abs(value)),
            err_msg=key,
        )


def _token_model():
    keras.utils.set_random_seed(3)
    ids = keras.Input((5,), dtype="int32")
    embedded = keras.layers.Embedding(11, 4, name="embedding")(ids)
    tail = keras.Sequential(
        [
            keras.Input((5, 4)),
            keras.layers.Conv1D(3, 2, activation="gelu"),
            keras.layers.GlobalAveragePooling1D(),
            keras.layers.Dense(3),
        ]
    )
    model = keras.Model(ids, tail(embedded))
    tokens = np.random.default_rng(4).integers(0, 11, size=(6, 5))
    return model, tail, tokens.astype("int32")


@pytest.mark.parametrize(
    "penalty_class, options",
    [(InputGradientPenalty, {}), (JacobianPenalty, {"exact": True})],
)
def test_token_inputs_differentiate_the_embedding_output(
    penalty_class, options
):
    model, tail, tokens = _token_model()
    y = np.arange(6) % 3
    embedded = model.get_layer("embedding")(tokens)
    wrapped = _wrapped(model, penalty_class(**options))
    # The same penalty of the layers after the embedding, on float input.
    wrapped_tail = _wrapped(tail, penalty_class(**options))
    if penalty_class is InputGradientPenalty:
        norms = wrapped.penalties[0].squared_norms(wrapped, tokens, y)
        expected = wrapped_tail.penalties[0].squared_norms(
            wrapped_tail, embedded, y
        )
    else:
        norms = wrapped.penalties[0].squared_norms(wrapped, tokens)
        expected = wrapped_tail.penalties[0].squared_norms(
            wrapped_tail, embedded
        )
    assert np.all(to_numpy(expected) > 0)
    np.testing.assert_allclose(to_numpy(norms), to_numpy(expected), rtol=1e-5)


def test_integer_inputs_without_embedding_raise():
    inputs = keras.Input((3,), dtype="int32")
    outputs = keras.layers.Dense(2)(keras.ops.cast(inputs, "float32"))
    wrapped = _wrapped(keras.Model(inputs, outputs), InputGradientPenalty())
    x = np.ones((2, 3), "int32")
    with pytest.raises(ValueError, match="Embedding"):
        wrapped.penalties[0](wrapped, Batch(x, np.zeros(2), None))


def _gelu_mlp():
    keras.utils.set_random_seed(5)
    return keras.Sequential(
        [
            keras.Input((5,)),
            keras.layers.Dense(8, activation="gelu"),
            keras.layers.Dense(8, activation="tanh"),
            keras.layers.Dense(4),
        ]
    )


def _autodiff_jacobian_norms(model, x):
    """`||d f(x_i) / d x_i||_F^2` per example, from the backend's autodiff."""
    return np.array(
        [
            np.sum(autodiff.jacobian(lambda xi: model(xi[None])[0], xi) ** 2)
            for xi in x
        ]
    )


def test_exact_jacobian_matches_autodiff():
    model = _gelu_mlp()
    x = np.random.default_rng(6).normal(size=(4, 5)).astype("float32")
    expected = _autodiff_jacobian_norms(model, x)
    wrapped = _wrapped(model, JacobianPenalty(lam=0.2, exact=True))
    penalty = wrapped.penalties[0]
    norms = to_numpy(penalty.squared_norms(wrapped, x))
    np.testing.assert_allclose(norms, expected, rtol=1e-5)
    value = to_numpy(penalty(wrapped, Batch(x, None, None)))
    np.testing.assert_allclose(value, 0.2 * np.mean(expected), rtol=1e-5)


@pytest.mark.parametrize("num_projections", [1, 3])
def test_projected_jacobian_is_unbiased(num_projections):
    model = _gelu_mlp()
    x = np.random.default_rng(8).normal(size=(1, 5)).astype("float32")
    (expected,) = _autodiff_jacobian_norms(model, x)
    penalty = JacobianPenalty(num_projections=num_projections, seed=1)
    wrapped = _wrapped(model, penalty)
    # Each row of the repeated batch draws its own projections.
    draws = to_numpy(penalty.squared_norms(wrapped, np.repeat(x, 4000, 0)))
    assert np.std(draws) > 0.05 * expected  # they are random
    standard_error = np.std(draws) / np.sqrt(len(draws))
    assert abs(np.mean(draws) - expected) < 3 * standard_error


def _attention_model():
    keras.utils.set_random_seed(4)
    inputs = keras.Input((3, 4))
    x = keras.layers.MultiHeadAttention(2, 2)(inputs, inputs)
    outputs = keras.layers.Dense(2)(keras.layers.Flatten()(x))
    return keras.Model(inputs, outputs)


def test_exact_jacobian_through_attention_matches_autodiff():
    """Attention is differentiated twice; torch's fused CPU and GPU
    attention kernels cannot be, its math kernel can."""
    model = _attention_model()
    x = np.random.default_rng(3).normal(size=(4, 3, 4)).astype("float32")
    expected = _autodiff_jacobian_norms(model, x)
    wrapped = _wrapped(model, JacobianPenalty(exact=True))
    norms = to_numpy(wrapped.penalties[0].squared_norms(wrapped, x))
    np.testing.assert_allclose(norms, expected, rtol=1e-5)
    logs = wrapped.train_on_batch(x, np.zeros(4), return_dict=True)
    assert np.isfinite(logs["loss"]) and logs["jacobian_penalty"] > 0


def test_paused_capture_records_nothing():
    model = _gelu_mlp()
    recorder = capture.ActivationCapture(capture.find_regularized_layers(model))
    x = np.ones((2, 5), "float32")
    with recorder.recording() as records:
        model(x, training=True)
        with interception.paused():
            model(x, training=True)
        model(x, training=True)
        assert [len(site_records) for site_records in records] == [2, 2]


class SubclassedPenalized(keras_dreg.PenalizedModel):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.hidden = keras.layers.Dense(8, activation="gelu")
        self.head = keras.layers.Dense(4)

    def call(self, x):
        return self.head(self.hidden(x))


def _penalized(form, penalty):
    """A `PenalizedModel` of the given form around the same GELU MLP."""
    if form == "subclassed":
        keras.utils.set_random_seed(5)
        return SubclassedPenalized(penalties=[penalty])
    model = _gelu_mlp()
    if form == "wrapped":
        return keras_dreg.PenalizedWrapper(model, penalties=[penalty])
    inputs = keras.Input((5,))
    return keras_dreg.PenalizedModel(inputs, model(inputs), penalties=[penalty])


def _seed(penalty):
    return tuple(to_numpy(penalty.seed_generator.state.value))


def _penalties_and_seeds(model, penalty, jit_compile, steps):
    """The logged penalty of each of `steps` steps (learning rate 0), and
    the penalty's seed before them and after each."""
    model.compile(
        optimizer=keras.optimizers.SGD(0.0), loss=LOSS, jit_compile=jit_compile
    )
    x = np.random.default_rng(9).normal(size=(8, 5)).astype("float32")
    values, seeds = [], [_seed(penalty)]
    for _ in range(steps):
        logs = model.train_on_batch(x, np.zeros(8), return_dict=True)
        values.append(logs["jacobian_penalty"])
        seeds.append(_seed(penalty))
    return values, seeds


JIT = {"tensorflow": [False, True], "jax": [True], "torch": [False]}[
    keras.backend.backend()
]


@pytest.mark.parametrize("jit_compile", JIT)
@pytest.mark.parametrize("form", ["functional", "subclassed", "wrapped"])
def test_jacobian_in_each_form_of_model(form, jit_compile):
    """The model tracks the penalty's seed: new projections each step."""
    penalty = JacobianPenalty(seed=2)
    model = _penalized(form, penalty)
    values, seeds = _penalties_and_seeds(model, penalty, jit_compile, steps=3)
    assert all(v > 0 for v in values) and len(set(values)) == 3
    assert len(set(seeds)) == 4
    assert any(v is penalty.seed_generator.state for v in model.variables)


@pytest.mark.parametrize("jit_compile", JIT)
def test_jacobian_every_n_steps_advances_the_seed_on_its_steps(jit_compile):
    """`[p, 0, p', 0]`: the seed advances on the penalized steps only."""
    penalty = JacobianPenalty(seed=3, every_n_steps=2)
    values, seeds = _penalties_and_seeds(
        _penalized("wrapped", penalty), penalty, jit_compile, steps=4
    )
    assert values[0] > 0 and values[2] > 0 and values[0] != values[2]
    assert values[1] == 0 and values[3] == 0
    initial, first, second = seeds[0], seeds[1], seeds[3]
    assert len({initial, first, second}) == 3
    assert seeds[2] == first and seeds[4] == second


if __name__ == "__main__":
    np.savez(FIXTURE, backend=keras.backend.backend(), **igpen_parity_case())
    print(f"wrote {FIXTURE} on {keras.backend.backend()}")
