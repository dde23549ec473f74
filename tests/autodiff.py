"""Independent references for the tests: each backend's native autodiff.

Kept apart from `keras_dreg` on purpose: the package computes Jacobian
norms in closed form, the tests check them against these.
"""

import keras
import numpy as np


def jacobian(fn, x: np.ndarray) -> np.ndarray:
    """The Jacobian of `fn` at one unbatched input `x`, as numpy.

    Returns an array of shape `fn(x).shape + x.shape`.
    """
    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        return np.asarray(jax.jacrev(fn)(x))
    if backend == "torch":
        import torch

        tensor = torch.as_tensor(x)
        return torch.autograd.functional.jacobian(fn, tensor).numpy()
    import tensorflow as tf

    tensor = tf.convert_to_tensor(x)
    # pfor gives wrong Jacobians for some einsums in TF 2.21.
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(tensor)
        out = fn(tensor)
    return tape.jacobian(out, tensor, experimental_use_pfor=False).numpy()


def value_and_gradients(model: keras.Model, fn):
    """`fn()` and its gradients w.r.t. `model.trainable_variables`.

    `fn` reads the model's variables (e.g. `model.dreg_penalty(x)`). A
    variable `fn` does not depend on gets a zero gradient.
    """
    variables = model.trainable_variables
    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        def stateless(values):
            mapping = list(zip(variables, values))
            with keras.StatelessScope(state_mapping=mapping):
                return fn()

        value, grads = jax.value_and_grad(stateless)(
            [v.value for v in variables]
        )
    elif backend == "torch":
        for v in variables:
            v.value.grad = None
        value = fn()
        value.backward()
        grads = [v.value.grad for v in variables]
    else:
        import tensorflow as tf

        with tf.GradientTape() as tape:
            value = fn()
        grads = tape.gradient(value, [v.value for v in variables])
    grads = [
        np.zeros(v.shape, "float32")
        if g is None
        else keras.ops.convert_to_numpy(g)
        for v, g in zip(variables, grads)
    ]
    return float(keras.ops.convert_to_numpy(value)), grads
