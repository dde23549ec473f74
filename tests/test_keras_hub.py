"""KerasHub: its activations' closed forms and the backbones DREG covers.

Small random-init backbones (no download), built on the current backend.
The expected regularized layers are counted independently of
`keras_dreg`: every `Dense`/`EinsumDense` inside the backbone whose own
activation is not linear. `docs/guides/keras_hub.md` lists the same
coverage.
"""

import warnings

import keras
import numpy as np
import pytest
from keras import ops

import keras_dreg
from keras_dreg.derivatives import describe_activation
from tests.test_derivatives import grad_of_sum

keras_hub = pytest.importorskip(
    "keras_hub",
    reason="keras-hub is not installed (pip install 'keras-dreg[hub]'; "
    "the pinned version is in requirements-hub.txt)",
)
from keras_hub.src.models.clip import clip_layers  # noqa: E402
from keras_hub.src.models.metaclip_2 import metaclip_2_layers  # noqa: E402
from keras_hub.src.utils import keras_utils  # noqa: E402

HUB_ACTIVATIONS = {
    "gelu_approximate": keras_utils.gelu_approximate,
    "clip_quick_gelu": clip_layers.quick_gelu,
    "metaclip_2_quick_gelu": metaclip_2_layers.quick_gelu,
}
TEXT = dict(vocabulary_size=40, num_layers=2, hidden_dim=8, intermediate_dim=16)
SEQUENCE_LENGTH = 6


def build_backbone(name):
    """A tiny random-init `keras_hub.models.<name>`."""
    models = keras_hub.models
    if name in ("AlbertBackbone", "ElectraBackbone"):
        sizes = dict(TEXT, embedding_dim=8, num_heads=2)
        if name == "ElectraBackbone":
            sizes["vocab_size"] = sizes.pop("vocabulary_size")
        return getattr(models, name)(**sizes, max_sequence_length=16)
    if name == "FNetBackbone":
        return models.FNetBackbone(**TEXT, max_sequence_length=16)
    if name == "LlamaBackbone":
        return models.LlamaBackbone(
            **TEXT, num_query_heads=2, num_key_value_heads=1
        )
    if name == "GemmaBackbone":
        return models.GemmaBackbone(
            **TEXT, num_query_heads=2, num_key_value_heads=1, head_dim=4
        )
    return getattr(models, name)(**TEXT, num_heads=2, max_sequence_length=16)


def kernel_layers_with_activation(model):
    """Dense/EinsumDense layers in `model` with a nonlinear activation."""
    linear = keras.activations.linear
    return sorted(
        layer.name
        for layer in model._flatten_layers(include_self=False)
        if isinstance(layer, (keras.layers.Dense, keras.layers.EinsumDense))
        and getattr(layer, "activation", None) not in (None, linear)
    )


def token_inputs(backbone, batch=2, seed=0):
    rng = np.random.default_rng(seed)
    ids = rng.integers(1, 40, size=(batch, SEQUENCE_LENGTH)).astype("int32")
    arrays = {
        "token_ids": ids,
        "padding_mask": np.ones_like(ids),
        "segment_ids": np.zeros_like(ids),
    }
    return {name: arrays[name] for name in backbone.input}


@pytest.mark.parametrize("name", sorted(HUB_ACTIVATIONS))
def test_closed_form_matches_autodiff_of_keras_hub_function(name):
    fn = HUB_ACTIVATIONS[name]
    info = describe_activation(fn)
    assert info.kind == "elementwise"
    assert "autodiff" not in info.name
    z = np.random.default_rng(0).uniform(-6.0, 6.0, 257).astype("float32")
    z = ops.convert_to_tensor(z)
    expected_first = grad_of_sum(fn, z)
    expected_second = grad_of_sum(lambda t: grad_of_sum(fn, t), z)
    value, first, second = info.value_and_derivatives(z)
    for actual, expected in [
        (value, fn(z)),
        (first, expected_first),
        (info.derivative(z), expected_first),
        (second, expected_second),
        (info.second_derivative(z), expected_second),
    ]:
        np.testing.assert_allclose(
            ops.convert_to_numpy(actual),
            ops.convert_to_numpy(expected),
            rtol=1e-4,
            atol=1e-5,
        )


COVERED = [
    "AlbertBackbone",
    "BertBackbone",
    "DebertaV3Backbone",
    "DistilBertBackbone",
    "ElectraBackbone",
    "FNetBackbone",
    "GPT2Backbone",
    "RobertaBackbone",
]


@pytest.mark.parametrize("name", COVERED)
def test_backbone_feed_forward_layers_are_regularized_in_closed_form(name):
    backbone = build_backbone(name)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # No autodiff fallback warning.
        model = keras_dreg.wrap(backbone)
    found = sorted(site.layer.name for site in model.dreg_layers)
    assert found == kernel_layers_with_activation(backbone)
    assert len(found) >= 1
    names = {site.activation.name for site in model.dreg_layers}
    assert not any("autodiff" in n for n in names), names
    penalties = model.dreg_penalty(token_inputs(backbone), per_layer=True)
    # One entry per layer: its name, or its path where names repeat.
    assert len(penalties) == len(found)
    for value in penalties.values():
        value = float(ops.convert_to_numpy(value))
        assert np.isfinite(value) and value > 0


def test_per_layer_penalties_have_one_entry_per_regularized_layer():
    backbone = build_backbone("BertBackbone")
    model = keras_dreg.wrap(backbone)
    penalties = model.dreg_penalty(token_inputs(backbone), per_layer=True)
    assert len(penalties) == len(model.dreg_layers)


@pytest.mark.parametrize("name", ["GemmaBackbone", "LlamaBackbone"])
def test_gated_feed_forward_backbones_have_nothing_to_regularize(name):
    # Their gate applies the activation inside the block's `call`
    # (`activation(gate(x)) * up(x)`): no kernel layer owns it.
    backbone = build_backbone(name)
    assert kernel_layers_with_activation(backbone) == []
    with pytest.raises(ValueError, match="no layer DREG can regularize"):
        keras_dreg.wrap(backbone)


def test_text_classifier_trains_with_dreg_penalty_in_the_logs():
    keras.utils.set_random_seed(0)
    backbone = build_backbone("BertBackbone")
    classifier = keras_hub.models.BertTextClassifier(
        backbone, num_classes=2, preprocessor=None, dropout=0.0
    )
    model = keras_dreg.wrap(classifier)
    model.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    inputs = token_inputs(backbone, batch=8)
    labels = np.arange(8) % 2
    history = model.fit(inputs, labels, batch_size=4, epochs=2, verbose=0)
    penalty = history.history["dreg_penalty"]
    assert len(penalty) == 2
    assert all(np.isfinite(p) and p > 0 for p in penalty)
    expected = float(ops.convert_to_numpy(model.dreg_penalty(inputs)))
    assert np.isfinite(expected) and expected > 0
