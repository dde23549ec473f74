"""PyTorch: `vjp`, and the fast paths of the exact GELU (`fast_path`).

`vjp` is `torch.autograd.grad(..., create_graph=True)`.

Inputs are detached leaves that require grad; a tapped tensor `t`
becomes `t + delta` with `delta` a zero leaf, so frozen layers can be
tapped too.

`fn` runs with torch's math kernel of scaled dot-product attention
(`SDPBackend.MATH`, plain differentiable ops): the fused kernels that
torch picks otherwise (flash and memory-efficient attention, on CPU and
GPU) have no second derivative, so `MultiHeadAttention` could not be
differentiated twice.
"""

import math

import torch
from torch.nn.attention import SDPBackend
from torch.nn.attention import sdpa_kernel


def vjp(fn, xs):
    xs = [x.detach().requires_grad_(True) for x in xs]
    deltas = []

    def tap(t):
        delta = torch.zeros_like(t, requires_grad=True)
        deltas.append(delta)
        return t + delta

    with sdpa_kernel(SDPBackend.MATH):
        outputs = fn(xs, tap)
    sources = [*xs, *deltas]

    def gradients(cotangents):
        grads = torch.autograd.grad(
            outputs,
            sources,
            grad_outputs=list(cotangents),
            create_graph=True,
            retain_graph=True,
            allow_unused=True,
        )
        return [
            torch.zeros_like(s) if g is None else g
            for g, s in zip(grads, sources)
        ]

    return outputs, gradients


def gpu_available():
    return torch.cuda.is_available()


def fast_path(reference):
    """The fast form of `reference`, or `None`. Eager: torch's fused
    kernels and one `torch.autograd.Function` per step of the exact
    GELU's part. Under `torch.compile`: the activation only
    (`compiled_activation_with_derivatives`); Inductor fuses the
    `keras.ops` form of the rest."""
    from keras_dreg import capture
    from keras_dreg import derivatives
    from keras_dreg import penalty

    if torch.compiler.is_compiling():
        if reference is capture.activation_with_derivatives:
            return compiled_activation_with_derivatives
        return None
    return {
        derivatives._gelu_joint: gelu_value_and_derivatives,
        capture.activation_with_derivatives: activation_with_derivatives,
        penalty.mean_squared_slope: mean_squared_slope,
    }.get(reference)


def activation_with_derivatives(z, value_and_derivatives, rows=None):
    """`keras_dreg.capture.activation_with_derivatives` for the exact
    GELU on a float32 `z`: one `torch.autograd.Function`
    (`_GeluWithDerivatives`) whose backward pass also takes the
    penalty's gradient into `z`; other activations and dtypes: the
    reference.

    The returned `gelu''` is deferred (`_GeluCurvature`) and carries a
    `token` output of that function: `mean_squared_slope` sends its
    gradient (per unit, `upstream * 2 / count`, broadcast without a
    copy) to the token instead of into `z`, and the activation's
    backward forms the whole gradient into `z`,
    `phi'(z) * (upstream + token_grad * phi''(z))`, in one new tensor.
    Separately, the penalty's `phi'(z) phi''(z)` term and the
    activation's `upstream * phi'(z)` are two new tensors that autograd
    then adds up.

    With `rows` (DREG's `sample_size`, fewer than the batch), `phi'` and
    the token are of the first `rows` examples only: the forward pass is
    torch's `gelu` plus `gelu'` on those rows, the backward pass torch's
    `gelu_backward`, as without DREG, plus the penalty's term added into
    the first `rows` rows of that gradient. (Slicing `z` instead would
    scatter the penalty's gradient into a zero tensor of the batch's
    size and add that.)

    Example:

    >>> from keras_dreg import derivatives
    >>> z = torch.zeros(2, requires_grad=True)
    >>> value, slope, curvature = activation_with_derivatives(
    ...     z, derivatives.describe_activation("gelu").value_and_derivatives
    ... )
    >>> slope.tolist(), curvature.pre_activation is z
    ([0.5, 0.5], True)
    """
    from keras_dreg import capture
    from keras_dreg import penalty

    if not _is_float32_exact_gelu(z, value_and_derivatives):
        return capture.activation_with_derivatives(
            z, value_and_derivatives, rows
        )
    if penalty.takes_every_example(rows, z):
        rows = None
    value, slope, token = _GeluWithDerivatives.apply(z, rows)
    return value, slope, _GeluCurvature(z, token)


def compiled_activation_with_derivatives(z, value_and_derivatives, rows=None):
    """`keras_dreg.capture.activation_with_derivatives` for the exact
    GELU on a float32 `z` under `torch.compile`: torch's `gelu`, whose
    backward pass Inductor derives from `z`, `gelu'` of the first `rows`
    examples without gradient history, and the function `gelu''`; other
    activations and dtypes: the reference.

    The reference's activation is a Keras `custom_gradient`, which on
    PyTorch saves all its inputs (`z`, `phi(z)` and `phi'(z)`) for the
    backward pass, and Inductor keeps them: this form took the
    benchmark's CNN step from 2.02x the plain step's memory to 1.68x
    (MLP 1.99x to 1.80x), in the same time (measured at `4a54865`;
    `ActivationCapture.take_records` has since brought the CNN to 1.14x
    and the MLP to 1.46x, docs/benchmarks.md).

    Example:

    >>> from keras_dreg import derivatives
    >>> value, slope, curvature = compiled_activation_with_derivatives(
    ...     torch.zeros(2),
    ...     derivatives.describe_activation("gelu").value_and_derivatives,
    ... )
    >>> slope.tolist(), curvature is gelu_curvature
    ([0.5, 0.5], True)
    """
    from keras_dreg import capture
    from keras_dreg import penalty

    if not _is_float32_exact_gelu(z, value_and_derivatives):
        return capture.activation_with_derivatives(
            z, value_and_derivatives, rows
        )
    first = z if penalty.takes_every_example(rows, z) else z[:rows]
    # Not `gelu_slope`: its `out=` form, functionalized by Inductor,
    # measured 1.17-1.18x against 1.11-1.15x for this one (CNN).
    slope = torch.ops.aten.gelu_backward(torch.ones_like(first), first.detach())
    return torch.nn.functional.gelu(z), slope, gelu_curvature


def _is_float32_exact_gelu(z, value_and_derivatives) -> bool:
    from keras_dreg import derivatives

    return (
        value_and_derivatives is derivatives._gelu_joint
        and z.dtype == torch.float32
    )


class _GeluWithDerivatives(torch.autograd.Function):
    @staticmethod
    def forward(ctx, z, rows):
        value = torch.nn.functional.gelu(z)
        slope = gelu_slope(z if rows is None else z[:rows])
        ctx.rows = rows
        ctx.save_for_backward(z, slope)
        ctx.mark_non_differentiable(slope)
        ctx.set_materialize_grads(False)
        return value, slope, z.new_zeros(()).expand(slope.shape)

    @staticmethod
    def backward(ctx, upstream, _, token_grad):
        z, slope = ctx.saved_tensors
        if ctx.rows is not None:
            return _gelu_grad_with_first_rows(
                upstream, token_grad, z, slope, ctx.rows
            ), None
        if token_grad is None:
            return None if upstream is None else upstream * slope, None
        grad = gelu_curvature(z).mul_(token_grad)
        if upstream is not None:
            grad.add_(upstream)
        return grad.mul_(slope), None


def _gelu_grad_with_first_rows(upstream, token_grad, z, slope, rows):
    """`upstream * gelu'(z)`, plus `token_grad * gelu'(z) gelu''(z)` on
    the first `rows` examples (`slope` is their `gelu'`)."""
    if upstream is None:
        grad = torch.zeros_like(z)
    else:
        grad = torch.ops.aten.gelu_backward(upstream, z)
    if token_grad is not None:
        term = gelu_curvature(z[:rows]).mul_(slope)
        grad[:rows].addcmul_(term, token_grad)
    return grad


class _GeluCurvature:
    """The function `gelu''`, deferred, and the `token` through which
    `mean_squared_slope` sends its gradient for `pre_activation` (the
    `z` it was evaluated on), or for its first examples (the token's
    size), into the activation's backward pass."""

    def __init__(self, pre_activation, token):
        self.pre_activation = pre_activation
        self.token = token

    def __call__(self, z):
        return gelu_curvature(z)

    def stands_for(self, z) -> bool:
        """Whether `z` is what the token stands for: `pre_activation`
        itself, or (the token having fewer rows) the view of its first
        rows that `keras_dreg.penalty.layer_penalty` cuts for
        `sample_size` (same memory, strides and autograd base)."""
        whole = self.pre_activation
        if z is whole:
            return self.token.shape == whole.shape
        return (
            z.shape == self.token.shape
            and z.stride() == whole.stride()
            and z.data_ptr() == whole.data_ptr()
            and z._base is (whole if whole._base is None else whole._base)
        )


def gelu_value_and_derivatives(z):
    """`(gelu(z), gelu'(z), gelu'')` of the exact GELU, float32: the
    third is the function `gelu''` (`gelu_curvature`), not its values,
    which `mean_squared_slope` evaluates from `z` in its backward pass,
    only when a gradient is asked for.

        gelu(z) = z Phi(z),  gelu' = Phi(z) + z N(z)

    `Phi` and `N` the standard normal CDF and density. `gelu` and
    `gelu'` are torch's fused kernels (`gelu`, and `gelu_slope`): one
    pass and one new tensor each, against some 13 passes of the
    `keras.ops` form (`derivatives._gelu_joint`).

    Example:

    >>> value, slope, curvature = gelu_value_and_derivatives(
    ...     torch.zeros(2)
    ... )
    >>> slope.tolist(), curvature is gelu_curvature
    ([0.5, 0.5], True)
    """
    return torch.nn.functional.gelu(z), gelu_slope(z), gelu_curvature


def gelu_slope(z):
    """`gelu'(z)`: torch's `gelu_backward` with a unit upstream, written
    over that upstream (one pass and one new tensor). A `ones_like(z)`
    upstream keeps `z`'s memory layout (a convolution's output may be a
    permuted view), where an expanded scalar would make `gelu_backward`
    take its slow strided loop.

    Example:

    >>> gelu_slope(torch.zeros(2)).tolist()
    [0.5, 0.5]
    """
    slope = torch.ones_like(z)
    return torch.ops.aten.gelu_backward.grad_input(slope, z, grad_input=slope)


def gelu_curvature(z):
    """`gelu''(z) = N(z) (2 - z^2)`, a new tensor: four in-place passes
    after `z^2`.

    Example:

    >>> curvature = gelu_curvature(torch.tensor([0.0, 2.0]))
    >>> [round(c, 4) for c in curvature.tolist()]
    [0.7979, -0.108]
    """
    curvature = torch.square(z)
    density = torch.mul(curvature, -0.5).exp_().mul_(_INV_SQRT_2PI)
    return curvature.neg_().add_(2.0).mul_(density)


_INV_SQRT_2PI = 0.3989422804014327


def mean_squared_slope(z, slope, curvature, axes):
    """`mean(phi'(z)^2)` over `axes` (kept), with the gradient
    `upstream * 2 phi'(z) phi''(z) / count` into `z`: one
    `torch.autograd.Function`, the sum of squares in one reduction,
    the gradient in two in-place passes over `phi''(z)`. `slope` is
    `phi'(z)`, without gradient history; `curvature` is `phi''(z)`
    likewise, or the function `phi''` (returning a new tensor, which the
    backward pass overwrites), then evaluated from `z` in the backward
    pass (not at all without one). See
    `keras_dreg.penalty.mean_squared_slope`, the definition.

    Example:

    >>> z = torch.zeros(4, 3, requires_grad=True)
    >>> mean = mean_squared_slope(z, z + 0.5, lambda t: t + 1.0, (0,))
    >>> mean.tolist()
    [[0.25, 0.25, 0.25]]
    """
    if isinstance(curvature, _GeluCurvature) and curvature.stands_for(z):
        return _MeanSquaredSlopeByToken.apply(
            curvature.token, slope, tuple(axes)
        )
    return _MeanSquaredSlope.apply(z, slope, curvature, tuple(axes))


class _MeanSquaredSlope(torch.autograd.Function):
    @staticmethod
    def forward(ctx, z, slope, curvature, axes):
        count = math.prod(z.shape[axis] for axis in axes)
        ctx.count = count
        if callable(curvature):
            ctx.curvature = curvature
            ctx.save_for_backward(slope, z)
        else:
            ctx.curvature = None
            ctx.save_for_backward(slope, curvature)
        return torch.sum(slope * slope, dim=axes, keepdim=True).div_(count)

    @staticmethod
    def backward(ctx, upstream):
        slope, saved = ctx.saved_tensors
        if ctx.curvature is None:
            grad = torch.mul(slope, saved)
        else:
            grad = ctx.curvature(saved).mul_(slope)
        grad.mul_(upstream * (2.0 / ctx.count))
        return grad, None, None, None


class _MeanSquaredSlopeByToken(torch.autograd.Function):
    """`mean(phi'(z)^2)` whose gradient, `upstream * 2 / count` per unit,
    goes to the activation's token (`_GeluWithDerivatives`), which
    multiplies it by `phi'(z) phi''(z)`."""

    @staticmethod
    def forward(ctx, token, slope, axes):
        count = math.prod(slope.shape[axis] for axis in axes)
        ctx.count = count
        ctx.shape = token.shape
        return torch.sum(slope * slope, dim=axes, keepdim=True).div_(count)

    @staticmethod
    def backward(ctx, upstream):
        return (upstream * (2.0 / ctx.count)).expand(ctx.shape), None, None
