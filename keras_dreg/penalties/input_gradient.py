"""IGPen: the input-gradient penalty (double backpropagation).

For a training example `x_i` with loss `l_i` (the compiled loss of that
example alone), the penalty is the batch mean of the squared norm of the
loss gradient with respect to the input (Drucker & LeCun, 1992; Ross &
Doshi-Velez, 2018):

    IGPen(x, y) = lam * mean_i ||d l_i / d x_i||^2

The gradient is taken inside the training step and the step
differentiates it again (double backpropagation), through each
backend's own autodiff (`keras_dreg.backend.vjp`). A step therefore
costs about two to three plain steps.

How it is computed. `compute_loss` receives `y_pred` but not the graph
that produced it, so the model is run again on the same batch with the
same variables (`training=True`), inside a `keras.StatelessScope` whose
state updates are discarded: `BatchNormalization` statistics and dropout
seeds advance once per step, as without the penalty, and dropout draws
its own mask for the second run. `l_i` is the compiled loss times the
batch size, which is the sum of per-example losses for Keras's default
`"sum_over_batch_size"` reduction (or the penalty's own `loss`, for
custom training loops); sample and class weights are not applied (every
example counts once). `add_loss` terms are not included.

Token inputs. Integer inputs have no gradient. If any model input is
integer, the gradient is also taken with respect to the output of every
`keras.layers.Embedding` called on integer ids, `e_i`, and the norm sums
over all of them (and over any floating inputs):

    IGPen = lam * mean_i (sum_float_inputs ||d l_i / d x_i||^2
                          + sum_embeddings ||d l_i / d e_i||^2)

A model with integer inputs and no `Embedding` raises a `ValueError`.

Limitations: fused kernels have no second derivative on any backend.
A model with `LSTM`/`GRU` layers that may use cuDNN (on a GPU,
`use_cudnn` `"auto"` or `True`) raises a `ValueError` that says to pass
`use_cudnn=False`; one with attention layers that must use flash
attention (`flash_attention=True`, or
`keras.config.enable_flash_attention()` when they were built) raises
one that says to turn it off. Other attention is differentiated twice
(on PyTorch, the second run selects the math kernel of scaled
dot-product attention: `keras_dreg.backend.torch`).

Default strength: `lam = 1e-2`, this project's choice, with no source to
cite: the DREG preprint fixes only DREG's strength (`10**-2.5`), and the
input-gradient papers tune it per task.
"""

import contextlib
import threading
from collections.abc import Callable

import keras
from keras import ops
from keras import tree

from keras_dreg import backend
from keras_dreg import interception
from keras_dreg import internals
from keras_dreg.penalties import base

DEFAULT_LAM = 1e-2


@keras.saving.register_keras_serializable(package="keras_dreg")
class InputGradientPenalty(base.Penalty):
    """`lam * mean_i ||d l_i / d x_i||^2`, the input-gradient penalty.

    See the module docstring for how integer (token) inputs, dropout,
    `BatchNormalization` and sample weights are handled.

    Args:
        lam: Strength; defaults to `1e-2` (this project's choice).
        loss: The loss `l` to differentiate (a `keras.losses.Loss`, or a
            name or function `keras.losses.get` accepts); `None` takes
            the model's compiled loss. Give it in a custom training loop
            where the model is not compiled.
        every_n_steps: Apply it on every `k`-th training step only.

    Example:

    ```python
    model = keras_dreg.PenalizedWrapper(
        base_model,
        penalties=[keras_dreg.penalties.InputGradientPenalty(lam=1e-2)],
    )
    model.compile("adam", "sparse_categorical_crossentropy")
    model.fit(x, y)  # logs loss and igpen_penalty
    ```
    """

    name = "igpen"
    default_lam = DEFAULT_LAM

    def __init__(
        self, lam: float | None = None, loss=None, every_n_steps: int = 1
    ):
        super().__init__(lam, every_n_steps)
        self.loss = _as_loss(loss)

    def bind(self, model: keras.Model) -> None:
        check_double_backprop(model, type(self).__name__)

    def __call__(self, model, batch):
        return self.lam * ops.mean(self.squared_norms(model, batch.x, batch.y))

    def squared_norms(self, model: keras.Model, x, y):
        """`||d l_i / d x_i||^2` of each example, float32, shape `(batch,)`.

        Needs `loss`, or else `model.compile(loss=...)`. Runs the model
        with `training=True` (dropout active), changing no state.
        """
        loss_fn = _compiled_loss(model) if self.loss is None else self.loss

        def summed_loss(y_pred):
            return [_summed(loss_fn(y, y_pred), y_pred)]

        outputs, pullback = input_vjp(model, x, summed_loss)
        return per_example_squared_norm(pullback([ops.ones_like(outputs[0])]))

    def get_config(self) -> dict:
        loss = self.loss
        if loss is not None:
            loss = keras.saving.serialize_keras_object(loss)
        return {**super().get_config(), "loss": loss}


def input_vjp(model: keras.Model, x, head: Callable):
    """`head(model(x))` and its pullback to the model's inputs.

    Runs `model` again on `x` with its current variables and
    `training=True`, discarding every state update, and differentiates
    with respect to the floating leaves of `x` and, when `x` has integer
    leaves, the outputs of the `Embedding` layers called on integer ids.

    Args:
        model: The model; built on `x` first if it is not.
        x: The batch of inputs (any structure the model accepts).
        head: Maps the model's output to a list of tensors.

    Returns:
        `(outputs, pullback)` as `keras_dreg.backend.vjp` returns them:
        `pullback(cotangents)` gives one gradient per floating leaf of
        `x`, then one per `Embedding` call, each differentiable by the
        training step.

    Example: the input gradient of the sum of the outputs.

    >>> model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    >>> x = np.ones((4, 3), "float32")
    >>> outputs, pullback = input_vjp(model, x, lambda y: [ops.sum(y)])
    >>> (grad_x,) = pullback([ops.ones(())])
    >>> tuple(grad_x.shape)
    (4, 3)
    """
    _check_not_torch_compiled(model)
    if not model.built:
        model(x)  # In inference: builds a wrapper, changes no state.
    leaves = [ops.convert_to_tensor(leaf) for leaf in tree.flatten(x)]
    floating = [i for i, leaf in enumerate(leaves) if _is_float(leaf)]
    embeddings = []
    if len(floating) < len(leaves):
        embeddings = _embedding_layers(model)
    values = (
        [v.value for v in model.trainable_variables],
        [v.value for v in model.non_trainable_variables],
    )
    kwargs = {"training": True} if internals.calls_with_training(model) else {}

    def run(float_leaves, tap):
        inputs = list(leaves)
        for i, leaf in zip(floating, float_leaves):
            inputs[i] = leaf
        inputs = tree.pack_sequence_as(x, inputs)
        # The state updates of this second run (and of `head`, such as
        # loss metrics) stay in this scope and are dropped; it is not the
        # step's own forward pass: no penalty is recorded or added.
        with keras.StatelessScope(), _tapping(embeddings, tap):
            with interception.paused():
                y_pred, _ = model.stateless_call(*values, inputs, **kwargs)
            return head(y_pred)

    return backend.vjp(run, [leaves[i] for i in floating])


def per_example_squared_norm(gradients):
    """`sum_t ||g_t[i]||^2` over the tensors `g_t`, float32, `(batch,)`."""
    return sum(
        ops.sum(
            ops.square(ops.cast(g, "float32")),
            axis=tuple(range(1, len(g.shape))),
        )
        for g in gradients
    )


def check_double_backprop(model: keras.Model, penalty: str) -> None:
    """Raises if `model` has layers that cannot be differentiated twice.

    Fused cuDNN RNN kernels (`LSTM`/`GRU` with `use_cudnn` `"auto"` or
    `True`, on a GPU) and flash attention (attention layers built with
    it on) have no second derivative on any backend.
    """
    # The layer's resolved choice: its argument, or the global setting
    # when it was built; `get_config` does not hold it.
    flash = [
        layer.name
        for layer in internals.nested_layers(model)
        if internals.flash_attention(layer)
    ]
    if flash:
        raise ValueError(
            f"{penalty} differentiates the model twice (double "
            "backpropagation), and flash attention has no second "
            f"derivative on any backend. Layers {flash} use it: build them "
            "without `flash_attention=True`, after "
            "`keras.config.disable_flash_attention()`."
        )
    fused = [
        layer.name
        for layer in internals.nested_layers(model)
        if isinstance(layer, (keras.layers.LSTM, keras.layers.GRU))
        and layer.use_cudnn in ("auto", True)
    ]
    if fused and backend.gpu_available():
        raise ValueError(
            f"{penalty} differentiates the model twice (double "
            "backpropagation), and fused cuDNN RNN kernels have no second "
            f"derivative on any backend. Layers {fused} may use cuDNN on "
            "this GPU: build them with `use_cudnn=False`."
        )


def _check_not_torch_compiled(model: keras.Model) -> None:
    """Raises if `model` trains with a `torch.compile`d step on torch.

    The backward pass of a step compiled by `torch.compile` (AOT autograd)
    cannot be differentiated again.
    """
    compiled = getattr(model, "jit_compile", False) is True
    if keras.backend.backend() == "torch" and compiled:
        raise ValueError(
            f"Model '{model.name}' is compiled with `jit_compile=True`, "
            "which on the torch backend trains with `torch.compile`; its "
            "backward pass cannot be differentiated twice, and the "
            "input-gradient and Jacobian penalties need that (double "
            "backpropagation). Compile the model with `jit_compile=False` "
            "(the torch default)."
        )


def _as_loss(loss):
    return None if loss is None else keras.losses.get(loss)


def _summed(values, y_pred):
    """`sum_i l_i` from a loss reduced over the batch, or not reduced."""
    values = ops.cast(values, "float32")
    if len(values.shape):  # per-example losses (a loss function)
        return ops.sum(values)
    # Under tf.distribute, Keras divides each replica's reduced loss by
    # the replica count; the per-example gradients must not be.
    batch_size = ops.shape(tree.flatten(y_pred)[0])[0]
    loss = internals.unscale_loss_for_distribution(values)
    return loss * ops.cast(batch_size, "float32")


def _compiled_loss(model):
    loss = internals.compiled_loss(model)
    if loss is None:
        raise ValueError(
            f"Model '{model.name}' has no compiled loss. The input-gradient "
            "penalty differentiates the training loss: call "
            "`model.compile(loss=...)` first, or give the penalty its "
            "`loss`."
        )
    return loss


def _is_float(tensor) -> bool:
    return keras.backend.is_float_dtype(
        keras.backend.standardize_dtype(tensor.dtype)
    )


def _embedding_layers(model):
    layers = [
        layer
        for layer in internals.nested_layers(model)
        if isinstance(layer, keras.layers.Embedding)
    ]
    if not layers:
        raise ValueError(
            f"Model '{model.name}' has integer inputs and no "
            "`keras.layers.Embedding`: integer inputs cannot be "
            "differentiated, and the penalty differentiates with respect "
            "to the output of the embedding layers of token inputs. Feed "
            "floating inputs, or embed the integer ids with an Embedding."
        )
    return layers


_TAP = threading.local()


@contextlib.contextmanager
def _tapping(layers, tap):
    """Routes what the `Embedding` layers `layers` compute from integer
    ids through `tap`, in this thread, while the block runs."""
    _TAP.tap = tap
    try:
        with contextlib.ExitStack() as stack:
            for layer in layers:
                stack.enter_context(
                    interception.hooked(
                        layer, "call", _tapped_call, pausable=False
                    )
                )
            yield
    finally:
        _TAP.tap = None


def _tapped_call(original, inputs, *args, **kwargs):
    outputs = original(inputs, *args, **kwargs)
    tap = getattr(_TAP, "tap", None)
    if tap is None or _is_float(inputs):
        return outputs
    return tap(outputs)
