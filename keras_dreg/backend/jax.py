"""`vjp` on JAX: `jax.vjp`, inside the traced training step.

Intermediate tensors cannot be differentiated against in JAX, so a
tapped tensor `t` becomes `t + delta` with `delta = 0` an argument of
the differentiated function; `jax.eval_shape` finds the shapes of the
deltas first (tracing only, no computation).
"""

import jax
import jax.numpy as jnp


def vjp(fn, xs):
    shapes = []

    def record(t):
        shapes.append(jax.ShapeDtypeStruct(t.shape, t.dtype))
        return t

    jax.eval_shape(lambda xs: fn(xs, record), xs)
    deltas = [jnp.zeros(s.shape, s.dtype) for s in shapes]

    def shifted(xs, deltas):
        remaining = iter(deltas)
        return fn(xs, lambda t: t + next(remaining))

    outputs, pullback = jax.vjp(shifted, xs, deltas)

    def gradients(cotangents):
        grad_xs, grad_deltas = pullback(list(cotangents))
        return [*grad_xs, *grad_deltas]

    return outputs, gradients


def gpu_available():
    return jax.default_backend() == "gpu"
