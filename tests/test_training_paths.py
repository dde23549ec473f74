"""DREG reaches every training path, and is never silently missing.

One test per way a user trains (a `train_step` override on each
backend, a jitted JAX `stateless_call` loop, `Sequential` without
`keras.Input`) and per way a layer can be left out, composed or
selected.
"""

import warnings

import keras
import numpy as np
import pytest
from keras import ops

import keras_dreg
from keras_dreg import penalty
from tests.conftest import LOSS
from tests.conftest import to_numpy

BACKEND = keras.backend.backend()
RNG = np.random.default_rng(3)
X = RNG.normal(size=(32, 6)).astype("float32")
Y = RNG.integers(0, 3, size=(32,))


def _base(seed=0):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((6,))
    x = keras.layers.Dense(8, activation="gelu", name="h1")(inputs)
    x = keras.layers.Dense(8, name="h2")(x)
    x = keras.layers.Activation("tanh", name="act2")(x)
    return keras.Model(inputs, keras.layers.Dense(3, name="out")(x))


def _fit_minus_evaluate(model):
    """`fit` loss (lr 0, one full batch) minus `evaluate` loss."""
    model.compile(keras.optimizers.SGD(0.0), LOSS)
    history = model.fit(X, Y, batch_size=32, epochs=1, verbose=0)
    return history.history["loss"][0] - model.evaluate(
        X, Y, batch_size=32, verbose=0
    )


class CustomStep(keras_dreg.DREGRegularizedModel):
    """The "customizing what happens in fit()" pattern, per backend."""

    def train_step(self, data):
        x, y = data
        if BACKEND == "tensorflow":
            import tensorflow as tf

            with tf.GradientTape() as tape:
                y_pred = self(x, training=True)
                loss = self.compute_loss(x, y, y_pred)
            grads = tape.gradient(loss, self.trainable_variables)
        else:
            self.zero_grad()
            y_pred = self(x, training=True)
            loss = self.compute_loss(x, y, y_pred)
            loss.backward()
            grads = [v.value.grad for v in self.trainable_variables]
        self.optimizer.apply(grads, self.trainable_variables)
        return self._logs(loss)

    def _logs(self, loss):
        for metric in self.metrics:
            if metric.name == "loss":
                metric.update_state(loss)
        return {m.name: m.result() for m in self.metrics}


class TwoPassStep(CustomStep):
    """A step with an extra forward pass before the one it trains on (a
    teacher or consistency pass, say)."""

    def train_step(self, data):
        x, _ = data
        self(2.0 * x, training=True)
        return super().train_step(data)


NOT_ON_JAX = pytest.mark.skipif(
    BACKEND == "jax",
    reason="JAX's train_step(state, data) is a stateless loop: "
    "test_jitted_stateless_call_loop_matches_fit covers that pattern",
)


@NOT_ON_JAX
def test_user_train_step_override_carries_the_penalty():
    base = _base()
    model = CustomStep(base.inputs, base.outputs, lam=1.0)
    gap = _fit_minus_evaluate(model)
    expected = float(to_numpy(model.dreg_penalty(X)))
    assert expected > 0.1
    np.testing.assert_allclose(gap, expected, rtol=1e-5)


@NOT_ON_JAX
def test_each_forward_pass_of_a_step_carries_its_own_penalty():
    """The loss of the pass trained on carries the penalty of that pass's
    activations only, not of the step's earlier passes too."""
    base = _base()
    model = TwoPassStep(base.inputs, base.outputs, lam=1.0)
    gap = _fit_minus_evaluate(model)
    own, other = (float(to_numpy(model.dreg_penalty(x))) for x in (X, 2 * X))
    assert abs(other - own) > 0.1 * own
    np.testing.assert_allclose(gap, own, rtol=1e-5)


def test_functional_fit_loss_minus_evaluate_is_the_penalty():
    model = keras_dreg.wrap(_base(), lam=1.0)
    gap = _fit_minus_evaluate(model)
    np.testing.assert_allclose(
        gap, float(to_numpy(model.dreg_penalty(X))), rtol=1e-5
    )


@pytest.mark.skipif(BACKEND != "jax", reason="a JAX-only training loop")
def test_jitted_stateless_call_loop_matches_fit():
    import jax

    def make():
        model = keras_dreg.wrap(_base(), lam=0.5)
        model.compile(keras.optimizers.SGD(0.1), LOSS)
        return model

    fitted = make()
    fitted.fit(X, Y, batch_size=32, epochs=2, shuffle=False, verbose=0)

    model = make()
    model(X[:1])  # builds the wrapper, as stateless_call requires
    model.optimizer.build(model.trainable_variables)

    def loss_fn(trainable, non_trainable, x, y):
        y_pred, non_trainable, losses = model.stateless_call(
            trainable, non_trainable, x, training=True, return_losses=True
        )
        return LOSS(y, y_pred) + sum(losses), (non_trainable, len(losses))

    @jax.jit
    def step(trainable, non_trainable, optimizer_vars, x, y):
        (loss, (non_trainable, count)), grads = jax.value_and_grad(
            loss_fn, has_aux=True
        )(trainable, non_trainable, x, y)
        trainable, optimizer_vars = model.optimizer.stateless_apply(
            optimizer_vars, grads, trainable
        )
        return trainable, non_trainable, optimizer_vars, count

    trainable = [v.value for v in model.trainable_variables]
    non_trainable = [v.value for v in model.non_trainable_variables]
    optimizer_vars = [v.value for v in model.optimizer.variables]
    for _ in range(2):
        trainable, non_trainable, optimizer_vars, count = step(
            trainable, non_trainable, optimizer_vars, X, Y
        )
    assert count == 1
    for value, variable in zip(trainable, fitted.trainable_variables):
        np.testing.assert_allclose(
            to_numpy(value), to_numpy(variable.value), atol=1e-6
        )


@pytest.mark.skipif(BACKEND != "jax", reason="a JAX-only training loop")
def test_stateless_call_reads_the_weights_passed_in():
    model = keras_dreg.wrap(_base(), lam=1.0)
    model(X[:1])
    trainable = [3.0 * v.value for v in model.trainable_variables]
    non_trainable = [v.value for v in model.non_trainable_variables]
    _, _, losses = model.stateless_call(
        trainable, non_trainable, X, training=True, return_losses=True
    )
    for variable, value in zip(model.trainable_variables, trainable):
        variable.assign(value)
    expected = float(to_numpy(model.dreg_penalty(X)))
    # dreg_penalty runs in inference: the same z as training here (no
    # dropout or batch norm in this model).
    np.testing.assert_allclose(float(to_numpy(losses[0])), expected, rtol=1e-5)


def test_only_training_calls_add_the_penalty():
    model = keras_dreg.wrap(_base(), lam=1.0)
    model(X, training=False)
    assert model.losses == []
    model(X, training=True)
    assert len(model.losses) == 1
    model(X)
    assert model.losses == []


def test_sequential_without_input_is_paired_once_built():
    keras.utils.set_random_seed(0)
    base = keras.Sequential(
        [
            keras.layers.Conv2D(4, 3, name="conv"),
            keras.layers.BatchNormalization(name="bn"),
            keras.layers.ReLU(name="relu"),
            keras.layers.Flatten(),
            keras.layers.Dense(3, name="out"),
        ]
    )
    model = keras_dreg.wrap(base, lam=1.0)
    model.compile(keras.optimizers.SGD(0.0), LOSS)
    x = RNG.normal(size=(8, 6, 6, 2)).astype("float32")
    y = RNG.integers(0, 3, size=(8,))
    with warnings.catch_warnings():
        warnings.simplefilter("error", keras_dreg.UnregularizedWarning)
        history = model.fit(x, y, batch_size=8, epochs=1, verbose=0)
    assert [repr(s) for s in model.dreg_layers] == [
        "RegularizedLayer(conv -> bn -> relu, activation=ReLU)"
    ]
    assert history.history["dreg_penalty"][0] > 0


def test_unbuilt_model_says_how_to_build_it():
    base = keras.Sequential([keras.layers.Dense(4, activation="gelu")])
    model = keras_dreg.wrap(base)
    with pytest.raises(ValueError, match="not built yet.*model.build"):
        model.dreg_layers


@pytest.mark.parametrize(
    "between, reason",
    [
        (lambda: keras.layers.LayerNormalization(name="mid"), "mixes units"),
        (lambda: keras.layers.Dropout(0.5, name="mid"), "move the Dropout"),
    ],
)
def test_layers_between_kernel_and_activation_are_reported(between, reason):
    inputs = keras.Input((6,))
    x = keras.layers.Dense(8, name="kernel")(inputs)
    x = between()(x)
    x = keras.layers.Activation("gelu", name="act")(x)
    base = keras.Model(inputs, keras.layers.Dense(3, activation="tanh")(x))
    with pytest.warns(keras_dreg.UnregularizedWarning, match="act") as w:
        model = keras_dreg.wrap(base)
    assert len(w) == 1
    assert reason in str(w[0].message)
    table = model.dreg_summary(print_fn=lambda _: None)
    assert "act (Activation)" in table and reason in table


def test_recurrent_layer_is_reported():
    inputs = keras.Input((5, 6))
    x = keras.layers.LSTM(4, name="lstm")(inputs)
    base = keras.Model(inputs, keras.layers.Dense(3, activation="gelu")(x))
    with pytest.warns(keras_dreg.UnregularizedWarning, match="lstm"):
        keras_dreg.wrap(base)


def test_activation_after_add_is_reported_with_what_to_do():
    inputs = keras.Input((6,))
    a = keras.layers.Dense(6, name="a")(inputs)
    x = keras.layers.Add(name="add")([a, inputs])
    x = keras.layers.Activation("gelu", name="after_add")(x)
    base = keras.Model(inputs, keras.layers.Dense(3, activation="tanh")(x))
    with pytest.warns(keras_dreg.UnregularizedWarning) as w:
        keras_dreg.wrap(base)
    assert "after_add" in str(w[0].message)
    assert "Add" in str(w[0].message)


def test_regularize_adds_weight_decay_beside_dreg():
    model = keras_dreg.regularize(keras_dreg.wrap(_base(), lam=1.0), "igpen")
    model = keras_dreg.regularize(model, "weight_decay", lam=0.5)
    assert [p.name for p in model.penalties] == [
        "dreg",
        "igpen",
        "weight_decay",
    ]
    assert model.dreg.lam == 1.0
    model.compile(keras.optimizers.SGD(0.0), LOSS)
    logs = model.fit(X, Y, batch_size=32, epochs=1, verbose=0).history
    assert logs["dreg_penalty"][0] > 0 and logs["weight_decay_penalty"][0] > 0
    total = sum(logs[f"{n}_penalty"][0] for n in ("dreg", "igpen"))
    total += logs["weight_decay_penalty"][0]
    gap = logs["loss"][0] - model.evaluate(X, Y, batch_size=32, verbose=0)
    np.testing.assert_allclose(gap, total, rtol=1e-5)
    with pytest.raises(ValueError, match="already has the regularizer"):
        keras_dreg.regularize(model, "weight_decay")


def test_regularize_refuses_a_built_in_penalized_model():
    base = _base()
    model = keras_dreg.DREGRegularizedModel(base.inputs, base.outputs)
    with pytest.raises(ValueError, match="penalties=\\[...\\]"):
        keras_dreg.regularize(model, "weight_decay")


def test_exclude_takes_classes_with_subclasses_instances_and_names():
    class MyDense(keras.layers.Dense):
        pass

    inputs = keras.Input((6,))
    x = MyDense(8, activation="gelu", name="mine")(inputs)
    conv_in = keras.layers.Reshape((6, 1))(inputs)
    c = keras.layers.Conv1D(2, 3, activation="tanh", name="conv")(conv_in)
    x = keras.layers.Concatenate()([x, keras.layers.Flatten()(c)])
    base = keras.Model(inputs, keras.layers.Dense(3)(x))
    names = lambda m: [s.name for s in m.dreg_layers]  # noqa: E731
    assert names(keras_dreg.wrap(base, exclude=[keras.layers.Dense])) == [
        "conv"
    ]
    assert names(keras_dreg.wrap(base, exclude=["Dense"])) == ["conv"]
    conv = base.get_layer("conv")
    assert names(keras_dreg.wrap(base, exclude=[conv])) == ["mine"]
    assert names(keras_dreg.wrap(base, include=[conv])) == ["conv"]
    config = keras_dreg.wrap(base, exclude=[conv]).dreg.get_config()
    assert config["exclude"] == ["conv"]


def test_one_penalty_object_serves_two_models():
    dreg = keras_dreg.penalties.DREG(lam=1.0)
    first = keras_dreg.PenalizedWrapper(_base(0), penalties=[dreg])
    inputs = keras.Input((6,))
    x = keras.layers.Dense(5, activation="silu", name="other")(inputs)
    second = keras_dreg.PenalizedWrapper(
        keras.Model(inputs, keras.layers.Dense(3)(x)), penalties=[dreg]
    )
    gaps = []
    for model in (first, second):
        gaps.append(_fit_minus_evaluate(model))
    reference = [
        float(to_numpy(keras_dreg.wrap(m.wrapped, lam=1.0).dreg_penalty(X)))
        for m in (first, second)
    ]
    np.testing.assert_allclose(gaps, reference, rtol=1e-5)
    assert [s.name for s in first.penalty_state(dreg).capture.sites] == [
        "h1",
        "h2",
    ]
    assert [s.name for s in second.penalty_state(dreg).capture.sites] == [
        "other"
    ]


def test_activation_that_mixes_units_is_refused_and_named():
    def mixing(x):
        return ops.tanh(x - ops.mean(x, axis=-1, keepdims=True))

    inputs = keras.Input((4,))
    x = keras.layers.Dense(5, activation=mixing, name="mixer")(inputs)
    x = keras.layers.Dense(5, activation="gelu", name="kept")(x)
    base = keras.Model(inputs, keras.layers.Dense(2)(x))
    with pytest.warns(keras_dreg.UnregularizedWarning, match="mixer"):
        model = keras_dreg.wrap(base)
    assert [s.name for s in model.dreg_layers] == ["kept"]
    info = keras_dreg.derivatives.describe_activation(mixing)
    assert info.kind == "non_elementwise"


def test_masked_positions_are_left_out_of_the_mean():
    keras.utils.set_random_seed(0)
    tokens = np.array([[3, 5, 0, 0], [7, 2, 9, 0]], "int32")
    inputs = keras.Input((4,), dtype="int32")
    x = keras.layers.Embedding(10, 6, mask_zero=True, name="embed")(inputs)
    x = keras.layers.Dense(5, activation="gelu", name="ffn")(x)
    x = keras.layers.GlobalAveragePooling1D()(x)
    base = keras.Model(inputs, keras.layers.Dense(2)(x))
    model = keras_dreg.wrap(base, lam=1.0)

    z = to_numpy(base.get_layer("ffn").kernel)
    embedded = to_numpy(base.get_layer("embed").embeddings)[tokens]
    pre = embedded @ z + to_numpy(base.get_layer("ffn").bias)
    slope = to_numpy(
        keras_dreg.derivatives.describe_activation("gelu").derivative(
            ops.convert_to_tensor(pre)
        )
    )
    kept = tokens != 0
    expected = np.sum((slope[kept] ** 2).mean(axis=0) * (z**2).sum(axis=0))
    model.compile(keras.optimizers.SGD(0.0), LOSS)
    logs = model.fit(tokens, np.array([0, 1]), batch_size=2, verbose=0)
    np.testing.assert_allclose(
        logs.history["dreg_penalty"][0], expected, rtol=1e-5
    )


def test_padded_conv_in_a_model_gets_its_input_shape():
    """The model-level value equals the per-layer closed form given the
    input shape (checked against autodiff Jacobians in test_exactness)."""
    keras.utils.set_random_seed(0)
    x = RNG.normal(size=(4, 7, 7, 2)).astype("float32")
    inputs = keras.Input((7, 7, 2))
    conv = keras.layers.Conv2D(3, 3, strides=2, padding="same", name="conv")
    h = conv(inputs)
    h = keras.layers.Activation("gelu", name="act")(h)
    base = keras.Model(inputs, keras.layers.Flatten()(h))
    model = keras_dreg.wrap(base, lam=1.0)
    z = conv(x)
    gelu = keras_dreg.derivatives.describe_activation("gelu").derivative
    expected = penalty.layer_penalty(conv, z, gelu, input_shape=x.shape)
    np.testing.assert_allclose(
        to_numpy(model.dreg_penalty(x)), to_numpy(expected), rtol=1e-5
    )
