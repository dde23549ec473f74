"""What keras-dreg needs from Keras beyond its public API, in one file.

Every use of private Keras API in the package goes through this module
(`keras_dreg/study/` excepted: it uses none), so that a Keras upgrade
that changes one of them breaks here, with a name to look up. It relies
on, as of Keras 3.12-3.15:

- `keras.src.models.functional.Functional` and
  `keras.src.models.model.functional_init_arguments`: telling functional
  construction (`Model(inputs, outputs)`) from subclassing.
- `keras.src.losses.loss.scale_loss_for_distribution` /
  `unscale_loss_for_distribution`: Keras divides a replica's loss by the
  replica count under `tf.distribute`.
- `keras.src.backend.common.symbolic_scope.in_symbolic_scope`: shape
  inference runs layers on symbolic tensors;
  `keras.src.backend.in_stateless_scope`: `stateless_call` runs `call`
  in a `StatelessScope` that collects `add_loss` values.
- `keras.src.backend.common.global_state` attribute
  `"current_call_ctx"`: the `training` flag an outer `Layer.__call__`
  resolved (`Layer._get_call_context`).
- `keras.src.backend.get_keras_mask`: the mask attached to a tensor.
- `Layer._get_own_losses()`, which `Layer.losses` calls on a model and
  each of its sublayers (overridden by `PenalizedModel`, so that its
  penalties join the losses per thread).
- Layer attributes `_layers` (direct sublayers), `_flatten_layers()`,
  `_inbound_nodes` / `_outbound_nodes` (the layer graph of Functional
  and Sequential models, `Node.parent_nodes`, `Node.operation`,
  `Node.input_tensors` and the masks symbolic tensors carry),
  `_call_has_training_arg`, `_compile_loss` (the compiled loss),
  `_flash_attention` (an attention layer's resolved choice) and the
  `_keras_logits` attribute sigmoid outputs carry for binary
  cross-entropy.
"""

import keras
from keras.src.backend import get_keras_mask
from keras.src.backend import in_stateless_scope
from keras.src.backend.common import global_state
from keras.src.backend.common.symbolic_scope import in_symbolic_scope
from keras.src.losses.loss import scale_loss_for_distribution
from keras.src.losses.loss import unscale_loss_for_distribution
from keras.src.models.functional import Functional
from keras.src.models.model import functional_init_arguments

__all__ = [
    "Functional",
    "call_context_training",
    "calls_with_training",
    "compiled_loss",
    "direct_sublayers",
    "flash_attention",
    "functional_init_arguments",
    "get_keras_mask",
    "in_stateless_scope",
    "in_symbolic_scope",
    "inbound_producers",
    "inbound_tensors",
    "is_in_graph",
    "keep_logits",
    "nested_layers",
    "outbound_consumers",
    "scale_loss_for_distribution",
    "unscale_loss_for_distribution",
]


def call_context_training() -> bool | None:
    """The `training` flag of the `Layer.__call__` being run, if any."""
    context = global_state.get_global_attribute("current_call_ctx")
    return None if context is None else context.get_value("training")


def calls_with_training(model: keras.Model) -> bool:
    """Whether `model.call` takes a `training` argument."""
    return model._call_has_training_arg


def direct_sublayers(layer: keras.layers.Layer) -> list:
    """The layers `layer` tracks directly, in the order they were set."""
    return list(layer._layers)


def nested_layers(layer: keras.layers.Layer) -> list:
    """`layer`'s sublayers, recursively, without `layer` itself."""
    return layer._flatten_layers(include_self=False)


def is_in_graph(layer: keras.layers.Layer) -> bool:
    """Whether `layer` was called on symbolic tensors (a graph node)."""
    return bool(layer._inbound_nodes)


def inbound_producers(layer: keras.layers.Layer) -> list[list]:
    """For each call of `layer` in a graph, the operations feeding it."""
    return [
        [parent.operation for parent in node.parent_nodes]
        for node in layer._inbound_nodes
    ]


def inbound_tensors(layer: keras.layers.Layer) -> list:
    """The symbolic input tensors of each call of `layer` in a graph."""
    return [t for node in layer._inbound_nodes for t in node.input_tensors]


def outbound_consumers(layer: keras.layers.Layer) -> list:
    """The operations that consume `layer`'s outputs in a graph."""
    return [node.operation for node in layer._outbound_nodes]


def compiled_loss(model: keras.Model):
    """The loss `model.compile(loss=...)` set, or `None`."""
    return getattr(model, "_compile_loss", None)


def flash_attention(layer: keras.layers.Layer) -> bool:
    """Whether an attention layer resolved to flash attention."""
    return getattr(layer, "_flash_attention", None) is True


def keep_logits(outputs, logits) -> None:
    """Like `keras.activations.sigmoid`: `outputs` carry their logits, so
    that binary cross-entropy can use them (a stable loss)."""
    try:
        outputs._keras_logits = logits
    except AttributeError:
        pass
