"""`wrap` on `keras.applications` models (built with `weights=None`).

Three small models cover the shapes DREG must find:

- `ConvNeXtTiny`: GELU as an `Activation` layer after a `Dense`;
- `EfficientNetV2B0`: swish in `Conv -> BatchNorm -> Activation` blocks,
  and kernel layers with their own swish / sigmoid (squeeze-excite);
- `MobileNetV2`: `Conv -> BatchNorm -> ReLU(max_value=6)`.

The expected sites are counted here from each model's serialized config
(its layer graph), independently of `keras_dreg`: every elementwise
activation that follows a kernel layer, directly or through one
`BatchNormalization`, must be regularized, and `dreg_layers` must say
so. Then one `fit` step runs on each model.
"""

import warnings

import keras
import numpy as np
import pytest

import keras_dreg
from tests.conftest import to_numpy

KERNEL_CLASSES = {
    "Dense",
    "EinsumDense",
    "Conv1D",
    "Conv2D",
    "Conv3D",
    "Conv1DTranspose",
    "Conv2DTranspose",
    "Conv3DTranspose",
    "DepthwiseConv1D",
    "DepthwiseConv2D",
    "SeparableConv1D",
    "SeparableConv2D",
}
ACTIVATION_LAYER_CLASSES = {"Activation", "ReLU", "LeakyReLU", "ELU", "PReLU"}
NOT_ELEMENTWISE = {"linear", None, "softmax", "log_softmax", "glu", "sparsemax"}
MODEL_CLASSES = {"Functional", "Sequential", "Model"}
ALIASES = {"swish": "silu"}  # Keras serializes swish as silu

SIZE = 32  # the smallest input these applications accept
MODELS = ["ConvNeXtTiny", "EfficientNetV2B0", "MobileNetV2"]


@pytest.fixture(scope="module")
def application():
    """Builds each model once for this module (JAX compiles the weight
    initializers of each new shape: building is the slow part there)."""
    built = {}

    def get(name, classifier_activation=None):
        key = (name, classifier_activation)
        if key not in built:
            keras.utils.set_random_seed(0)
            built[key] = getattr(keras.applications, name)(
                weights=None,
                input_shape=(SIZE, SIZE, 3),
                classes=4,
                classifier_activation=classifier_activation,
            )
        return built[key]

    yield get
    built.clear()


# An independent reading of the layer graph, from the serialized config.


def _refs(value):
    """Names of the layers whose output tensors appear in `value`."""
    if isinstance(value, dict):
        if value.get("class_name") == "__keras_tensor__":
            return [value["config"]["keras_history"][0]]
        return [name for v in value.values() for name in _refs(v)]
    if isinstance(value, (list, tuple)):
        return [name for v in value for name in _refs(v)]
    return []


def _graph(model_config):
    """`{name: layer_config}`, `{name: [producers per call]}` and
    `{name: [consumers]}` of a Functional or Sequential config."""
    layers = {
        layer["config"]["name"]: layer for layer in model_config["layers"]
    }
    producers, consumers = {}, {name: [] for name in layers}
    if "inbound_nodes" in next(iter(layers.values())):  # Functional
        for name, layer in layers.items():
            producers[name] = [_refs(node) for node in layer["inbound_nodes"]]
        outputs = model_config["output_layers"]
        if outputs and isinstance(outputs[0], str):
            outputs = [outputs]
        for output in outputs:
            consumers[output[0]].append("<model output>")
    else:  # Sequential: a chain
        chain = [
            name
            for name, layer in layers.items()
            if layer["class_name"] != "InputLayer"
        ]
        for previous, name in zip([None] + chain, chain):
            producers[name] = [[previous]] if previous else []
        if chain:
            consumers[chain[-1]].append("<model output>")
    for name, calls in producers.items():
        for call in calls:
            for producer in call:
                consumers[producer].append(name)
    return layers, producers, consumers


def _single_producer(name, producers):
    calls = producers.get(name, [])
    if len(calls) != 1 or len(calls[0]) != 1:
        return None
    return calls[0][0]


def _activation_of(layer):
    """An elementwise activation's description, or None."""
    cls, config = layer["class_name"], layer["config"]
    if cls == "Activation" or cls in KERNEL_CLASSES:
        activation = config.get("activation")
        if activation in NOT_ELEMENTWISE:
            return None
        return ALIASES.get(activation, activation)
    if cls == "ReLU":
        return ("relu", config["max_value"])
    return cls.lower()


def expected_sites(model_config):
    """`{kernel_layer: (activation, batch_norm, activation_layer)}`.

    Sites are (1) a kernel layer with its own elementwise activation and
    (2) a kernel layer with a linear activation whose output goes only to
    an elementwise activation layer, or only to a BatchNormalization whose
    output goes only to that activation layer. Nested models are read
    recursively.
    """
    layers, producers, consumers = _graph(model_config)
    sites = {}
    for name, layer in layers.items():
        cls = layer["class_name"]
        if cls in MODEL_CLASSES:
            sites.update(expected_sites(layer["config"]))
        elif cls in KERNEL_CLASSES and _activation_of(layer) is not None:
            sites[name] = (_activation_of(layer), None, None)
        elif cls in ACTIVATION_LAYER_CLASSES and _activation_of(layer):
            producer = _single_producer(name, producers)
            if producer is None or consumers[producer] != [name]:
                continue
            batch_norm = None
            if layers[producer]["class_name"] == "BatchNormalization":
                batch_norm = producer
                producer = _single_producer(batch_norm, producers)
                if producer is None or consumers[producer] != [batch_norm]:
                    continue
            kernel = layers[producer]
            if (
                kernel["class_name"] in KERNEL_CLASSES
                and kernel["config"].get("activation") == "linear"
            ):
                sites[producer] = (_activation_of(layer), batch_norm, name)
    return sites


def _site_map(model):
    return {
        site.layer.name: (
            site.activation.name,
            None if site.batch_norm is None else site.batch_norm.name,
            None
            if site.activation_layer is None
            else site.activation_layer.name,
        )
        for site in model.dreg_layers
    }


def _derivative(site, z):
    return to_numpy(site.activation.derivative(keras.ops.convert_to_tensor(z)))


def test_expected_sites_reader_on_a_small_graph():
    """The independent reader itself, on a graph with every case."""
    inputs = keras.Input((6, 6, 2))
    a = keras.layers.Conv2D(3, 3, name="conv_bn_relu")(inputs)
    a = keras.layers.BatchNormalization(name="bn")(a)
    a = keras.layers.ReLU(name="relu")(a)
    b = keras.layers.Conv2D(3, 3, activation="gelu", name="conv_gelu")(inputs)
    c = keras.layers.Conv2D(3, 3, name="conv_shared")(inputs)
    c_act = keras.layers.Activation("tanh", name="tanh")(c)
    d = keras.layers.Add(name="add")([a, b, c_act, c])
    d = keras.layers.Activation("swish", name="after_add")(d)
    d = keras.layers.Flatten(name="flat")(d)
    inner = keras.Sequential(
        [
            keras.Input((48,)),
            keras.layers.Dense(4, name="inner_dense"),
            keras.layers.ELU(name="inner_elu"),
        ],
        name="inner",
    )
    e = keras.layers.Dense(4, name="dense_linear")(inner(d))
    outputs = keras.layers.Activation("softmax", name="probs")(e)
    model = keras.Model(inputs, outputs)
    assert expected_sites(model.get_config()) == {
        "conv_bn_relu": (("relu", None), "bn", "relu"),
        "conv_gelu": ("gelu", None, None),
        "inner_dense": ("elu", None, "inner_elu"),
    }
    wrapped = keras_dreg.wrap(model)
    assert set(_site_map(wrapped)) == {
        "conv_bn_relu",
        "conv_gelu",
        "inner_dense",
    }


@pytest.mark.parametrize("name", MODELS)
def test_every_elementwise_activation_after_a_kernel_is_regularized(
    name, application
):
    base = application(name)
    expected = expected_sites(base.get_config())
    model = keras_dreg.wrap(base)
    found = _site_map(model)
    assert set(found) == set(expected)
    for layer_name, (_, batch_norm, activation_layer) in expected.items():
        found_path = found[layer_name][1:]
        assert found_path == (batch_norm, activation_layer), layer_name

    # Each site names the activation of the config, and its derivative.
    z = np.array([-7.0, -1.0, 0.0, 0.5, 3.0, 7.0], "float32")
    sigmoid = 1 / (1 + np.exp(-z))
    slopes = {
        "gelu": None,  # checked below at 0 and 7
        "silu": sigmoid * (1 + z * (1 - sigmoid)),
        "sigmoid": sigmoid * (1 - sigmoid),
        ("relu", 6.0): np.array([0, 0, 0, 1, 1, 0], "float32"),
    }
    sites = {site.layer.name: site for site in model.dreg_layers}
    for layer_name, (activation, _, _) in expected.items():
        site = sites[layer_name]
        if activation == ("relu", 6.0):
            assert site.activation.name.lower().startswith("relu")
            assert "max_value=6" in site.activation.name
        else:
            assert site.activation.name == activation, layer_name
        slope = _derivative(site, z)
        if activation == "gelu":
            np.testing.assert_allclose(slope[[2, 5]], [0.5, 1.0], atol=1e-6)
        else:
            np.testing.assert_allclose(
                slope, slopes[activation], rtol=1e-5, atol=1e-7
            )

    activations = {e[0] for e in expected.values()}
    with_batch_norm = [n for n, v in expected.items() if v[1] is not None]
    if name == "ConvNeXtTiny":  # Dense -> Activation("gelu")
        assert activations == {"gelu"}
        assert len(found) == 18  # 3 + 3 + 9 + 3 blocks
        assert all(v[2] is not None for v in found.values())
    elif name == "EfficientNetV2B0":  # Conv -> BN -> swish, SE convs
        assert activations == {"silu", "sigmoid"}
        assert with_batch_norm
        assert {expected[n][0] for n in with_batch_norm} == {"silu"}
    else:  # Conv -> BN -> ReLU(6.)
        assert activations == {("relu", 6.0)}
        assert len(with_batch_norm) == len(expected)


@pytest.mark.parametrize("name", MODELS)
def test_dreg_layers_follow_the_layer_order(name, application):
    """`find_regularized_layers` documents "the sites, in layer order"."""
    base = application(name)
    order = list(expected_sites(base.get_config()))
    assert [s.layer.name for s in keras_dreg.wrap(base).dreg_layers] == order


@pytest.mark.parametrize("name", MODELS)
def test_one_fit_step(name, application):
    base = application(name)
    model = keras_dreg.wrap(base, lam=1e-3)
    model.compile(
        optimizer=keras.optimizers.SGD(1e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, size=(2, SIZE, SIZE, 3)).astype("float32")
    y = np.array([0, 3])
    before = [to_numpy(w) for w in base.trainable_weights[:4]]
    logs = model.fit(x, y, batch_size=2, epochs=1, verbose=0).history
    assert np.isfinite(logs["loss"][0])
    assert np.isfinite(logs["dreg_penalty"][0]) and logs["dreg_penalty"][0] > 0
    assert logs["loss"][0] > logs["dreg_penalty"][0]
    after = [to_numpy(w) for w in base.trainable_weights[:4]]
    assert any(not np.array_equal(a, b) for a, b in zip(before, after))


def _dreg_warnings(fn):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = fn()
    return result, [str(w.message) for w in caught if "DREG" in str(w.message)]


@pytest.mark.parametrize(
    "name",
    MODELS,
)
def test_no_warning_for_these_functional_models(name, application):
    """Every activation layer's input is known in a Functional model;
    the ones not fed by a kernel layer (`Activation("linear")` identities
    in ConvNeXt, `Add -> ReLU`) are not regularized and need no warning
    that DREG "cannot tell which kernel layer feeds" them."""
    _, messages = _dreg_warnings(lambda: keras_dreg.wrap(application(name)))
    assert messages == []


def _softmax_model(application):
    base = application("ConvNeXtTiny", classifier_activation="softmax")
    output = base.get_config()["output_layers"]
    output = output[0] if isinstance(output[0], list) else output
    return base, output[0]


def test_softmax_output_is_skipped_with_a_warning_naming_it(application):
    base, output_layer = _softmax_model(application)
    model, messages = _dreg_warnings(lambda: keras_dreg.wrap(base))
    naming = [m for m in messages if output_layer in m]
    assert len(naming) == 1, messages
    assert "softmax" in naming[0]
    assert output_layer not in {s.layer.name for s in model.dreg_layers}
    assert {s.layer.name for s in model.dreg_layers} == set(
        expected_sites(base.get_config())
    )
    assert len(model.dreg_layers) == 18


def test_softmax_output_gives_a_single_warning(application):
    base, output_layer = _softmax_model(application)
    _, messages = _dreg_warnings(lambda: keras_dreg.wrap(base))
    assert len(messages) == 1, messages
    assert output_layer in messages[0]
