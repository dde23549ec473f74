"""Bad input gets one clear error or warning."""

import warnings

import keras
import numpy as np
import pytest

import keras_dreg


def _inputs_outputs(activation="gelu", head_activation=None):
    inputs = keras.Input((4,))
    x = keras.layers.Dense(8, activation=activation, name="hidden")(inputs)
    outputs = keras.layers.Dense(3, activation=head_activation, name="head")(x)
    return inputs, outputs


@pytest.mark.parametrize(
    "lam, error, message",
    [
        (-1.0, ValueError, "finite and >= 0"),
        (float("nan"), ValueError, "finite and >= 0"),
        (float("inf"), ValueError, "finite and >= 0"),
        ("0.01", TypeError, "real number"),
        ([0.1], TypeError, "real number"),
        (True, TypeError, "real number"),
    ],
)
def test_bad_lam(lam, error, message):
    with pytest.raises(error, match=message):
        keras_dreg.DREGRegularizedModel(*_inputs_outputs(), lam=lam)


@pytest.mark.parametrize(
    "options, error, message",
    [
        ({"every_n_steps": 0}, ValueError, "every_n_steps"),
        ({"every_n_steps": 1.5}, TypeError, "every_n_steps"),
        ({"layer_weights": {"hidden": -1.0}}, ValueError, "layer_weights"),
        ({"layer_weights": {"nope": 1.0}}, ValueError, "nope"),
    ],
)
def test_bad_options(options, error, message):
    with pytest.raises(error, match=message):
        keras_dreg.DREGRegularizedModel(*_inputs_outputs(), **options)


def test_model_without_eligible_layer():
    inputs = keras.Input((4,))
    outputs = keras.layers.Dense(2)(keras.layers.Dense(3)(inputs))
    with pytest.raises(ValueError, match="include_linear=True"):
        keras_dreg.DREGRegularizedModel(inputs, outputs)
    model = keras_dreg.DREGRegularizedModel(
        inputs, outputs, include_linear=True
    )
    assert len(model.dreg_layers) == 2


def test_wrap_rejects_a_layer():
    with pytest.raises(TypeError, match="keras.Model"):
        keras_dreg.wrap(keras.layers.Dense(3))


def test_softmax_layers_are_skipped_with_one_warning():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = keras_dreg.DREGRegularizedModel(
            *_inputs_outputs(head_activation="softmax")
        )
    messages = [str(w.message) for w in caught if "softmax" in str(w.message)]
    assert len(messages) == 1
    assert "head" in messages[0]
    assert [s.name for s in model.dreg_layers] == ["hidden"]


def test_unknown_custom_activation_warns_once_and_uses_autodiff():
    def cubic_softsign(x):
        return x / (1.0 + keras.ops.abs(x) ** 3)

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = keras_dreg.DREGRegularizedModel(
            *_inputs_outputs(activation=cubic_softsign)
        )
        keras_dreg.wrap(model)
    messages = [str(w.message) for w in caught]
    assert sum("cubic_softsign" in m for m in messages) == 1
    assert any("register_derivative" in m for m in messages)
    [site] = model.dreg_layers
    z = np.linspace(-2, 2, 9).astype("float32")
    expected = (1 - 2 * np.abs(z) ** 3) / (1 + np.abs(z) ** 3) ** 2
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(
            site.activation.derivative(keras.ops.convert_to_tensor(z))
        ),
        expected,
        rtol=1e-5,
        atol=1e-6,
    )


def test_activation_layer_in_subclassed_model_warns():
    class Net(keras_dreg.DREGRegularizedModel):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.hidden = keras.layers.Dense(8, activation="tanh")
            self.linear = keras.layers.Dense(8)
            self.act = keras.layers.ReLU()
            self.head = keras.layers.Dense(2)

        def call(self, x):
            return self.head(self.act(self.linear(self.hidden(x))))

    model = Net()
    model(np.zeros((1, 4), "float32"))
    with pytest.warns(UserWarning, match="outside a layer graph"):
        sites = model.dreg_layers
    assert [s.layer for s in sites] == [model.hidden]


class _Stateful(keras_dreg.penalties.Penalty):
    """Runs the model statefully: moves its BatchNormalization stats."""

    name = "stateful"

    def __call__(self, model, batch):
        return keras.ops.mean(model(batch.x, training=True)) * 0.0


def test_a_scheduled_penalty_that_changes_the_model_raises():
    inputs = keras.Input((4,))
    x = keras.layers.BatchNormalization(name="norm")(inputs)
    model = keras_dreg.PenalizedModel(
        inputs,
        keras.layers.Dense(2)(x),
        penalties=[_Stateful(every_n_steps=2)],
    )
    model.compile(optimizer="sgd", loss="mse")
    with pytest.raises(ValueError, match="norm.*only the state of its"):
        model.train_on_batch(np.ones((2, 4), "float32"), np.zeros((2, 2)))


def test_seed_generators_must_be_seed_generators():
    class Seeded(keras_dreg.penalties.Penalty):
        name = "seeded"

        @property
        def seed_generators(self):
            return [1234]

    with pytest.raises(TypeError, match="keras.random.SeedGenerator"):
        keras_dreg.PenalizedModel(*_inputs_outputs(), penalties=[Seeded()])


@pytest.mark.parametrize("name", ["igpen", "jacobian"])
def test_double_backprop_under_jit_compile(name):
    # XLA (TF, JAX) differentiates the input gradient again; a step that
    # torch.compile compiled cannot, and the error says what to do.
    inputs, outputs = _inputs_outputs()
    model = keras_dreg.regularize(keras.Model(inputs, outputs), name)
    model.compile(
        "sgd",
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        jit_compile=True,
    )
    x = np.zeros((4,) + tuple(inputs.shape[1:]), "float32")
    y = np.zeros((4,), "int32")
    if keras.backend.backend() != "torch":
        assert np.all(np.isfinite(model.train_on_batch(x, y)))
        return
    with pytest.raises(ValueError, match="jit_compile=False"):
        model.train_on_batch(x, y)
