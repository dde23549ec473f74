"""`fit`, `train_on_batch`, `evaluate` and `predict` with the penalty."""

import functools

import keras
import numpy as np
import pytest

import keras_dreg

RNG = np.random.default_rng(1)
X = RNG.normal(size=(64, 8)).astype("float32")
Y = RNG.integers(0, 3, size=(64,))
JIT_OPTIONS = [True, False] if keras.backend.backend() != "torch" else [False]


def _functional(lam=keras_dreg.DEFAULT_LAM, **options):
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8,))
    x = keras.layers.Dense(16, activation="gelu")(inputs)
    x = keras.layers.Dense(16, activation="tanh")(x)
    outputs = keras.layers.Dense(3)(x)
    return keras_dreg.DREGRegularizedModel(inputs, outputs, lam=lam, **options)


class Subclassed(keras_dreg.DREGRegularizedModel):
    def __init__(self, units=16, **kwargs):
        super().__init__(**kwargs)
        self.units = units
        self.hidden = keras.layers.Dense(units, activation="gelu")
        self.head = keras.layers.Dense(3)

    def call(self, x):
        return self.head(self.hidden(x))

    def get_config(self):
        return {**super().get_config(), "units": self.units}


def _compile(model, jit_compile=False, lr=1e-2):
    model.compile(
        optimizer=keras.optimizers.SGD(lr),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
        jit_compile=jit_compile,
    )
    return model


def _jacobian_norm(model):
    """The unweighted DREG of `model` on `X` (lam = 1)."""
    measure = keras_dreg.wrap(model, lam=1.0)
    return float(keras.ops.convert_to_numpy(measure.dreg_penalty(X)))


@pytest.mark.parametrize("jit_compile", JIT_OPTIONS)
def test_fit_lowers_the_penalty_versus_no_penalty(jit_compile):
    norms, histories = {}, {}
    for lam in (0.0, 0.3):
        model = _compile(_functional(lam=lam), jit_compile, lr=0.05)
        histories[lam] = model.fit(X, Y, epochs=5, batch_size=16, verbose=0)
        norms[lam] = _jacobian_norm(model)
    penalized = histories[0.3].history
    assert np.all(np.isfinite(penalized["loss"]))
    assert penalized["dreg_penalty"][-1] < penalized["dreg_penalty"][0]
    assert histories[0.0].history["dreg_penalty"] == [0.0] * 5
    # Same seed and data: the penalized run ends with a smaller Jacobian.
    assert norms[0.3] < 0.8 * norms[0.0]


@pytest.mark.parametrize("jit_compile", JIT_OPTIONS)
def test_loss_minus_penalty_is_the_plain_loss(jit_compile):
    model = _compile(_functional(lam=0.5), jit_compile, lr=0.0)
    logs = model.train_on_batch(X, Y, return_dict=True)
    plain = model.evaluate(X, Y, batch_size=64, verbose=0, return_dict=True)
    assert logs["dreg_penalty"] > 0
    np.testing.assert_allclose(
        logs["loss"] - logs["dreg_penalty"], plain["loss"], rtol=1e-5
    )
    penalty = float(keras.ops.convert_to_numpy(model.dreg_penalty(X)))
    np.testing.assert_allclose(logs["dreg_penalty"], penalty, rtol=1e-5)


def test_evaluate_and_predict_after_fit_see_no_penalty():
    model = _compile(_functional(lam=0.5), jit_compile="auto")
    model.fit(X, Y, epochs=1, batch_size=16, verbose=0)
    plain = keras.Model(model.inputs, model.outputs)
    plain.compile(
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    logs = model.evaluate(X, Y, verbose=0, return_dict=True)
    assert "dreg_penalty" not in logs
    expected = plain.evaluate(X, Y, verbose=0, return_dict=True)
    np.testing.assert_allclose(logs["loss"], expected["loss"], rtol=1e-6)
    np.testing.assert_allclose(
        model.predict(X, verbose=0), plain.predict(X, verbose=0)
    )
    # The hooks are gone: the layers are as built.
    for site in model.dreg_layers:
        assert "call" not in vars(site.layer)
        assert site.layer.activation is keras.activations.get(
            site.layer.get_config()["activation"]
        )


def test_validation_data_and_history():
    model = _compile(_functional())
    history = model.fit(
        X, Y, validation_data=(X, Y), epochs=2, batch_size=32, verbose=0
    )
    assert "dreg_penalty" in history.history
    assert "val_dreg_penalty" not in history.history
    assert "val_loss" in history.history


def test_functional_and_subclass_forms_in_one_process():
    """keras-team/keras#17270: functional construction of a Model
    subclass must not break subclass-style use afterwards."""
    functional = _compile(_functional())
    functional.fit(X, Y, epochs=1, verbose=0)
    subclassed = _compile(Subclassed(lam=0.1))
    history = subclassed.fit(X, Y, epochs=1, verbose=0)
    assert history.history["dreg_penalty"][0] > 0
    assert [s.name for s in subclassed.dreg_layers] == [subclassed.hidden.name]
    assert not isinstance(subclassed, type(functional))


def test_wrap_shares_weights_with_nested_model():
    keras.utils.set_random_seed(0)
    inner = keras.Sequential(
        [keras.Input((8,)), keras.layers.Dense(16, activation="relu")]
    )
    base = keras.Sequential([inner, keras.layers.Dense(3)])
    model = _compile(keras_dreg.wrap(base, lam=0.1))
    before = [np.array(w) for w in base.get_weights()]
    model.fit(X, Y, epochs=1, verbose=0)
    assert [s.layer for s in model.dreg_layers] == [inner.layers[0]]
    after = base.get_weights()
    assert any(not np.allclose(a, b) for a, b in zip(before, after))
    np.testing.assert_allclose(
        model.predict(X, verbose=0), base.predict(X, verbose=0)
    )


def test_every_n_steps_applies_penalty_on_every_kth_step():
    model = _compile(_functional(lam=0.5, every_n_steps=2), lr=0.0)
    applied = [
        model.train_on_batch(X, Y, return_dict=True)["dreg_penalty"]
        for _ in range(4)
    ]
    penalty = float(keras.ops.convert_to_numpy(model.dreg_penalty(X)))
    np.testing.assert_allclose(applied, [penalty, 0, penalty, 0], rtol=1e-5)


def test_layer_weights_and_include_exclude():
    base = _functional(lam=1.0)
    names = [s.name for s in base.dreg_layers]
    weighted = keras_dreg.wrap(base, lam=1.0, layer_weights={names[0]: 0.0})
    terms = weighted.dreg_penalty(X, per_layer=True)
    assert float(terms[names[0]]) == 0.0
    only = keras_dreg.wrap(base, include=[names[1]])
    assert [s.name for s in only.dreg_layers] == [names[1]]
    with pytest.raises(ValueError, match="no layer DREG can regularize"):
        keras_dreg.wrap(base, exclude=["Dense"])


def test_sigmoid_output_keeps_its_logits_for_the_loss():
    """`sigmoid` outputs carry `_keras_logits`, which binary cross-entropy
    uses for a stable loss; the capture hook must return that object."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8,))
    hidden = keras.layers.Dense(16, activation="gelu")(inputs)
    outputs = keras.layers.Dense(
        1,
        activation="sigmoid",
        kernel_initializer=keras.initializers.RandomNormal(stddev=30.0),
    )(hidden)
    model = keras_dreg.DREGRegularizedModel(inputs, outputs, lam=0.1)
    model.compile(optimizer=keras.optimizers.SGD(0.0), loss="bce")
    labels = (Y > 0).astype("float32")
    logs = model.train_on_batch(X, labels, return_dict=True)
    plain = model.evaluate(X, labels, batch_size=64, verbose=0)
    # Saturated sigmoids: without the logits the loss would be clipped.
    assert plain > 5.0
    np.testing.assert_allclose(
        logs["loss"] - logs["dreg_penalty"], plain, rtol=1e-5
    )


FUSED_ACTIVATIONS = {
    "gelu": "gelu",
    "gelu_tanh": functools.partial(keras.ops.gelu, approximate=True),
    "tanh": "tanh",
    "sigmoid": "sigmoid",
    "silu": "silu",
    "elu": "elu",  # (phi, phi', phi'') evaluated one by one
}


def _two_site_cnn(activation):
    """One site of each shape: own activation, `Activation` layer."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((6, 6, 2))
    x = keras.layers.Conv2D(3, 3, activation=activation)(inputs)
    x = keras.layers.Dense(4)(keras.layers.Flatten()(x))
    x = keras.layers.Activation(activation)(x)
    outputs = keras.layers.Dense(3)(x)
    return keras_dreg.DREGRegularizedModel(inputs, outputs, lam=0.3)


@pytest.mark.parametrize(
    "name, jit_compile",
    [(name, False) for name in FUSED_ACTIVATIONS]
    + [("gelu", True)] * (keras.backend.backend() != "torch"),
)
def test_activation_evaluated_with_its_derivatives_trains_as_autodiff(
    name, jit_compile
):
    """The step evaluates `phi` with `phi'` and `phi''` and reuses them in
    the backward pass; the reference is the same function known by `phi'`
    only, so the backend differentiates `phi` and `phi'` itself."""
    activation = keras.activations.get(FUSED_ACTIVATIONS[name])

    def by_autodiff(x):
        return activation(x)

    info = keras_dreg.derivatives.describe_activation(activation)
    keras_dreg.register_derivative(by_autodiff, info.derivative)
    fused, reference = _two_site_cnn(activation), _two_site_cnn(by_autodiff)
    assert [
        s.activation.value_and_derivatives is not None
        for s in (fused.dreg_layers + reference.dreg_layers)
    ] == [True, True, False, False]
    x = RNG.normal(size=(16, 6, 6, 2)).astype("float32")
    y = RNG.integers(0, 3, size=(16,))
    _assert_train_alike(
        (fused, jit_compile), (reference, jit_compile), x, y, rtol=1e-5
    )


@pytest.mark.skipif(
    keras.backend.backend() != "torch",
    reason="torch.compile; TF and JAX compile in the tests above",
)
def test_torch_compile_traces_the_penalty(monkeypatch):
    """`jit_compile=True` on PyTorch: TorchDynamo traces the penalty into
    the compiled step, which trains as the eager one."""
    import torch

    traced = []
    dreg_call = keras_dreg.penalties.DREG.__call__

    def probe(self, model, batch):
        traced.append(torch.compiler.is_compiling())
        return dreg_call(self, model, batch)

    monkeypatch.setattr(keras_dreg.penalties.DREG, "__call__", probe)
    x, y = keras.ops.convert_to_tensor(X), keras.ops.convert_to_tensor(Y)
    _assert_train_alike(
        (_functional(lam=0.5), True), (_functional(lam=0.5), False), x, y
    )
    assert traced[0] and not traced[-1]


@pytest.mark.parametrize("options", [{}, {"sample_size": 4}])
def test_compiled_fit_with_a_smaller_last_batch_trains_as_eager(options):
    """A last batch of another size traces the compiled step again (on
    PyTorch, TorchDynamo then makes the batch size dynamic); the
    compiled fit still trains as the eager one, every backend."""
    weights = []
    for jit_compile in (True, False):
        model = _compile(_functional(lam=0.5, **options), jit_compile, lr=0.5)
        history = model.fit(
            X[:40], Y[:40], batch_size=16, epochs=2, shuffle=False, verbose=0
        )
        assert np.all(np.array(history.history["dreg_penalty"]) > 0)
        weights.append(model.get_weights())
    for compiled, eager in zip(*weights):
        np.testing.assert_allclose(compiled, eager, rtol=1e-4, atol=1e-6)


@pytest.mark.skipif(
    keras.backend.backend() != "torch", reason="torch.compile's graphs"
)
def test_torch_compile_splits_the_step_no_more_than_for_a_plain_model():
    """The penalty adds no graph to the compiled step: TorchDynamo breaks
    the graph where the recording starts, around Keras's step (a lock),
    and in Keras's own places, as for the plain model; not inside the
    forward pass, which would run the model and the penalty eagerly."""
    import torch
    from torch._dynamo.utils import counters

    x, y = keras.ops.convert_to_tensor(X), keras.ops.convert_to_tensor(Y)
    graphs = {}
    for lam in (None, 0.5):
        keras.backend.clear_session()
        torch._dynamo.reset()
        counters.clear()
        model = _functional(lam=lam or 0.0)
        if lam is None:
            model = keras.Model(model.inputs, model.outputs)
        _compile(model, jit_compile=True)
        model.train_on_batch(x, y)
        model.train_on_batch(x, y)
        graphs[lam] = counters["stats"]["unique_graphs"]
    assert graphs[0.5] == graphs[None]


@pytest.mark.skipif(
    keras.backend.backend() != "torch", reason="torch.compile's graphs"
)
def test_torch_compile_keeps_no_recorded_tensor_past_the_forward_pass():
    """A recorded `z` still reachable when TorchDynamo breaks the graph at
    `loss.backward()` becomes an output of the compiled forward graph,
    kept until the backward pass, which then allocates it a zero
    gradient. Measured: the extra peak memory of a compiled DREG step
    over the plain one, on one GELU layer of 256 units, batch 128 (`z`:
    128 KiB), is under one `z` with `stop_gradient_derivative=True`
    (where no `phi'` need be kept) and under two for exact DREG."""
    from benchmarks import peak_memory

    rng = np.random.default_rng(0)
    x = keras.ops.convert_to_tensor(rng.normal(size=(128, 8)).astype("f4"))
    y = keras.ops.convert_to_tensor(rng.integers(0, 3, size=(128,)))
    z_bytes = 128 * 256 * 4

    def step_memory(options):
        keras.utils.set_random_seed(0)
        inputs = keras.Input((8,))
        hidden = keras.layers.Dense(256, activation="gelu")(inputs)
        model = keras.Model(inputs, keras.layers.Dense(3)(hidden))
        if options is not None:
            model = keras_dreg.wrap(model, **options)
        return peak_memory.step_memory(_compile(model, True), x, y)

    plain = step_memory(None)
    stop_gradient = step_memory({"stop_gradient_derivative": True})
    exact = step_memory({})
    assert stop_gradient - plain < z_bytes, (plain, stop_gradient)
    assert exact - plain < 2 * z_bytes, (plain, exact)


def _assert_train_alike(first, second, x, y, rtol=1e-4):
    """Two `(model, jit_compile)` give the same logs and weights after two
    SGD steps on `(x, y)`."""
    logs = []
    for model, jit_compile in (first, second):
        _compile(model, jit_compile=jit_compile, lr=0.5)
        model.train_on_batch(x, y)
        logs.append(model.train_on_batch(x, y, return_dict=True))
    for key in ("loss", "dreg_penalty"):
        np.testing.assert_allclose(logs[0][key], logs[1][key], rtol=1e-5)
    for a, b in zip(first[0].get_weights(), second[0].get_weights()):
        np.testing.assert_allclose(a, b, rtol=rtol, atol=1e-6)


def test_compute_loss_in_a_custom_loop_adds_every_penalty():
    model = _compile(_functional(lam=0.5))
    y_pred = model(X, training=True)
    loss = model.compute_loss(X, Y, y_pred)
    plain = model.loss(Y, y_pred)
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(loss - plain),
        keras.ops.convert_to_numpy(model.dreg_penalty(X)),
        rtol=1e-5,
    )
