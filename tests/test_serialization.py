"""Saving and loading DREG models: `.keras` files, checkpoints, backends.

`model.save("m.keras")` then `keras.models.load_model` round-trips the
three construction forms (functional, subclass, `wrap`), keeps `lam` and
the options, and training continues exactly where it stopped. A model
saved on one backend loads on another. The model inside a wrapper saves
and loads as a plain Keras model. `ModelCheckpoint` works during `fit`.
"""

import json
import os
import subprocess
import sys
import textwrap
import zipfile

import keras
import numpy as np
import pytest

import keras_dreg
from tests.conftest import to_numpy

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BACKEND = keras.backend.backend()
OTHER_BACKEND = {"jax": "torch", "torch": "tensorflow", "tensorflow": "jax"}[
    BACKEND
]
OPTION_KEYS = (
    "lam",
    "include",
    "exclude",
    "include_linear",
    "stop_gradient_derivative",
    "every_n_steps",
    "layer_weights",
)

RNG = np.random.default_rng(3)
X = RNG.normal(size=(16, 8)).astype("float32")
Y = RNG.integers(0, 3, size=(16,))
BATCH = 8  # two steps per epoch


# For these tiny models, tracing a TensorFlow step costs more than running
# it eagerly; on JAX, eager ops each compile, so a compiled step is faster.
FAST_EAGER = BACKEND == "tensorflow"


def _compile(model, run_eagerly=FAST_EAGER):
    model.compile(
        optimizer=keras.optimizers.Adam(1e-2),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        run_eagerly=run_eagerly,
    )
    return model


def _predict(model, x):
    return to_numpy(model(x, training=False))


def _fit(model, epochs=1, **kwargs):
    return model.fit(
        X,
        Y,
        batch_size=BATCH,
        epochs=epochs,
        shuffle=False,
        verbose=0,
        **kwargs,
    ).history


def _options(model):
    config = model.get_config()
    return {key: config[key] for key in OPTION_KEYS}


def _subprocess(script, *args, backend=BACKEND):
    env = {
        **os.environ,
        "KERAS_BACKEND": backend,
        "PYTHONPATH": os.pathsep.join(
            p for p in (REPO, os.environ.get("PYTHONPATH")) if p
        ),
    }
    result = subprocess.run(
        [sys.executable, "-c", script, *map(str, args)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


# The construction forms, each with non-default options.


def _functional():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8,))
    h = keras.layers.Dense(16, activation="gelu", name="dense_a")(inputs)
    h = keras.layers.Dense(16, activation="tanh", name="dense_b")(h)
    h = keras.layers.Dense(16, name="dense_c")(h)
    h = keras.layers.Activation("swish", name="act_c")(h)
    outputs = keras.layers.Dense(3, name="head")(h)
    model = keras_dreg.DREGRegularizedModel(
        inputs,
        outputs,
        lam=0.02,
        exclude=["dense_b"],
        include_linear=True,
        stop_gradient_derivative=True,
        every_n_steps=2,
        layer_weights={"dense_a": 0.5, "head": 0.25},
        name="functional_dreg",
    )
    expected = {
        "lam": 0.02,
        "include": None,
        "exclude": ["dense_b"],
        "include_linear": True,
        "stop_gradient_derivative": True,
        "every_n_steps": 2,
        "layer_weights": {"dense_a": 0.5, "head": 0.25},
    }
    return model, expected, ["dense_a", "dense_c", "head"]


@keras.saving.register_keras_serializable(package="tests")
class SerializableNet(keras_dreg.DREGRegularizedModel):
    def __init__(self, units=16, **kwargs):
        super().__init__(**kwargs)
        self.units = units
        self.first = keras.layers.Dense(units, activation="gelu", name="first")
        self.second = keras.layers.Dense(units, activation="elu", name="second")
        self.head = keras.layers.Dense(3, name="head")

    def call(self, x):
        return self.head(self.second(self.first(x)))

    def get_config(self):
        return {**super().get_config(), "units": self.units}


def _subclass():
    keras.utils.set_random_seed(0)
    model = SerializableNet(
        units=12,
        lam=0.05,
        include=["first", "second"],
        every_n_steps=3,
        layer_weights={"second": 2.0},
    )
    model(X[:1])
    expected = {
        "lam": 0.05,
        "include": ["first", "second"],
        "exclude": [],
        "include_linear": False,
        "stop_gradient_derivative": False,
        "every_n_steps": 3,
        "layer_weights": {"second": 2.0},
    }
    return model, expected, ["first", "second"]


def _wrapped_sequential():
    keras.utils.set_random_seed(0)
    base = keras.Sequential(
        [
            keras.Input((8,)),
            keras.layers.Dense(16, activation="selu", name="seq_a"),
            keras.layers.Dense(16, name="seq_b"),
            keras.layers.BatchNormalization(name="seq_bn"),
            keras.layers.ReLU(max_value=6.0, name="seq_relu6"),
            keras.layers.Dense(16, activation="sigmoid", name="seq_c"),
            keras.layers.Dense(3, name="seq_head"),
        ],
        name="sequential_base",
    )
    model = keras_dreg.wrap(
        base,
        lam=0.03,
        include=[keras.layers.Dense],
        exclude=["seq_c"],
        stop_gradient_derivative=True,
        layer_weights={"seq_b": 1.5},
    )
    expected = {
        "lam": 0.03,
        "include": ["Dense"],
        "exclude": ["seq_c"],
        "include_linear": False,
        "stop_gradient_derivative": True,
        "every_n_steps": 1,
        "layer_weights": {"seq_b": 1.5},
    }
    return model, expected, ["seq_a", "seq_b"]


def _nested_functional():
    keras.utils.set_random_seed(0)
    inner = keras.Sequential(
        [
            keras.Input((8,)),
            keras.layers.Dense(16, activation="gelu", name="in_d"),
        ],
        name="inner",
    )
    inputs = keras.Input((8,))
    h = keras.layers.Dense(8, activation="elu", name="outer_d")(inner(inputs))
    h = keras.layers.Dense(8, activation="softplus", name="outer_e")(h)
    outputs = keras.layers.Dense(3, name="outer_head")(h)
    base = keras.Model(inputs, outputs, name="nested_base")
    return base


def _wrapped_nested():
    model = keras_dreg.wrap(
        _nested_functional(),
        lam=0.04,
        exclude=["outer_e"],
        every_n_steps=2,
        layer_weights={"in_d": 3.0},
    )
    expected = {
        "lam": 0.04,
        "include": None,
        "exclude": ["outer_e"],
        "include_linear": False,
        "stop_gradient_derivative": False,
        "every_n_steps": 2,
        "layer_weights": {"in_d": 3.0},
    }
    return model, expected, ["in_d", "outer_d"]


FORMS = {
    "functional": _functional,
    "subclass": _subclass,
    "wrap_sequential": _wrapped_sequential,
    "wrap_nested_functional": _wrapped_nested,
}


@pytest.mark.parametrize("form", list(FORMS))
def test_save_load_round_trip_and_training_continues(form, tmp_path):
    model, expected_options, expected_sites = FORMS[form]()
    _compile(model)
    assert _options(model) == expected_options
    first = _fit(model)
    assert first["dreg_penalty"][0] > 0

    path = tmp_path / f"{form}.keras"
    model.save(path)
    loaded = keras.models.load_model(path)

    assert isinstance(loaded, keras_dreg.DREGRegularizedModel)
    assert type(loaded) is type(model)
    assert loaded.lam == expected_options["lam"]
    assert _options(loaded) == expected_options
    if form == "subclass":
        assert loaded.units == 12
    names = [s.name for s in model.dreg_layers]
    assert sorted(names) == sorted(expected_sites)
    assert [s.name for s in loaded.dreg_layers] == names
    assert [s.activation.name for s in loaded.dreg_layers] == [
        s.activation.name for s in model.dreg_layers
    ]
    np.testing.assert_allclose(
        _predict(loaded, X), _predict(model, X), rtol=1e-6
    )
    np.testing.assert_allclose(
        to_numpy(loaded.dreg_penalty(X)),
        to_numpy(model.dreg_penalty(X)),
        rtol=1e-6,
    )
    terms = {
        k: to_numpy(v) for k, v in model.dreg_penalty(X, per_layer=True).items()
    }
    loaded_terms = loaded.dreg_penalty(X, per_layer=True)
    assert list(loaded_terms) == names
    for name in names:
        np.testing.assert_allclose(
            to_numpy(loaded_terms[name]), terms[name], rtol=1e-6
        )

    # Training continues where it stopped: the loaded model (optimizer
    # state, `every_n_steps` counter, options) takes the same steps as
    # the original would have.
    continued = _fit(loaded)
    reference = _fit(model)
    assert "dreg_penalty" in continued
    assert continued["dreg_penalty"][0] > 0
    assert np.all(np.isfinite(continued["loss"]))
    for key in ("loss", "dreg_penalty"):
        np.testing.assert_allclose(continued[key], reference[key], rtol=1e-5)
    np.testing.assert_allclose(
        _predict(loaded, X),
        _predict(model, X),
        rtol=1e-4,
        atol=1e-5,
    )


def _config_activations(config):
    """Every `"activation"` value anywhere in a serialized config."""
    found = []
    if isinstance(config, dict):
        for key, value in config.items():
            if key == "activation":
                found.append(value)
            else:
                found.extend(_config_activations(value))
    elif isinstance(config, list):
        for value in config:
            found.extend(_config_activations(value))
    return found


LOAD_PLAIN = textwrap.dedent(
    """
    import sys
    import keras
    import numpy as np

    model = keras.models.load_model(sys.argv[1])
    x = np.load(sys.argv[2])["x"]
    assert not any(m.startswith("keras_dreg") for m in sys.modules), sorted(
        m for m in sys.modules if m.startswith("keras_dreg")
    )
    y = keras.ops.convert_to_numpy(model(x, training=False))
    np.savez(sys.argv[3], y=y)
    """
)


def test_inner_model_saves_without_keras_dreg(tmp_path):
    base = _nested_functional()
    model = _compile(keras_dreg.wrap(base, lam=0.1, every_n_steps=2))
    history = _fit(model)
    assert history["dreg_penalty"][0] > 0
    expected = _predict(base, X)

    # No hook is left on the inner model's layers.
    for layer in base._flatten_layers(include_self=False):
        assert "call" not in vars(layer), layer.name
        if "activation" in layer.get_config():
            assert layer.activation is keras.activations.get(
                layer.get_config()["activation"]
            ), layer.name

    path = tmp_path / "inner.keras"
    base.save(path)
    with zipfile.ZipFile(path) as archive:
        config_text = archive.read("config.json").decode()
    assert "keras_dreg" not in config_text
    assert "dreg" not in config_text.lower()
    activations = _config_activations(json.loads(config_text))
    assert activations and all(isinstance(a, str) for a in activations)
    assert {"gelu", "elu", "softplus", "linear"} <= set(activations)

    loaded = keras.models.load_model(path)
    for layer in loaded._flatten_layers(include_self=True):
        assert not type(layer).__module__.startswith("keras_dreg"), layer.name
    np.testing.assert_allclose(_predict(loaded, X), expected, rtol=1e-6)

    # A fresh interpreter loads it without importing keras_dreg.
    np.savez(tmp_path / "x.npz", x=X)
    _subprocess(LOAD_PLAIN, path, tmp_path / "x.npz", tmp_path / "y.npz")
    np.testing.assert_allclose(
        np.load(tmp_path / "y.npz")["y"], expected, rtol=1e-5, atol=1e-6
    )


SAVE_ON_OTHER_BACKEND = textwrap.dedent(
    """
    import sys
    import keras
    import numpy as np
    import keras_dreg

    out = sys.argv[1]
    keras.utils.set_random_seed(0)
    inputs = keras.Input((6, 6, 2))
    h = keras.layers.Conv2D(4, 3, name="conv")(inputs)
    h = keras.layers.BatchNormalization(name="bn")(h)
    h = keras.layers.Activation("swish", name="act")(h)
    h = keras.layers.Flatten(name="flat")(h)
    h = keras.layers.Dense(8, activation="gelu", name="hidden")(h)
    h = keras.layers.Dense(8, activation="tanh", name="skipped")(h)
    outputs = keras.layers.Dense(3, name="head")(h)
    model = keras_dreg.DREGRegularizedModel(
        inputs,
        outputs,
        lam=0.01,
        exclude=["skipped"],
        every_n_steps=2,
        layer_weights={"hidden": 2.0},
    )
    rng = np.random.default_rng(0)
    for layer in model.layers:
        layer.set_weights(
            [
                rng.uniform(0.5, 1.5, w.shape).astype("float32")
                if "variance" in w.path
                else rng.uniform(-0.5, 0.5, w.shape).astype("float32")
                for w in layer.weights
            ]
        )
    model.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    x = rng.normal(size=(4, 6, 6, 2)).astype("float32")
    y = np.array([0, 1, 2, 0])
    model.save(out + "/other.keras")
    terms = model.dreg_penalty(x, per_layer=True)
    np.savez(
        out + "/other.npz",
        x=x,
        y=y,
        predictions=keras.ops.convert_to_numpy(model(x, training=False)),
        penalty=keras.ops.convert_to_numpy(model.dreg_penalty(x)),
        names=np.array(list(terms)),
        terms=np.array([keras.ops.convert_to_numpy(v) for v in terms.values()]),
    )
    """
)


def test_model_saved_on_another_backend_loads(tmp_path):
    _subprocess(SAVE_ON_OTHER_BACKEND, tmp_path, backend=OTHER_BACKEND)
    saved = np.load(tmp_path / "other.npz")
    x = saved["x"]

    loaded = keras.models.load_model(tmp_path / "other.keras")
    assert isinstance(loaded, keras_dreg.DREGRegularizedModel)
    assert _options(loaded) == {
        "lam": 0.01,
        "include": None,
        "exclude": ["skipped"],
        "include_linear": False,
        "stop_gradient_derivative": False,
        "every_n_steps": 2,
        "layer_weights": {"hidden": 2.0},
    }
    assert [s.name for s in loaded.dreg_layers] == ["conv", "hidden"]
    assert [s.name for s in loaded.dreg_layers] == list(saved["names"])
    conv = loaded.dreg_layers[0]
    assert conv.batch_norm.name == "bn"
    assert conv.activation_layer.name == "act"

    np.testing.assert_allclose(
        _predict(loaded, x), saved["predictions"], rtol=1e-5, atol=1e-5
    )
    np.testing.assert_allclose(
        to_numpy(loaded.dreg_penalty(x)), saved["penalty"], rtol=1e-5, atol=1e-5
    )
    terms = loaded.dreg_penalty(x, per_layer=True)
    np.testing.assert_allclose(
        [to_numpy(terms[n]) for n in saved["names"]],
        saved["terms"],
        rtol=1e-5,
        atol=1e-5,
    )
    assert float(saved["penalty"]) > 0

    if OTHER_BACKEND == "torch":
        # Keras saves a torch optimizer under its torch module
        # (`keras.src.backend.torch.optimizers.torch_adam`); loaded on
        # another backend it cannot step that backend's variables.
        _compile(loaded)
    history = loaded.fit(x, saved["y"], epochs=1, verbose=0).history
    assert history["dreg_penalty"][0] > 0
    assert np.isfinite(history["loss"][0])


def test_model_checkpoint_during_fit(tmp_path):
    model, expected_options, expected_sites = _wrapped_nested()
    _compile(model, run_eagerly=False)  # the default, compiled step
    path = tmp_path / "ckpt.keras"
    checkpoint = keras.callbacks.ModelCheckpoint(
        filepath=str(path), save_best_only=False
    )
    history = _fit(model, epochs=2, callbacks=[checkpoint])
    assert len(history["dreg_penalty"]) == 2
    assert path.exists()

    restored = keras.models.load_model(path)
    assert isinstance(restored, keras_dreg.DREGRegularizedModel)
    assert _options(restored) == expected_options
    assert [s.name for s in restored.dreg_layers] == [
        s.name for s in model.dreg_layers
    ]
    assert sorted(s.name for s in restored.dreg_layers) == sorted(
        expected_sites
    )
    np.testing.assert_allclose(
        _predict(restored, X), _predict(model, X), rtol=1e-6
    )
    np.testing.assert_allclose(
        to_numpy(restored.dreg_penalty(X)),
        to_numpy(model.dreg_penalty(X)),
        rtol=1e-6,
    )
