"""`vjp` on TensorFlow: a persistent tape nested in the step's tape.

The outer `tf.GradientTape` of Keras's `train_step` records the inner
tape's gradient computation, so the result is differentiable again.
"""

import tensorflow as tf


def vjp(fn, xs):
    tapped = []

    with tf.GradientTape(persistent=True) as tape:
        tape.watch(xs)

        def tap(t):
            tape.watch(t)
            tapped.append(t)
            return t

        outputs = fn(xs, tap)

    def gradients(cotangents):
        return tape.gradient(
            outputs,
            [*xs, *tapped],
            output_gradients=list(cotangents),
            unconnected_gradients=tf.UnconnectedGradients.ZERO,
        )

    return outputs, gradients


def gpu_available():
    return bool(tf.config.list_physical_devices("GPU"))


def fast_path(reference):
    """An XLA-compiled (`tf.function(jit_compile=True)`) form of one of
    keras-dreg's own joint evaluations `z -> (phi, phi', phi'')`
    (`keras_dreg.derivatives.BUILTIN_JOINTS`): one fused loop over `z`
    instead of some 13 TensorFlow kernels, each a pass over `z` into new
    memory, in a step that TensorFlow runs without XLA (Keras's default
    on a CPU). Inside a step that XLA compiles already it is inlined.
    `None` for anything else.

    Example:

    >>> from keras_dreg import derivatives
    >>> joint = derivatives.describe_activation("gelu").value_and_derivatives
    >>> value, slope, curvature = fast_path(joint)(tf.zeros((2,)))
    >>> slope.numpy().tolist()
    [0.5, 0.5]
    """
    from keras_dreg import derivatives

    if reference not in derivatives.BUILTIN_JOINTS:
        return None
    if reference not in _COMPILED:
        _COMPILED[reference] = tf.function(
            reference, jit_compile=True, reduce_retracing=True
        )
    return _COMPILED[reference]


_COMPILED = {}
