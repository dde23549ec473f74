"""The DREG penalty of one layer, in `keras.ops`.

A layer with kernel `W`, bias `b` and an elementwise activation `phi`
computes `z = h W + b`, `a = phi(z)`. Its Jacobian is
`da/dh = W diag(phi'(z))`, so

    ||J||_F^2 = sum_j phi'(z_j)^2 * ||w_j||^2

where `w_j` is the weight vector of unit `j` (its receptive field). For
layers applied at many positions (convolutions, `Dense` on sequences,
`EinsumDense`) the same sum over units is taken at every position and
averaged over batch and positions:

    DREG_layer(x) = mean_{batch, positions} sum_j phi'(z_j)^2 ||w_j||^2

For `Dense` this is the batch mean of the squared Frobenius norm of the
layer Jacobian; for a convolution with `padding="valid"` it is that norm
divided by the number of output positions.

When a `BatchNormalization` stands between the kernel layer and the
activation, unit `j` is further multiplied by the normalization's scale
`gamma_j / sqrt(var_j + eps)` (batch variance in training), so
`||w_j||^2` becomes `(gamma_j^2 / (var_j + eps)) * ||w_j||^2`. The
dependence of the batch statistics on `h` is ignored.

No second backward pass is needed: `phi'` has a closed form (see
`keras_dreg.derivatives`), and gradients flow through both `W` and
`phi'(z)`. Everything is computed in float32, also under mixed precision.
"""

import keras
from keras import layers
from keras import ops

DENSE_LAYERS = (layers.Dense,)
EINSUM_LAYERS = (layers.EinsumDense,)
SEPARABLE_LAYERS = (layers.SeparableConv1D, layers.SeparableConv2D)
DEPTHWISE_LAYERS = (layers.DepthwiseConv1D, layers.DepthwiseConv2D)
TRANSPOSE_LAYERS = (
    layers.Conv1DTranspose,
    layers.Conv2DTranspose,
    layers.Conv3DTranspose,
)
CONV_LAYERS = (layers.Conv1D, layers.Conv2D, layers.Conv3D)
KERNEL_LAYERS = (
    DENSE_LAYERS
    + EINSUM_LAYERS
    + SEPARABLE_LAYERS
    + DEPTHWISE_LAYERS
    + TRANSPOSE_LAYERS
    + CONV_LAYERS
)


def is_kernel_layer(layer: keras.layers.Layer) -> bool:
    """Whether DREG knows the Jacobian of `layer`'s linear part."""
    return isinstance(layer, KERNEL_LAYERS)


def unit_axis(layer: keras.layers.Layer) -> int:
    """The axis of `layer`'s output that indexes its units (channels).

    `-1` for `Dense`, `EinsumDense` and channels-last convolutions, `1`
    for channels-first convolutions.
    """
    if getattr(layer, "data_format", "channels_last") == "channels_first":
        return 1
    return -1


def unit_weight_norms(layer: keras.layers.Layer) -> keras.KerasTensor:
    """Squared norms `||w_j||^2` of each unit's weights, in float32.

    The result broadcasts against the layer's output `z`: shape
    `(units,)` for channels-last layers, `(channels, 1, ..., 1)` for
    channels-first convolutions, and one axis per output letter of an
    `EinsumDense` equation (size 1 where the kernel does not index it).

    - `Dense`, `Conv*`: kernel `(..., fan_in, units)`, sum over all but
      the last axis.
    - `Conv*Transpose`: kernel `(*k, units, fan_in)`; each output position
      sees `1/prod(strides)` of the taps on average, so the sum is divided
      by `prod(strides)` (exact for `strides=1`).
    - `DepthwiseConv*`: kernel `(*k, channels, multiplier)`; output
      channel `c * multiplier + m` sees `kernel[..., c, m]`.
    - `SeparableConv*`: the effective kernel of output `f` is
      `E[k, c, f] = sum_m depthwise[k, c, m] * pointwise[c * M + m, f]`.
    - `EinsumDense`: the kernel summed over its letters that the output
      does not carry.

    Example:

    >>> layer = keras.layers.Dense(3)
    >>> layer.build((None, 2))
    >>> unit_weight_norms(layer).shape
    (3,)
    """
    if isinstance(layer, EINSUM_LAYERS):
        return _einsum_norms(layer)
    if isinstance(layer, SEPARABLE_LAYERS):
        norms = _separable_norms(layer)
    elif isinstance(layer, DEPTHWISE_LAYERS):
        kernel = ops.cast(layer.kernel, "float32")
        norms = ops.reshape(
            ops.sum(ops.square(kernel), axis=tuple(range(layer.rank))), (-1,)
        )
    elif isinstance(layer, TRANSPOSE_LAYERS):
        kernel = ops.cast(layer.kernel, "float32")
        axes = tuple(range(layer.rank)) + (layer.rank + 1,)
        stride_count = 1
        for stride in layer.strides:
            stride_count *= stride
        norms = ops.sum(ops.square(kernel), axis=axes) / stride_count
    else:
        norms = squared_column_norms(layer.kernel)
    if unit_axis(layer) == 1:
        norms = ops.reshape(norms, (-1,) + (1,) * layer.rank)
    return norms


def squared_column_norms(kernel) -> keras.KerasTensor:
    """`sum(kernel**2)` over all axes but the last, in float32.

    The same value as `ops.sum(ops.square(kernel), axis=...)`, with the
    gradient `2 * kernel * upstream` written out: one pass over the
    kernel in the backward pass, where autodiff of `sum(square(kernel))`
    takes three without a fusing compiler (PyTorch's eager `pow`
    derivative), each into new memory.

    Example:

    >>> squared_column_norms(np.array([[3.0, 1.0], [4.0, 0.0]]))
    array([25., 1.], dtype=float32)
    """

    @ops.custom_gradient
    def squared_norms(kernel):
        def grad(*args, upstream=None):
            if upstream is None:
                (upstream,) = args
            return kernel * (2.0 * upstream)

        axes = tuple(range(kernel.ndim - 1))
        return ops.sum(ops.square(kernel), axis=axes), grad

    return squared_norms(ops.cast(kernel, "float32"))


def _separable_norms(layer):
    depthwise = ops.cast(layer.depthwise_kernel, "float32")
    pointwise = ops.cast(layer.pointwise_kernel, "float32")
    channels, multiplier = depthwise.shape[-2], depthwise.shape[-1]
    pointwise = ops.reshape(pointwise, (channels, multiplier, -1))
    effective = ops.einsum("...cm,cmf->...cf", depthwise, pointwise)
    return ops.sum(ops.square(effective), axis=tuple(range(effective.ndim - 1)))


def _einsum_norms(layer):
    inputs_spec, output_spec = layer.equation.split("->")
    kernel_spec = inputs_spec.split(",")[1].strip()
    output_spec = output_spec.strip()
    if "..." in output_spec and not output_spec.startswith("..."):
        raise ValueError(
            f"EinsumDense layer '{layer.name}' has equation "
            f"'{layer.equation}'; DREG supports an ellipsis only at the "
            "start of the output. Exclude this layer with "
            f"`exclude=['{layer.name}']`."
        )
    output_letters = output_spec.replace("...", "")
    unit_letters = "".join(c for c in output_letters if c in kernel_spec)
    kernel = ops.cast(layer.kernel, "float32")
    norms = ops.einsum(f"{kernel_spec}->{unit_letters}", ops.square(kernel))
    sizes = dict(zip(unit_letters, norms.shape))
    return ops.reshape(norms, tuple(sizes.get(c, 1) for c in output_letters))


def batch_norm_scale(
    batch_norm: keras.layers.BatchNormalization, inputs, training: bool
):
    """Per-channel scale `gamma / sqrt(var + eps)` a `BatchNormalization`
    applied to `inputs`, shaped to broadcast against them.

    In training (and when the layer is trainable) `var` is the batch
    variance, as the layer computes it; otherwise the moving variance.
    """
    inputs = ops.cast(inputs, "float32")
    axis = batch_norm.axis % inputs.ndim
    if training and batch_norm.trainable:
        reduction_axes = tuple(i for i in range(inputs.ndim) if i != axis)
        _, variance = ops.moments(
            inputs, axes=reduction_axes, synchronized=batch_norm.synchronized
        )
    else:
        variance = ops.cast(batch_norm.moving_variance, "float32")
    scale = ops.rsqrt(variance + batch_norm.epsilon)
    if batch_norm.scale:
        scale = scale * ops.cast(batch_norm.gamma, "float32")
    shape = [1] * inputs.ndim
    shape[axis] = -1
    return ops.reshape(scale, shape)


def layer_penalty(
    layer: keras.layers.Layer,
    pre_activation,
    derivative,
    unit_scale=None,
    stop_gradient_derivative: bool = False,
    second_derivative=None,
    evaluated=None,
    input_shape=None,
):
    """`mean_{batch, positions} sum_j phi'(z_j)^2 ||w_j||^2` for one call.

    Computed as `sum_j ||w_j||^2 mean_{batch, positions} phi'(z_j)^2`:
    `phi'(z)^2` is reduced to one value per unit first, so the weighting
    runs at the size of the kernel, not of the activations.

    Args:
        layer: The kernel layer.
        pre_activation: `z`, the input of the activation.
        derivative: `phi'`, elementwise, in `keras.ops`.
        unit_scale: Optional per-unit factor that multiplies `z` between
            the layer and the activation (a `BatchNormalization` scale).
        stop_gradient_derivative: Treat `phi'(z)` as a constant in the
            backward pass.
        second_derivative: Optional `phi''` in closed form. Given, the
            gradient of `phi'(z)^2` with respect to `z` is
            `2 phi'(z) phi''(z)`, in a few passes over `z`, instead of
            autodiff through every operation of `phi'`.
        evaluated: Optional `(phi'(z), phi''(z))`, float32, already
            evaluated (by the training step's forward pass, see
            `keras_dreg.capture`); used instead of evaluating them again.

    Returns:
        A float32 scalar.
    """
    z = ops.cast(pre_activation, "float32")
    norms = unit_weight_norms(layer)
    unit_shape = (1,) * (z.ndim - norms.ndim) + tuple(norms.shape)
    norms = ops.reshape(norms, unit_shape)
    axes = tuple(i for i, size in enumerate(unit_shape) if size == 1)
    if evaluated is None and second_derivative and not stop_gradient_derivative:
        constant_z = ops.stop_gradient(z)
        evaluated = (derivative(constant_z), second_derivative(constant_z))
    if evaluated is None or stop_gradient_derivative:
        slope = derivative(z) if evaluated is None else evaluated[0]
        slope = ops.cast(slope, "float32")
        if stop_gradient_derivative:
            slope = ops.stop_gradient(slope)
        squared_slope = ops.mean(ops.square(slope), axis=axes, keepdims=True)
    else:
        slope, curvature = (ops.cast(t, "float32") for t in evaluated)
        squared_slope = _mean_squared_slope(z, slope, curvature, axes)
    if unit_scale is not None:
        squared_slope = squared_slope * ops.square(unit_scale)
    return ops.sum(squared_slope * norms)


def _mean_squared_slope(z, slope, curvature, axes):
    """`mean(phi'(z)^2)` over `axes`, with its gradient in closed form.

    `slope` and `curvature` are `phi'(z)` and `phi''(z)`, evaluated
    without gradient history. `d mean(phi'(z)^2) / dz =
    2 phi'(z) phi''(z) / count`, where `count` is the number of values
    averaged per unit.
    """

    count = 1
    for axis in axes:
        count = count * ops.shape(z)[axis]
    if not isinstance(count, int):  # a dynamic size, in a traced step
        count = ops.cast(count, "float32")

    @ops.custom_gradient
    def mean_squared_slope(z, slope, curvature):
        def grad(*args, upstream=None):
            if upstream is None:
                (upstream,) = args
            return upstream * (2.0 / count) * slope * curvature, None, None

        return ops.mean(ops.square(slope), axis=axes, keepdims=True), grad

    return mean_squared_slope(z, slope, curvature)
