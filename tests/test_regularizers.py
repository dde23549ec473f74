"""`keras_dreg.regularize`: the study's six regularizers behind one API.

Each trains a small GELU CNN, logs its penalty, saves and loads as
`.keras`; spectral normalization bounds each kernel's largest singular
value; the double-backprop penalties work compiled, through attention,
with `BatchNormalization` and dropout (in mixed precision:
`test_mixed_precision.py`), and say clearly what they cannot do.
"""

import warnings

import keras
import numpy as np
import pytest

import keras_dreg
from keras_dreg.penalties import Batch
from tests.conftest import LOSS
from tests.conftest import to_numpy

BACKEND = keras.backend.backend()
RNG = np.random.default_rng(0)
X = RNG.normal(size=(32, 8, 8, 1)).astype("float32")
Y = RNG.integers(0, 3, size=(32,))
PENALTY_BASED = ("weight_decay", "igpen", "jacobian", "dreg")
JIT = {"tensorflow": [False, True], "jax": [True], "torch": [False]}[BACKEND]


def _cnn(dropout=0.0, batch_norm=False):
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 1))
    x = keras.layers.Conv2D(4, 3, activation="gelu")(inputs)
    if batch_norm:
        x = keras.layers.BatchNormalization()(x)
    x = keras.layers.MaxPooling2D()(x)
    x = keras.layers.Flatten()(x)
    if dropout:
        x = keras.layers.Dropout(dropout)(x)
    x = keras.layers.Dense(8, activation="gelu")(x)
    outputs = keras.layers.Dense(3)(x)
    return keras.Model(inputs, outputs)


def _compile(model, lr=1e-2, jit_compile="auto"):
    model.compile(
        optimizer=keras.optimizers.SGD(lr), loss=LOSS, jit_compile=jit_compile
    )
    return model


def test_the_six_names():
    assert keras_dreg.REGULARIZERS == (
        "none",
        "weight_decay",
        "igpen",
        "jacobian",
        "spectral_norm",
        "dreg",
    )


@pytest.mark.parametrize("name", keras_dreg.REGULARIZERS)
def test_each_trains_a_gelu_cnn_and_saves(name, tmp_path):
    model = _compile(keras_dreg.regularize(_cnn(), name))
    history = model.fit(X, Y, epochs=1, batch_size=16, verbose=0).history
    assert np.isfinite(history["loss"][0])
    penalty_logs = sorted(k for k in history if k.endswith("_penalty"))
    if name in PENALTY_BASED:
        assert penalty_logs == [f"{name}_penalty"]
        assert history[f"{name}_penalty"][0] > 0
    else:
        assert penalty_logs == []
    path = tmp_path / f"{name}.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert type(loaded) is type(model)
    assert [p.get_config() for p in loaded.penalties] == [
        p.get_config() for p in model.penalties
    ]
    for v, w in zip(loaded.weights, model.weights):
        np.testing.assert_array_equal(v.numpy(), w.numpy(), err_msg=w.path)
    np.testing.assert_allclose(
        to_numpy(loaded(X[:4])), to_numpy(model(X[:4])), atol=1e-6
    )


@pytest.mark.parametrize(
    "name, lam",
    [
        ("weight_decay", 2.5e-4),
        ("igpen", 1e-2),
        ("jacobian", 5e-2),
        ("dreg", 10**-2.5),
    ],
)
def test_default_strengths(name, lam):
    model = keras_dreg.regularize(_cnn(), name)
    assert model.penalties[0].lam == pytest.approx(lam)
    model = keras_dreg.regularize(_cnn(), name, lam=0.25)
    assert model.penalties[0].lam == 0.25


def test_dreg_is_wrap_and_the_others_share_the_model():
    base = _cnn()
    dreg = keras_dreg.regularize(base, "dreg", include_linear=True)
    assert isinstance(dreg, keras_dreg.DREGRegularizedModel)
    assert dreg.dreg.include_linear
    for name in ("none", "weight_decay", "igpen", "jacobian", "dreg"):
        assert keras_dreg.regularize(base, name).wrapped is base


def test_options_reach_the_penalty():
    model = keras_dreg.regularize(_cnn(), "jacobian", num_projections=3, seed=4)
    (penalty,) = model.penalties
    assert (penalty.num_projections, penalty.seed) == (3, 4)
    model = keras_dreg.regularize(_cnn(), "igpen", every_n_steps=2)
    assert model.penalties[0].every_n_steps == 2


def test_unknown_name_lists_the_valid_ones():
    with pytest.raises(ValueError, match="none, weight_decay, igpen"):
        keras_dreg.regularize(_cnn(), "dropout")


@pytest.mark.parametrize(
    "name, options, message",
    [
        ("igpen", {"num_projections": 2}, "num_projections"),
        ("none", {"power_iterations": 2}, "power_iterations"),
        ("spectral_norm", {"exact": True}, "power_iterations"),
        ("dreg", {"bogus": 1}, "include_linear"),
        ("none", {"lam": 0.1}, "no strength"),
        ("spectral_norm", {"lam": 0.1}, "no strength"),
    ],
)
def test_unknown_options_raise_a_type_error(name, options, message):
    with pytest.raises(TypeError, match=message):
        keras_dreg.regularize(_cnn(), name, **options)


class Subclassed(keras.Model):
    def __init__(self):
        super().__init__()
        self.dense = keras.layers.Dense(3)

    def call(self, x):
        return self.dense(x)


def test_spectral_norm_of_a_subclassed_model_raises():
    with pytest.raises(ValueError, match="subclassed.*Wrap its kernel"):
        keras_dreg.regularize(Subclassed(), "spectral_norm")


def _spectral_layers(model):
    return [
        layer
        for layer in model.wrapped.layers
        if isinstance(layer, keras.layers.SpectralNormalization)
    ]


def test_spectral_norm_copies_the_weights_and_wraps_each_kernel_layer():
    base = _cnn()
    model = keras_dreg.regularize(
        base, "spectral_norm", power_iterations=3, normalize_output=True
    )
    wrapped = _spectral_layers(model)
    assert [type(layer.layer) for layer in wrapped] == [
        keras.layers.Conv2D,
        keras.layers.Dense,
        keras.layers.Dense,
    ]
    assert all(layer.power_iterations == 3 for layer in wrapped)
    originals = [base.layers[1], base.layers[-2], base.layers[-1]]
    for layer, original in zip(wrapped, originals):
        for w, v in zip(layer.layer.weights, original.weights):
            np.testing.assert_array_equal(w.numpy(), v.numpy())


def _largest_singular_value(kernel):
    kernel = to_numpy(kernel)
    return np.linalg.svd(
        kernel.reshape(-1, kernel.shape[-1]), compute_uv=False
    )[0]


@pytest.mark.parametrize("jit_compile", JIT)
def test_spectral_norm_bounds_each_kernel_after_training(jit_compile):
    # Power iteration converges over the steps; 3 per step is plenty here.
    model = keras_dreg.regularize(_cnn(), "spectral_norm", power_iterations=3)
    _compile(model, lr=0.05, jit_compile=jit_compile)
    model.fit(X, Y, epochs=3, batch_size=8, verbose=0)
    for layer in _spectral_layers(model):
        _, kernel = layer.normalized_weights()
        assert _largest_singular_value(kernel) <= 1 + 1e-2


def test_spectral_norm_infers_with_the_normalized_kernels():
    keras.utils.set_random_seed(1)
    base = keras.Sequential(
        [
            keras.Input((4,)),
            keras.layers.Dense(5, activation="tanh"),
            keras.layers.Dense(2),
        ]
    )
    model = keras_dreg.regularize(base, "spectral_norm", normalize_output=True)
    model = _compile(model, lr=0.1)
    x = RNG.normal(size=(16, 4)).astype("float32") * 3
    model.fit(x, np.arange(16) % 2, epochs=2, batch_size=4, verbose=0)
    hidden, head = _spectral_layers(model)
    kernels = [
        to_numpy(layer.normalized_weights()[1]) for layer in (hidden, head)
    ]
    expected = (
        np.tanh(x @ kernels[0] + hidden.layer.bias.numpy()) @ kernels[1]
        + head.layer.bias.numpy()
    )
    np.testing.assert_allclose(
        model.predict(x, verbose=0), expected, rtol=1e-5, atol=1e-6
    )


@pytest.mark.parametrize("name", ["igpen", "jacobian"])
def test_state_advances_once_per_step_with_batch_norm_and_dropout(name):
    """The second forward pass changes no state: after one step at lr 0,
    moving statistics and dropout seeds equal those of a plain step."""
    plain = _compile(keras_dreg.regularize(_cnn(0.5, True), "none"), lr=0.0)
    base = _cnn(0.5, True)
    penalized = _compile(keras_dreg.regularize(base, name), lr=0.0)
    plain.train_on_batch(X, Y)
    logs = penalized.train_on_batch(X, Y, return_dict=True)
    assert np.isfinite(logs[f"{name}_penalty"]) and logs[f"{name}_penalty"] > 0
    for v, w in zip(
        plain.wrapped.non_trainable_variables, base.non_trainable_variables
    ):
        np.testing.assert_allclose(
            v.numpy(), w.numpy(), rtol=1e-6, err_msg=v.path
        )


@pytest.mark.parametrize("jit_compile", JIT)
@pytest.mark.parametrize(
    "name, options", [("igpen", {}), ("jacobian", {"exact": True})]
)
def test_logged_penalty_equals_the_direct_value(jit_compile, name, options):
    model = keras_dreg.regularize(_cnn(), name, lam=0.3, **options)
    _compile(model, lr=0.0, jit_compile=jit_compile)
    logs = model.train_on_batch(X, Y, return_dict=True)
    direct = model.penalties[0](model, Batch(X, Y, None))
    np.testing.assert_allclose(
        logs[f"{name}_penalty"], to_numpy(direct), rtol=1e-5
    )
    plain = model.evaluate(X, Y, batch_size=32, verbose=0)
    np.testing.assert_allclose(
        logs["loss"] - logs[f"{name}_penalty"], plain, rtol=1e-5
    )


def test_every_n_steps_is_inherited():
    model = _compile(
        keras_dreg.regularize(_cnn(), "igpen", every_n_steps=2), lr=0.0
    )
    values = [
        model.train_on_batch(X, Y, return_dict=True)["igpen_penalty"]
        for _ in range(4)
    ]
    assert values[0] > 0 and values[1] == 0
    assert values[2] == pytest.approx(values[0]) and values[3] == 0


@pytest.mark.parametrize("jit_compile", JIT)
@pytest.mark.parametrize("name", PENALTY_BASED)
def test_a_scheduled_penalty_trains_as_every_step_on_its_steps(
    name, jit_compile
):
    """The first step of `every_n_steps=2` is that of `every_n_steps=1`:
    the gradient flows through the penalty in its `cond` branch."""
    options = {"seed": 3} if name == "jacobian" else {}
    weights = []
    for every_n_steps in (1, 2):
        base = _cnn()
        model = keras_dreg.regularize(
            base, name, lam=0.5, every_n_steps=every_n_steps, **options
        )
        _compile(model, lr=0.1, jit_compile=jit_compile)
        model.train_on_batch(X, Y)
        weights.append([v.numpy() for v in base.trainable_variables])
    plain = _cnn()
    _compile(keras_dreg.regularize(plain, "none"), lr=0.1).train_on_batch(X, Y)
    for v, w, u in zip(*weights, plain.trainable_variables):
        np.testing.assert_allclose(v, w, rtol=1e-5, atol=1e-6)
    assert any(
        not np.allclose(v, u.numpy())
        for v, u in zip(weights[1], plain.trainable_variables)
    )


@pytest.mark.parametrize("jit_compile", JIT)
def test_jacobian_every_n_steps(jit_compile):
    model = keras_dreg.regularize(_cnn(), "jacobian", every_n_steps=2)
    _compile(model, jit_compile=jit_compile)
    values = [
        model.train_on_batch(X, Y, return_dict=True)["jacobian_penalty"]
        for _ in range(4)
    ]
    assert values[0] > 0 and values[1] == 0
    assert values[2] > 0 and values[3] == 0


@pytest.mark.parametrize("name", ["igpen", "jacobian"])
def test_fused_cudnn_rnn_raises_a_clear_error(name, monkeypatch):
    # As on a GPU, where Keras may pick the fused cuDNN kernels.
    monkeypatch.setattr(keras_dreg.backend, "gpu_available", lambda: True)

    def rnn(use_cudnn):
        inputs = keras.Input((4, 2))
        x = keras.layers.LSTM(3, use_cudnn=use_cudnn)(inputs)
        return keras.Model(inputs, keras.layers.Dense(2)(x))

    with pytest.raises(ValueError, match="use_cudnn=False"):
        keras_dreg.regularize(rnn("auto"), name)
    keras_dreg.regularize(rnn(False), name)


def _attention_model(flash_attention=None):
    keras.utils.set_random_seed(0)
    inputs = keras.Input((4, 6))
    x = keras.layers.MultiHeadAttention(2, 3, flash_attention=flash_attention)(
        inputs, inputs
    )
    outputs = keras.layers.Dense(3)(keras.layers.Flatten()(x))
    return keras.Model(inputs, outputs)


@pytest.mark.parametrize("jit_compile", JIT)
@pytest.mark.parametrize("name", ["igpen", "jacobian"])
def test_multi_head_attention_is_differentiated_twice(name, jit_compile):
    x = RNG.normal(size=(16, 4, 6)).astype("float32")
    model = _compile(
        keras_dreg.regularize(_attention_model(), name), jit_compile=jit_compile
    )
    before = [v.numpy() for v in model.trainable_variables]
    history = model.fit(x, Y[:16], batch_size=8, verbose=0).history
    assert np.isfinite(history["loss"][0]) and history[f"{name}_penalty"][0] > 0
    for v, w in zip(model.trainable_variables, before):
        assert not np.array_equal(v.numpy(), w), v.path


@pytest.mark.parametrize("name", ["igpen", "jacobian"])
def test_flash_attention_raises_a_clear_error(name):
    with pytest.raises(ValueError, match="flash attention has no second"):
        keras_dreg.regularize(_attention_model(flash_attention=True), name)


def test_spectral_norm_keeps_the_masks_of_a_text_model():
    """Cloning copies the graph's mask operations too (`NotEqual`)."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((None,), dtype="int32")
    x = keras.layers.Embedding(20, 8, mask_zero=True)(inputs)
    x = keras.layers.Dense(8, activation="gelu")(x)
    x = keras.layers.GlobalAveragePooling1D()(x)
    base = keras.Model(inputs, keras.layers.Dense(3)(x))
    model = _compile(keras_dreg.regularize(base, "spectral_norm"))
    tokens = RNG.integers(1, 20, size=(32, 6))
    tokens[:, 4:] = 0
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        history = model.fit(tokens, Y, batch_size=8, verbose=0).history
    assert np.isfinite(history["loss"][0])
    # The normalized Dense passes the mask on, as the plain Dense does.
    assert not [w for w in caught if "does not support masking" in str(w)]
    # Padding is masked out of the average: trailing zeros change nothing.
    np.testing.assert_allclose(
        model.predict(tokens, verbose=0),
        model.predict(tokens[:, :4], verbose=0),
        rtol=1e-5,
        atol=1e-6,
    )


def test_a_seventh_penalty_written_by_a_user():
    @keras.saving.register_keras_serializable(package="test_regularizers")
    class L1(keras_dreg.penalties.Penalty):
        name = "l1"
        default_lam = 1e-3

        def __call__(self, model, batch):
            return self.lam * sum(
                keras.ops.sum(keras.ops.abs(v))
                for v in model.trainable_variables
                if v.name == "kernel"
            )

    base = _cnn()
    inputs = keras.Input((8, 8, 1))
    model = keras_dreg.PenalizedModel(
        inputs,
        base(inputs),
        penalties=[L1(0.01), keras_dreg.penalties.WeightDecay(0.02)],
    )
    logs = _compile(model, lr=0.0).train_on_batch(X, Y, return_dict=True)
    kernels = [
        v.numpy() for v in base.trainable_variables if v.name == "kernel"
    ]
    np.testing.assert_allclose(
        logs["l1_penalty"],
        0.01 * sum(np.abs(k).sum() for k in kernels),
        rtol=1e-5,
    )
    np.testing.assert_allclose(
        logs["weight_decay_penalty"],
        0.02 * sum(np.square(k).sum() for k in kernels),
        rtol=1e-5,
    )


def test_igpen_beside_dreg_leaves_dreg_unchanged():
    """IGPen's second forward pass (with its own dropout mask) is not
    recorded by DREG."""
    penalties = keras_dreg.penalties
    alone = keras_dreg.PenalizedWrapper(
        _cnn(dropout=0.5), penalties=[penalties.DREG(0.5)]
    )
    # IGPen first: its second forward pass runs while DREG records.
    both = keras_dreg.PenalizedWrapper(
        _cnn(dropout=0.5),
        penalties=[penalties.InputGradientPenalty(), penalties.DREG(0.5)],
    )
    logs = []
    for model in (alone, both):
        _compile(model, lr=0.0)
        keras.utils.set_random_seed(1)  # the same dropout mask on torch
        logs.append(model.train_on_batch(X, Y, return_dict=True))
    np.testing.assert_allclose(
        logs[1]["dreg_penalty"], logs[0]["dreg_penalty"], rtol=1e-5
    )
    assert logs[1]["igpen_penalty"] > 0
