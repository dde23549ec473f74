"""The study's models: one small Functional network per kind of data.

The activation is the study's factor; everything else is fixed.

Activations
-----------

`ACTIVATIONS` = relu, gelu, silu, tanh. The preprint names GELU; the
other three are this project's choice, picked to span the shapes of
``phi'`` that DREG weights the penalty by:

- ``relu``: the default baseline. ``phi'`` is 0 or 1, so DREG reduces to
  the weight norms of the active units.
- ``gelu``: smooth and non-monotone; the transformer default, named by
  the preprint.
- ``silu`` (swish): GELU's close relative from the convolutional world
  (EfficientNet), smooth and non-monotone with ``phi'`` above 1 near
  ``z = 2.4``; tests whether GELU's results are GELU-specific.
- ``tanh``: saturating; ``phi'`` is largest at 0 and vanishes for large
  ``|z|``, the opposite profile to the ReLU family.

Architectures
-------------

All models end in a linear ``Dense(num_classes)``: they output logits,
to be trained with ``from_logits=True`` losses. Hidden layers carry the
activation as their own ``activation=`` argument, so DREG finds them.
Layers are standard Keras layers, so ``keras.models.clone_model`` (used
for spectral normalization) can rebuild them. Images are channels-last.

- ``"tabular"`` ``(N, F)``: ``Dense(128) -> Dense(128) -> Dense(K)``.
- ``"image"`` ``(N, H, W, C)``: ``Conv2D(32, 3) -> MaxPool(2) ->
  Conv2D(64, 3) -> MaxPool(2) -> Flatten -> Dense(64) -> Dense(K)``,
  "same" padding.
- ``"sequence"`` ``(N, T)`` or ``(N, T, C)``: the 1-D analogue,
  ``Conv1D(32, 5) -> MaxPool(2) -> Conv1D(64, 5) -> MaxPool(2) ->
  Flatten -> Dense(64) -> Dense(K)``.
- ``"text"`` ``(N, T)`` token ids: ``Embedding(vocab, 32)``, one
  post-norm transformer block (``MultiHeadAttention(2 heads, key_dim
  16)``, residual, LayerNorm, feed-forward ``Dense(64, activation) ->
  Dense(32)``, residual, LayerNorm), mean pooling over positions and
  ``Dense(K)``. The feed-forward ``Dense`` is where the activation, and
  so DREG, acts. There is no position embedding (the model sees a bag of
  tokens in context, which suits the order-free ``text_rule`` task and
  keeps to standard layers) and no mask: padding (id 0) has its own
  learned embedding and takes part in attention and pooling, which the
  model learns to discount. A mask would add Keras operation nodes to the
  Functional graph that layer-by-layer rewrites of the model (such as the
  spectral-normalization clone) would have to handle.

Your own
--------

`register_model(name, builder)` adds a model to choose per study
(`StudyConfig.models`, the CLI's ``--models``); the built-in networks
above are `DEFAULT_MODEL`, ``"default"``.

Sizes are small so that a few epochs on the offline data sets take
seconds on a two-core CPU. ``build_model`` seeds Keras, NumPy, Python
and the backend with ``keras.utils.set_random_seed(seed)``, so the same
seed gives the same initial weights and the training that follows is
seeded too.
"""

from __future__ import annotations

from typing import Callable

import keras
from keras import layers

from keras_dreg.study.datasets import Dataset

ACTIVATIONS = ("relu", "gelu", "silu", "tanh")
"""The study's hidden-layer activations (see above)."""
DEFAULT_MODEL = "default"
"""The name of the built-in networks (see above)."""

HIDDEN_UNITS = 128
CONV_FILTERS = (32, 64)
HEAD_UNITS = 64
EMBED_DIM = 32
NUM_HEADS = 2
FF_DIM = 64
_SAME = {"padding": "same", "data_format": "channels_last"}


def build_model(
    dataset: Dataset,
    activation: str,
    seed: int = 0,
    model: str = DEFAULT_MODEL,
) -> keras.Model:
    """A fresh, uncompiled model for `dataset`, with logits out.

    Args:
        dataset: Decides the architecture (``dataset.task``), the input
            shape, the number of classes and, for text, the vocabulary.
        activation: One of `ACTIVATIONS` (any Keras activation name
            works).
        seed: Passed to ``keras.utils.set_random_seed`` first.
        model: `DEFAULT_MODEL` (the networks above) or a name given to
            `register_model`.

    Returns:
        A ``keras.Model`` with output shape ``(None, num_classes)``.

    Example:

    >>> data = load_dataset("digits")
    >>> model = build_model(data, "gelu", seed=0)
    >>> model.compile(
    ...     "adam",
    ...     keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    ... )
    >>> history = model.fit(data.x_train, data.y_train, epochs=1, verbose=0)
    """
    if model not in _MODELS:
        raise ValueError(
            f"Unknown model {model!r}; known: {available_models()}."
        )
    keras.utils.set_random_seed(seed)
    built = _MODELS[model](dataset, activation)
    if not isinstance(built, keras.Model):
        raise TypeError(
            f"The builder of model {model!r} returned "
            f"{type(built).__name__}, not a keras.Model."
        )
    return built


def _default(dataset: Dataset, activation: str) -> keras.Model:
    dtype = "int32" if dataset.task == "text" else "float32"
    inputs = keras.Input(dataset.x_train.shape[1:], dtype=dtype)
    features = _BODIES[dataset.task](inputs, dataset, activation)
    outputs = layers.Dense(dataset.num_classes, name="logits")(features)
    return keras.Model(inputs, outputs, name=f"{dataset.task}_{activation}")


def _mlp(inputs, dataset, activation):
    x = layers.Dense(HIDDEN_UNITS, activation=activation)(inputs)
    return layers.Dense(HIDDEN_UNITS, activation=activation)(x)


def _cnn2d(inputs, dataset, activation):
    return _conv_stack(
        inputs, layers.Conv2D, layers.MaxPooling2D, 3, activation
    )


def _cnn1d(inputs, dataset, activation):
    x = inputs
    if len(inputs.shape) == 2:
        x = layers.Reshape((inputs.shape[1], 1))(x)
    return _conv_stack(x, layers.Conv1D, layers.MaxPooling1D, 5, activation)


def _conv_stack(x, conv, pool, kernel_size, activation):
    """Two convolution + max-pooling stages, then ``Dense(HEAD_UNITS)``."""
    for filters in CONV_FILTERS:
        x = conv(filters, kernel_size, activation=activation, **_SAME)(x)
        x = pool(2, **_SAME)(x)
    x = layers.Flatten()(x)
    return layers.Dense(HEAD_UNITS, activation=activation)(x)


def _transformer(inputs, dataset, activation):
    x = layers.Embedding(dataset.vocab_size, EMBED_DIM)(inputs)
    attended = layers.MultiHeadAttention(NUM_HEADS, EMBED_DIM // NUM_HEADS)(
        x, x
    )
    x = layers.LayerNormalization()(layers.Add()([x, attended]))
    hidden = layers.Dense(FF_DIM, activation=activation, name="ff_hidden")(x)
    x = layers.LayerNormalization()(
        layers.Add()([x, layers.Dense(EMBED_DIM)(hidden)])
    )
    return layers.GlobalAveragePooling1D()(x)


_BODIES = {
    "tabular": _mlp,
    "image": _cnn2d,
    "sequence": _cnn1d,
    "text": _transformer,
}


_MODELS: dict[str, Callable[[Dataset, str], keras.Model]] = {
    DEFAULT_MODEL: _default
}


def register_model(
    name: str, builder: Callable[[Dataset, str], keras.Model]
) -> None:
    """Adds a model of your own to the study, as `name`.

    ``builder(dataset, activation)`` returns a fresh, uncompiled
    `keras.Model` for `dataset` (input shape ``dataset.x_train.shape[1:]``)
    with ``dataset.num_classes`` logits out, its hidden layers using
    `activation`. The study seeds Keras before calling it, compiles and
    trains what it returns, and regularizes it as every regularizer
    does, so DREG finds the layers that carry `activation` themselves.
    Register it in a module that the study imports
    (`StudyConfig.imports`, the CLI's ``--imports``).

    Raises:
        ValueError: If `name` is taken.

    Example:

    >>> def wide(dataset, activation):
    ...     inputs = keras.Input(dataset.x_train.shape[1:])
    ...     x = keras.layers.Flatten()(inputs)
    ...     x = keras.layers.Dense(512, activation=activation)(x)
    ...     outputs = keras.layers.Dense(dataset.num_classes)(x)
    ...     return keras.Model(inputs, outputs)
    >>> register_model("wide", wide)
    >>> build_model(load_dataset("digits"), "gelu", model="wide").layers[2]
    <Dense name=dense..., built=True>
    >>> del _MODELS["wide"]
    """
    if name in _MODELS:
        raise ValueError(f"A model named {name!r} is already registered.")
    if not callable(builder):
        raise TypeError(f"builder must be callable, got {builder!r}.")
    _MODELS[name] = builder


def available_models() -> list[str]:
    """`DEFAULT_MODEL`, then the registered models' names.

    Example:

    >>> available_models()[0]
    'default'
    """
    return list(_MODELS)
