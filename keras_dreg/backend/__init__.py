"""The only backend-specific code: differentiable vector-Jacobian products.

The input-gradient and Jacobian penalties need the gradient of the
model with respect to its input *inside* the training step, in a form
that the step's own backward pass can differentiate again (double
backpropagation). Each backend does that its own way:

- JAX: `jax.vjp` inside the traced step;
- TensorFlow: a persistent `tf.GradientTape` nested in the step's tape;
- PyTorch: `torch.autograd.grad(..., create_graph=True)`.

`vjp` picks the one of `keras.backend.backend()`; everything else in
keras-dreg is `keras.ops`, except the faster equivalents of a few
`keras.ops` functions that a backend may offer (`fast_path`, in the
same backend module).
`gpu_available` tells whether the backend sees a GPU, where Keras may
run RNNs with fused cuDNN kernels, which have no second derivative.
"""

import contextlib
import importlib
import threading
from collections.abc import Callable
from collections.abc import Sequence

import keras

SUPPORTED = ("jax", "tensorflow", "torch")

Tap = Callable[[object], object]
Pullback = Callable[[Sequence], list]


def vjp(fn: Callable[[list, Tap], list], xs: Sequence) -> tuple[list, Pullback]:
    """Runs `fn(xs, tap)` and returns its outputs and their pullback.

    `fn` returns a list of tensors. It may call `tap(t)` on tensors it
    computes (an embedding's output, say) and must use the tensor `tap`
    returns in place of `t`; the pullback also differentiates with
    respect to those. Floating inputs only: integer tensors are not
    differentiable, tap what they are mapped to instead.

    Args:
        fn: The function, `fn(xs, tap) -> list of tensors`.
        xs: Floating tensors to differentiate with respect to.

    Returns:
        `(outputs, pullback)`: `pullback(cotangents)`, given one tensor
        per output, returns `sum_k <cotangents[k], d outputs[k] / d s>`
        for each `s` in `xs` and then each tapped tensor, in tap order.
        These gradients are themselves differentiable by the training
        step (with respect to the model's variables).

    Example: the gradient of `sum(tanh(x))`, to be differentiated again.

    >>> from keras import ops
    >>> x = ops.convert_to_tensor([0.0, 1.0])
    >>> outputs, pullback = vjp(lambda xs, tap: [ops.sum(ops.tanh(xs[0]))],
    ...                         [x])
    >>> (grad_x,) = pullback([ops.ones(())])
    >>> [round(float(g), 4) for g in ops.convert_to_numpy(grad_x)]
    [1.0, 0.42]
    """
    return _module().vjp(fn, list(xs))


def gpu_available() -> bool:
    """Whether the backend sees a GPU (where Keras may pick cuDNN)."""
    return _module().gpu_available()


_SWITCH = threading.local()


def fast_path(reference: Callable) -> Callable | None:
    """The backend's faster equivalent of the `keras.ops` function
    `reference`, or `None` where it has none.

    The equivalent has `reference`'s signature and returns the same
    values and gradients up to rounding (tests assert it, rtol 1e-5);
    the `keras.ops` function stays the definition. One liberty: a joint
    evaluation `z -> (phi, phi', phi'')` may return the function `phi''`
    in place of its values, which `keras_dreg.penalty.mean_squared_slope`
    (and its fast form, in the backward pass) then evaluates at `z`.
    Today: eager PyTorch has fused forms of the exact GELU's joint
    evaluation, of the activation that records it (whose backward pass
    also carries the penalty's gradient into `z`) and of the penalty's
    per-unit `mean(phi'(z)^2)`; under `torch.compile`, whose compiler
    fuses the `keras.ops` form, only the activation has one (torch's
    `gelu`, so that Inductor keeps less for the backward pass; see
    `keras_dreg.backend.torch`). TensorFlow and JAX have none.

    Example:

    >>> from keras_dreg import penalty
    >>> mean = fast_path(penalty.mean_squared_slope) or (
    ...     penalty.mean_squared_slope
    ... )
    """
    if not getattr(_SWITCH, "enabled", True):
        return None
    find = getattr(_MODULES.get(keras.backend.backend()), "fast_path", None)
    return None if find is None else find(reference)


@contextlib.contextmanager
def fast_paths(enabled: bool):
    """Turns the backend's fast paths off (or on) in this thread, within
    the block: with `fast_paths(False)` keras-dreg computes everything
    with the `keras.ops` reference.

    Example:

    >>> with fast_paths(False):
    ...     assert fast_path(len) is None
    """
    previous = getattr(_SWITCH, "enabled", True)
    _SWITCH.enabled = enabled
    try:
        yield
    finally:
        _SWITCH.enabled = previous


def _load_backend_module() -> dict:
    """`{backend: its module}` for Keras's backend, imported with the
    package (Keras fixes its backend at its own import), so that
    `_module()` is a lookup: an import inside a step that
    `torch.compile` traces would break its graph."""
    name = keras.backend.backend()
    if name not in SUPPORTED:
        return {}
    return {name: importlib.import_module(f"keras_dreg.backend.{name}")}


_MODULES = _load_backend_module()


def _module():
    name = keras.backend.backend()
    if name not in _MODULES:
        raise NotImplementedError(
            f"Double backpropagation needs an autodiff backend; the "
            f"'{name}' backend has none. Use one of {SUPPORTED} "
            "(KERAS_BACKEND)."
        )
    return _MODULES[name]


def custom_gradient(forward: Callable) -> Callable:
    """`keras.ops.custom_gradient` with one calling convention.

    `forward(*args)` returns `(value, grad)`, and `grad(upstream)` the
    gradient of each argument (`None` for those without one). Keras calls
    the gradient function with `upstream` positionally on JAX and
    TensorFlow and as a keyword on PyTorch; this shim hides that.

    Example: `2 * x` with its gradient written out.

    >>> double = custom_gradient(lambda x: (2 * x, lambda g: 2 * g))
    >>> keras.ops.convert_to_numpy(double(keras.ops.ones((2,)))).tolist()
    [2.0, 2.0]
    """

    @keras.ops.custom_gradient
    def with_gradient(*args):
        value, grad = forward(*args)

        def keras_grad(*upstreams, upstream=None):
            if upstream is None:
                (upstream,) = upstreams
            return grad(upstream)

        return value, keras_grad

    return with_gradient
