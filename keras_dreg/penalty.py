"""The DREG penalty of one layer, in `keras.ops`.

A layer with kernel `W`, bias `b` and an elementwise activation `phi`
computes `z = h W + b`, `a = phi(z)`. Its Jacobian is
`da/dh = W diag(phi'(z))`, so

    ||J||_F^2 = sum_j phi'(z_j)^2 * ||w_j||^2

where `w_j` is the weight vector of unit `j` (its receptive field). For
layers applied at many positions (convolutions, `Dense` on sequences,
`EinsumDense`) the same sum over units is taken at every position `p`
and averaged over batch and positions:

    DREG_layer(x) = mean_{batch, p} sum_j phi'(z_pj)^2 N[p, j]

`N[p, j]` is the squared norm of the weights that output `(p, j)`
actually reads: the kernel taps that land inside the input at `p`. A
tap that lands on padding (`"same"`, `"causal"`, the borders and stride
gaps of a transposed convolution) contributes nothing. With it, the
layer term is exactly `||J||_F^2 / (number of output positions)` for
every convolution, any padding, stride and dilation, transposed or not
(and `||J||_F^2` itself for `Dense`).

- Where every output position reads every tap (`Dense`, `EinsumDense`,
  convolutions with `padding="valid"`, 1-tap kernels), `N[p, j] =
  ||w_j||^2` is one norm per unit (`unit_weight_norms`), and
  `phi'(z)^2` is first averaged over batch and positions.
- Elsewhere (`needs_input_shape(layer)`), `N` is one small convolution
  of a ones-image with the per-tap squared kernel norms
  (`position_weight_norms`), and `phi'(z)^2` is averaged over the batch
  only.

When a `BatchNormalization` stands between the kernel layer and the
activation, unit `j` is further multiplied by the normalization's scale
`gamma_j / sqrt(var_j + eps)` (batch variance in training), so
`N[p, j]` becomes `(gamma_j^2 / (var_j + eps)) * N[p, j]`. The
dependence of the batch statistics on `h` is ignored.

No second backward pass is needed: `phi'` has a closed form (see
`keras_dreg.derivatives`), and gradients flow through both `W` (also
through `N`, built from ops on the kernel) and `phi'(z)`. Everything is
computed in float32, also under mixed precision.
"""

import math

import keras
from keras import layers
from keras import ops

from keras_dreg.backend import custom_gradient
from keras_dreg.backend import fast_path

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

    Exact per-position weights `N[p, j]` wherever every output position
    reads every kernel tap (`needs_input_shape(layer)` is False); for
    the other convolutions they are the norms of a whole receptive
    field, and the penalty uses `position_weight_norms` instead.

    The result broadcasts against the layer's output `z`: shape
    `(units,)` for channels-last layers, `(channels, 1, ..., 1)` for
    channels-first convolutions, and one axis per output letter of an
    `EinsumDense` equation (size 1 where the kernel does not index it).

    - `Dense`, `Conv*`: kernel `(..., fan_in, units)`, sum over all but
      the last axis.
    - `Conv*Transpose`: kernel `(*k, units, fan_in)`; an interior output
      position sees `1/prod(strides)` of the taps on average, so the sum
      is divided by `prod(strides)`. Border positions see fewer: the
      penalty uses `position_weight_norms` for these layers.
    - `DepthwiseConv*`: kernel `(*k, channels, multiplier)`; output
      channel `c * multiplier + m` sees `kernel[..., c, m]`.
    - `SeparableConv*`: the effective kernel of output `f` is
      `E[k, c, f] = sum_m depthwise[k, c, m] * pointwise[c * M + m, f]`.
    - `EinsumDense`: the kernel summed over its letters that the output
      does not carry.

    Example:

    >>> layer = keras.layers.Dense(3)
    >>> layer.build((None, 2))
    >>> tuple(unit_weight_norms(layer).shape)
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


def needs_input_shape(layer: keras.layers.Layer) -> bool:
    """Whether `layer`'s weight norms vary with the output position.

    True for the convolutions where some output position reads fewer
    kernel taps than another, because a tap lands on padding: every
    `Conv*Transpose`, and `Conv*`, `DepthwiseConv*`, `SeparableConv*`
    with `padding="same"` or `"causal"` and a kernel of more than one
    tap. `layer_penalty` needs the shape of their input
    (`position_weight_norms`); everywhere else one norm per unit is
    exact.

    Example:

    >>> needs_input_shape(keras.layers.Conv2D(4, 3, padding="same"))
    True
    >>> needs_input_shape(keras.layers.Conv2D(4, 3))
    False
    """
    if isinstance(layer, TRANSPOSE_LAYERS):
        return True
    if not isinstance(layer, CONV_LAYERS + DEPTHWISE_LAYERS + SEPARABLE_LAYERS):
        return False
    return layer.padding != "valid" and any(k > 1 for k in layer.kernel_size)


def position_weight_norms(
    layer: keras.layers.Layer, input_shape
) -> keras.KerasTensor:
    """`N[p, j]`: the squared norm of the weights output `(p, j)` reads.

        N[p, j] = sum_{taps k inside the input at p} T[k, j],
        T[k, j] = sum_c W[k, c, j]^2

    `T` holds the per-tap squared norms of unit `j` (summed over input
    channels). `N` is the layer's own convolution, with its strides,
    padding, dilation (and output padding), of a ones-image of the
    input's spatial shape (batch 1, one channel) with kernel `T`: a tap
    on padding reads a zero. For a transposed convolution it is the
    transposed convolution of that image with kernel `(*k, units, 1)`;
    for `"causal"` padding the image is padded on the left, as `Conv1D`
    pads its input. `N` is built from ops on the kernel, so gradients
    flow to it.

    Args:
        layer: A convolution (`Conv*`, `Conv*Transpose`,
            `DepthwiseConv*`, `SeparableConv*`).
        input_shape: The shape of the layer's input at that call; the
            batch size may be `None`, the spatial sizes may not.

    Returns:
        A float32 tensor shaped like one sample of the layer's output:
        `(*spatial, units)`, or `(units, *spatial)` for channels-first
        layers.

    Example:

    >>> layer = keras.layers.Conv1D(1, 3, padding="same", use_bias=False)
    >>> layer.build((None, 4, 1))
    >>> _ = layer.kernel.assign(np.ones((3, 1, 1)))
    >>> norms = position_weight_norms(layer, (None, 4, 1))
    >>> keras.ops.convert_to_numpy(norms)[:, 0].tolist()
    [2.0, 3.0, 3.0, 2.0]
    """
    ones = ops.ones((1,) + _spatial_shape(layer, input_shape) + (1,))
    taps = _tap_norms(layer)
    options = dict(
        strides=list(layer.strides),
        dilation_rate=layer.dilation_rate,
        data_format="channels_last",
    )
    if isinstance(layer, TRANSPOSE_LAYERS):
        # Two identical images: with one, PyTorch's (2.13, CPU) gradient
        # of `conv_transpose` w.r.t. the kernel fails ("grad_weight needs
        # to be contiguous").
        norms = ops.conv_transpose(
            ops.concatenate([ones, ones]),
            ops.expand_dims(taps, -1),
            padding=layer.padding,
            output_padding=layer.output_padding,
            **options,
        )
    else:
        padding = layer.padding
        if padding == "causal":
            left = layer.dilation_rate[0] * (layer.kernel_size[0] - 1)
            ones = ops.pad(ones, [[0, 0], [left, 0], [0, 0]])
            padding = "valid"
        norms = ops.conv(
            ones, ops.expand_dims(taps, -2), padding=padding, **options
        )
    norms = norms[0]
    if unit_axis(layer) == 1:
        norms = ops.moveaxis(norms, -1, 0)
    return norms


def _tap_norms(layer):
    """`T[k, j]`, shape `(*k, units)`: unit `j`'s squared norm at tap `k`."""
    if isinstance(layer, SEPARABLE_LAYERS):
        return ops.sum(ops.square(_separable_kernel(layer)), axis=-2)
    kernel = ops.cast(layer.kernel, "float32")
    if isinstance(layer, DEPTHWISE_LAYERS):
        return ops.reshape(ops.square(kernel), tuple(kernel.shape[:-2]) + (-1,))
    if isinstance(layer, TRANSPOSE_LAYERS):
        return ops.sum(ops.square(kernel), axis=-1)
    return ops.sum(ops.square(kernel), axis=-2)


def _spatial_shape(layer, input_shape):
    shape = tuple(input_shape) if input_shape is not None else None
    if shape is None or len(shape) != layer.rank + 2:
        raise ValueError(
            f"Layer '{layer.name}' ({type(layer).__name__}, "
            f"padding='{layer.padding}'): its weight norms depend on the "
            "output position, so its DREG term needs `input_shape`, the "
            f"shape of its input at that call (rank {layer.rank + 2}); "
            f"got {input_shape}."
        )
    spatial = shape[2:] if unit_axis(layer) == 1 else shape[1:-1]
    if any(size is None for size in spatial):
        raise ValueError(
            f"Layer '{layer.name}' ({type(layer).__name__}, "
            f"padding='{layer.padding}'): its DREG term needs the spatial "
            f"sizes of its input in `input_shape`, got {input_shape}."
        )
    return tuple(int(size) for size in spatial)


def squared_column_norms(kernel) -> keras.KerasTensor:
    """`sum(kernel**2)` over all axes but the last, in float32.

    The same value as `ops.sum(ops.square(kernel), axis=...)`, with the
    gradient `2 * kernel * upstream` written out: one pass over the
    kernel in the backward pass, where autodiff of `sum(square(kernel))`
    takes three without a fusing compiler (PyTorch's eager `pow`
    derivative), each into new memory.

    Example:

    >>> norms = squared_column_norms(np.array([[3.0, 1.0], [4.0, 0.0]]))
    >>> keras.ops.convert_to_numpy(norms).tolist()
    [25.0, 1.0]
    """

    def squared_norms(kernel):
        axes = tuple(range(kernel.ndim - 1))
        value = ops.sum(ops.square(kernel), axis=axes)
        return value, lambda upstream: kernel * (2.0 * upstream)

    return custom_gradient(squared_norms)(ops.cast(kernel, "float32"))


def _separable_norms(layer):
    effective = _separable_kernel(layer)
    return ops.sum(ops.square(effective), axis=tuple(range(effective.ndim - 1)))


def _separable_kernel(layer):
    """`E[k, c, f] = sum_m depthwise[k, c, m] pointwise[c * M + m, f]`."""
    depthwise = ops.cast(layer.depthwise_kernel, "float32")
    pointwise = ops.cast(layer.pointwise_kernel, "float32")
    channels, multiplier = depthwise.shape[-2], depthwise.shape[-1]
    pointwise = ops.reshape(pointwise, (channels, multiplier, -1))
    return ops.einsum("...cm,cmf->...cf", depthwise, pointwise)


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
    mask=None,
    sample_size: int | None = None,
):
    """`mean_{batch, p} sum_j phi'(z_pj)^2 N[p, j]` for one call.

    `N[p, j]` is the squared norm of the weights output `(p, j)` reads
    (see the module docstring), so for a convolution the result is
    `||J||_F^2 / (number of output positions)`, batch-mean.

    - Where `N[p, j] = ||w_j||^2` for every `p` (`needs_input_shape` is
      False): computed as `sum_j ||w_j||^2 mean_{batch, p} phi'(z_pj)^2`,
      `phi'(z)^2` reduced to one value per unit first, so the weighting
      runs at the size of the kernel, not of the activations.
    - Elsewhere: `sum_{p, j} N[p, j] mean_batch phi'(z_pj)^2 / P`, `P`
      the number of output positions and `N` from
      `position_weight_norms(layer, input_shape)`.

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
            `keras_dreg.capture`; with `sample_size`, they may be of the
            first `sample_size` examples only); used instead of
            evaluating them again.
            `phi''(z)` may be the function `phi''` instead (a backend's
            fast path defers it to the backward pass, see
            `mean_squared_slope`).
        input_shape: The shape of the layer's input at that call (the
            batch size may be `None`). Required where
            `needs_input_shape(layer)`; ignored elsewhere.
        mask: Optional Keras mask of the layer's input (`Embedding(...,
            mask_zero=True)` before a `Dense` on tokens), shaped as `z`
            without its unit axis: masked positions are left out of the
            mean (`sum(mask * phi'^2) / sum(mask)` over the batch and
            positions). A mask of another shape is not a mask of
            positions and is not used.
        sample_size: Optional `k`: average over the first `k` examples
            of the batch only (`z`, `evaluated` and `mask` are sliced;
            `unit_scale`, computed by the caller, stays the whole
            batch's). An unbiased estimate of the term when the batch
            is in random order; `None`, or `k` at least the batch size,
            takes every example.

    Returns:
        A float32 scalar.

    Raises:
        ValueError: `input_shape` is missing (or lacks spatial sizes)
            for a layer that needs it.

    Example:

    >>> layer = keras.layers.Conv1D(2, 3, padding="same")
    >>> x = np.ones((4, 5, 3), "float32")
    >>> z = layer(x)
    >>> term = layer_penalty(
    ...     layer, z, lambda t: 1.0 - ops.tanh(t) ** 2, input_shape=x.shape
    ... )
    """
    if sample_size is not None:
        pre_activation, evaluated, mask = _first_examples(
            sample_size, pre_activation, evaluated, mask
        )
    z = ops.cast(pre_activation, "float32")
    if needs_input_shape(layer):
        norms = ops.expand_dims(position_weight_norms(layer, input_shape), 0)
        units = norms.shape[unit_axis(layer)]
        norms = norms / (math.prod(norms.shape) // units)  # positions
        axes = (0,)
    else:
        norms = unit_weight_norms(layer)
        unit_shape = (1,) * (z.ndim - norms.ndim) + tuple(norms.shape)
        norms = ops.reshape(norms, unit_shape)
        axes = tuple(i for i, size in enumerate(unit_shape) if size == 1)
    if evaluated is None and second_derivative and not stop_gradient_derivative:
        constant_z = ops.stop_gradient(z)
        evaluated = (derivative(constant_z), second_derivative(constant_z))
    weight = _position_weight(mask, z, axes)
    if evaluated is None or stop_gradient_derivative:
        slope = derivative(z) if evaluated is None else evaluated[0]
        slope = ops.cast(slope, "float32")
        if stop_gradient_derivative:
            slope = ops.stop_gradient(slope)
        squared = ops.square(slope)
        if weight is not None:
            squared = squared * weight
        squared_slope = ops.mean(squared, axis=axes, keepdims=True)
    else:
        slope, curvature = (
            t if callable(t) else ops.cast(t, "float32") for t in evaluated
        )
        squared_slope = _mean_squared_slope(z, slope, curvature, axes, weight)
    if unit_scale is not None:
        squared_slope = squared_slope * ops.square(unit_scale)
    return ops.sum(squared_slope * norms)


def _first_examples(k, pre_activation, evaluated, mask):
    """`z`, `(phi', phi'')` and `mask` cut to the first `k` examples
    (axis 0; a deferred `phi''`, a function, as it is; `phi'` evaluated
    on `k` examples only, as `keras_dreg.capture` does, stays the same);
    unchanged where the batch has at most `k` (then the term is computed
    on the very same tensors as without `sample_size`)."""
    if takes_every_example(k, pre_activation):
        return pre_activation, evaluated, mask
    if evaluated is not None:
        evaluated = tuple(t if callable(t) else t[:k] for t in evaluated)
    if mask is not None and tuple(mask.shape[:1]) == (pre_activation.shape[0],):
        mask = mask[:k]
    return _first_rows(pre_activation, k), evaluated, mask


def _first_rows(tensor, k: int):
    """`tensor[:k]`, cut with `keras.ops.slice`: on TensorFlow its
    gradient is a `Pad`, where `[:k]`'s is a `StridedSliceGrad`, 3.5 ms
    slower on a 128x26x26x32 float32 tensor (2 threads)."""
    rest = list(ops.shape(tensor)[1:])
    return ops.slice(tensor, [0] * len(tensor.shape), [k, *rest])


def takes_every_example(sample_size: int | None, tensor) -> bool:
    """Whether the first `sample_size` examples of `tensor` (axis 0) are
    all of them: `sample_size` is `None`, or at least a static batch
    size.

    Example:

    >>> batch = np.zeros((3, 2))
    >>> takes_every_example(4, batch), takes_every_example(2, batch)
    (True, False)
    """
    batch = tensor.shape[0]
    return sample_size is None or (batch is not None and batch <= sample_size)


def _position_weight(mask, z, axes):
    """`mask / mean(mask)` over `axes`, shaped to multiply `phi'(z)^2`
    (so that the mean of the product is the masked mean), or `None`."""
    if mask is None or tuple(mask.shape) != tuple(z.shape[:-1]):
        return None
    mask = ops.expand_dims(ops.cast(mask, "float32"), -1)
    kept = ops.mean(mask, axis=axes, keepdims=True)
    return mask / ops.maximum(kept, 1e-12)


def _mean_squared_slope(z, slope, curvature, axes, weight=None):
    """`mean(weight * phi'(z)^2)` over `axes`, with its gradient in
    closed form (`mean_squared_slope`, or the backend's faster
    equivalent); `weight` (default 1) a constant."""
    if weight is not None:
        slope = slope * ops.sqrt(weight)
        curvature = _evaluate(curvature, z) * ops.sqrt(weight)
    mean = fast_path(mean_squared_slope) or mean_squared_slope
    return mean(z, slope, curvature, axes)


def mean_squared_slope(z, slope, curvature, axes):
    """`mean(phi'(z)^2)` over `axes` (kept), with its gradient in closed
    form.

    `slope` and `curvature` are `phi'(z)` and `phi''(z)`, evaluated
    without gradient history; `curvature` may also be the function
    `phi''`, evaluated here at `z` (a backend's fast path defers it to
    the backward pass). `d mean(phi'(z)^2) / dz = 2 phi'(z) phi''(z) /
    count`, where `count` is the number of values averaged per unit.
    This `keras.ops` form is the definition; a backend may compute it
    faster (`keras_dreg.backend.fast_path`).

    Example:

    >>> z = keras.ops.zeros((4, 3))
    >>> mean = mean_squared_slope(z, z + 0.5, z + 1.0, (0,))
    >>> keras.ops.convert_to_numpy(mean).tolist()
    [[0.25, 0.25, 0.25]]
    """
    curvature = _evaluate(curvature, z)

    def with_gradient(z, slope, curvature):
        def grad(upstream):
            # The count is read here, from the backward pass's own inputs:
            # a dynamic size captured from the forward pass is a node of
            # another graph to `torch.compile` (it fails on recompiling).
            count = _count(slope, axes)
            return upstream * (2.0 / count) * slope * curvature, None, None

        return ops.mean(ops.square(slope), axis=axes, keepdims=True), grad

    return custom_gradient(with_gradient)(z, slope, curvature)


def _count(x, axes):
    """The number of values of `x` averaged per unit over `axes`: a
    Python int for a static shape, a float32 tensor for a dynamic one."""
    count = 1
    for axis in axes:
        count = count * ops.shape(x)[axis]
    return count if isinstance(count, int) else ops.cast(count, "float32")


def _evaluate(curvature, z):
    """`phi''(z)` without gradient history, from its values or from the
    function `phi''` (deferred by a backend's fast path)."""
    if callable(curvature):
        return curvature(ops.stop_gradient(z))
    return curvature
