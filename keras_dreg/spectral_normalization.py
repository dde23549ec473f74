"""Spectral normalization (Miyato et al., 2018), the study's fifth regularizer.

`spectral_normalized(model)` rebuilds a Sequential or Functional model
with each hidden `Dense` and `Conv` layer wrapped in
`SpectralNormalization`, which runs the layer with

    W_sn = W / sigma(W),    sigma(W) ~ v W u^T   (power iteration)

so that each hidden layer's largest singular value is 1.

The output layer is left unnormalized by default. Spectral
normalization bounds the network's Lipschitz constant; normalizing the
logits layer as well, with no learnable scale, also bounds the logits'
size: for inputs of unit scale the softmax cannot become confident and
the cross-entropy cannot fall far below `log(num_classes)`, whatever
the training. That measures the missing scale, not the regularizer.
Miyato et al. normalize the layers of a GAN discriminator, whose output
feeds a loss without a softmax's need for large margins; for a
classifier, the unnormalized linear head is the fair reading (it is the
one the study uses, chosen before any result was seen).
`normalize_output=True` normalizes the head too.

"The output layer" is each kernel layer a model output is reached from
through layers without a kernel only (`Activation`, `Dropout`,
`Flatten`, pooling, ...): the last `Dense(num_classes)` of the study's
models.

This module reads Keras's Functional graph (`KerasTensor._keras_history`
and `Operation._inbound_nodes`) and `keras.src.models.functional`.
"""

import keras
from keras import ops
from keras.src.models.functional import Functional

from keras_dreg import penalty

SPECTRAL_LAYERS = (
    penalty.DENSE_LAYERS + penalty.CONV_LAYERS + penalty.TRANSPOSE_LAYERS
)
"""The layers `spectral_normalized` wraps."""


def spectral_normalized(
    model: keras.Model,
    power_iterations: int = 1,
    normalize_output: bool = False,
) -> keras.Model:
    """A copy of `model` with its hidden Dense and Conv layers normalized.

    Every `Dense`, `Conv1D/2D/3D` and `Conv*Transpose` layer, also in
    nested Sequential and Functional models, is wrapped in
    `SpectralNormalization(layer, power_iterations)`, but the output
    layers (see the module docstring) unless `normalize_output`. The copy
    starts from `model`'s weights (they are copied, not shared).

    Args:
        model: A Sequential or Functional model; a subclassed model
            cannot be rebuilt and raises a `ValueError`.
        power_iterations: Power iterations per training step.
        normalize_output: Also normalize the output layers (then the
            logits cannot grow beyond the input's scale).

    Example: the head `Dense(2)` stays as it is.

    >>> model = keras.Sequential([keras.Input((4,)),
    ...     keras.layers.Dense(8, activation="relu"), keras.layers.Dense(2)])
    >>> [type(l).__name__ for l in spectral_normalized(model).layers]
    ['SpectralNormalization', 'Dense']
    """
    if not isinstance(model, (keras.Sequential, Functional)):
        raise _subclassed_error(model)
    heads = set() if normalize_output else output_layers(model)
    copies = []

    def clone(layer):
        if isinstance(layer, keras.Model):
            raise _subclassed_error(layer)
        copy = layer.__class__.from_config(layer.get_config())
        if not isinstance(layer, keras.layers.Layer):
            # An operation of the graph (the `NotEqual` of an Embedding's
            # mask, say): stateless, nothing to copy.
            return copy
        copies.append((layer, copy))
        if isinstance(layer, SPECTRAL_LAYERS) and id(layer) not in heads:
            return SpectralNormalization(
                copy,
                power_iterations=power_iterations,
                name=f"{layer.name}_spectral_norm",
            )
        return copy

    normalized = keras.models.clone_model(
        model, clone_function=clone, recursive=True
    )
    for layer, copy in copies:
        copy.set_weights(layer.get_weights())
    return normalized


def output_layers(model: keras.Model) -> set[int]:
    """The `id`s of the kernel layers that produce `model`'s outputs.

    Walks back from each output through layers without a kernel (and
    into nested models) to the first `SPECTRAL_LAYERS` layer.

    Example:

    >>> inputs = keras.Input((4,))
    >>> hidden = keras.layers.Dense(8, activation="relu")(inputs)
    >>> head = keras.layers.Dense(2)
    >>> model = keras.Model(inputs, head(hidden))
    >>> heads = output_layers(model)
    >>> id(model.layers[-1]) in heads  # a final Dense(num_classes)
    True
    """
    heads = set()
    todo = list(model.outputs)
    seen = set()
    while todo:
        tensor = todo.pop()
        history = getattr(tensor, "_keras_history", None)
        if history is None or id(tensor) in seen:
            continue
        seen.add(id(tensor))
        operation = history.operation
        if isinstance(operation, SPECTRAL_LAYERS):
            heads.add(id(operation))
            continue
        if isinstance(operation, keras.Model):
            heads |= output_layers(operation)
        if _has_kernel(operation) and not isinstance(operation, keras.Model):
            continue
        node = operation._inbound_nodes[history.node_index]
        todo.extend(node.input_tensors)
    return heads


def _has_kernel(operation) -> bool:
    return hasattr(operation, "kernel") or hasattr(operation, "embeddings")


@keras.saving.register_keras_serializable(package="keras_dreg")
class SpectralNormalization(keras.layers.SpectralNormalization):
    """`keras.layers.SpectralNormalization`, normalized on every backend.

    Keras's layer assigns `W / sigma(W)` to the wrapped kernel in each
    training call and runs inference with the kernel as stored. JAX's
    stateless training step drops assignments to trainable variables, so
    there the kernel is never normalized (its largest singular value
    drifts far above 1). This subclass never assigns the kernel: every
    call, in training or inference, runs the wrapped layer with
    `W / sigma(W)`, `sigma` estimated by power iteration from the stored
    vector `u`, which only training updates. That is spectral
    normalization as Miyato et al. (2018) define it, the same on every
    backend; gradients flow through `sigma` (with `u` held fixed).

    Example:

    >>> layer = SpectralNormalization(keras.layers.Dense(10))
    """

    def __init__(self, layer, **kwargs):
        super().__init__(layer, **kwargs)
        # Pass a mask on where the wrapped layer does (`Dense` on tokens).
        self.supports_masking = layer.supports_masking

    def call(self, inputs, training=False):
        vector_u, kernel = ops.cond(
            ops.all(ops.equal(self.kernel.value, 0)),
            lambda: (self.vector_u.value, self.kernel.value),
            self.normalized_weights,
        )
        if training:
            self.vector_u.assign(vector_u)
        values = [
            (v, kernel if v is self.kernel else v.value)
            for v in self.layer.variables
        ]
        with keras.StatelessScope(state_mapping=values):
            outputs = self.layer(inputs)
        return ops.cast(outputs, inputs.dtype)


def _subclassed_error(model):
    return ValueError(
        f"'spectral_norm' rebuilds the model with each Dense and Conv layer "
        f"wrapped in keras.layers.SpectralNormalization, which needs a "
        f"Sequential or Functional model; '{model.name}' is a subclassed "
        f"{type(model).__name__}. Wrap its kernel layers yourself "
        "(`keras_dreg.regularizers.SpectralNormalization(layer)` in its "
        "`__init__`) and use `regularize(model, 'none')`."
    )
