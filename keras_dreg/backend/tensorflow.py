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
