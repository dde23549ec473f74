"""Peak memory of one training step, beyond what is live before it.

`step_memory(model, x, y)` runs one `train_on_batch` (which builds,
traces and compiles whatever the first step does), then measures the
next step: the peak bytes it needs on top of the model's weights, the
optimizer's state and the batch, i.e. the activations kept for the
backward pass, the gradients and the temporaries. How, per backend:

- JAX: XLA's compiled memory analysis of the jitted train step (the
  program `train_on_batch` runs, state donated as Keras does):
  `temp_size_in_bytes`, XLA's one buffer for every intermediate, laid
  out by liveness, so its size is their peak, plus the outputs not
  written over the donated state (`output_size_in_bytes -
  alias_size_in_bytes`: the logs). Exact for that program, whatever the
  device; the measured step is not run.
- PyTorch, CPU: `torch.profiler` with `profile_memory=True` around the
  step, the peak over time of the running sum of its allocation and
  free events: the bytes the step has allocated and not yet freed. The
  profiler knows the size only of blocks allocated while a profile
  runs, and the step before ran unprofiled, so the frees of its blocks,
  among them its gradients (which Keras's `zero_grad` frees first thing
  in the step), are not subtracted: the step's own gradients count, as
  on JAX.
- PyTorch, CUDA: `torch.cuda.max_memory_allocated()` during the step,
  less `memory_allocated()` before it, plus the bytes of the previous
  step's gradients, which the step frees first (to count the step's own
  gradients, as on the CPU).
- TensorFlow, GPU: `tf.config.experimental.get_memory_info("GPU:0")`'s
  `"peak"` after `reset_memory_stats`, less its `"current"` before the
  step. On a CPU, `None`: TensorFlow documents these statistics for
  GPUs and TPUs only, and its CPU allocators keep them only in part
  (with the oneDNN optimizations, the default on x86, blocks under
  256 KiB, which come from a pool of their own, are left out; without
  them, `get_memory_info` raises).

Where a backend cannot measure, `step_memory` returns `None` and
`unmeasured_reason(model)` says why.
"""

import gc
from collections.abc import Callable

import keras


def step_memory(model: keras.Model, x, y) -> int | None:
    """Peak bytes one `model.train_on_batch(x, y)` needs beyond the
    weights, the optimizer's state and the batch (see the module's
    docstring for how each backend measures it), or `None` where
    `unmeasured_reason(model)` is not `None`.

    Trains `model` by one step, which builds, traces and compiles what
    the first step does, and on PyTorch and TensorFlow by the measured
    step too.
    """
    if unmeasured_reason(model) is not None:
        return None
    model.train_on_batch(x, y)
    return _MEASURES[keras.backend.backend()](model, x, y)


def unmeasured_reason(model: keras.Model) -> str | None:
    """Why `step_memory` cannot measure `model`'s step on this machine,
    or `None` where it can."""
    return _REASONS[keras.backend.backend()](model)


def _jax_step_memory(model: keras.Model, x, y) -> int:
    """Temporaries plus outputs not aliased to the donated state, from
    XLA's memory analysis of the compiled train step."""
    import jax

    state = (
        [v.value for v in model.trainable_variables],
        [v.value for v in model.non_trainable_variables],
        [v.value for v in model.optimizer.variables],
        [v.value for v in model.metrics_variables],
    )
    # The program `make_train_function` compiles (Keras's `jit` is
    # `jax.jit`): lowering it again hits the same compilation cache.
    step = jax.jit(model.train_step, donate_argnums=0)
    stats = step.lower(state, (x, y, None)).compile().memory_analysis()
    if stats is None:
        raise RuntimeError("XLA gives no memory analysis on this platform.")
    unaliased_outputs = stats.output_size_in_bytes - stats.alias_size_in_bytes
    return stats.temp_size_in_bytes + unaliased_outputs


def _jax_reason(model: keras.Model) -> str | None:
    if model.jit_compile:
        return None
    return (
        "JAX runs the step op by op (jit_compile=False): no compiled "
        "program holds its peak"
    )


def _torch_step_memory(model: keras.Model, x, y) -> int:
    """CPU: `profiled_peak` of the step; CUDA: the allocator's peak."""
    import torch

    if _torch_device(model) == "cpu":
        gc.collect()  # No earlier profile's tensor is freed in this one.
        return profiled_peak(lambda: model.train_on_batch(x, y))
    old_gradients = sum(
        p.grad.nbytes for p in model.parameters() if p.grad is not None
    )
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    model.train_on_batch(x, y)  # NumPy logs: waits for the step.
    return torch.cuda.max_memory_allocated() - before + old_gradients


def profiled_peak(run: Callable[[], object]) -> int:
    """The peak over time of the CPU bytes that `run()` has allocated and
    not yet freed, from `torch.profiler`'s memory events.

    The profiler does not see the frees of blocks allocated while no
    profile ran (it does not know their size): those do not lower the
    count.
    """
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as p:
        run()
    # Each allocation (+bytes) and free (-bytes) as it came, which
    # torch's own `EventList` reads too (and sums per operator).
    events = [
        event
        for event in p.profiler.kineto_results.events()
        if event.name() == "[memory]" and event.device_type() == DeviceType.CPU
    ]
    level = peak = 0
    for event in sorted(events, key=lambda event: event.start_ns()):
        level += event.nbytes()
        peak = max(peak, level)
    return peak


def _torch_device(model: keras.Model) -> str:
    return model.trainable_variables[0].value.device.type


def _torch_reason(model: keras.Model) -> str | None:
    device = _torch_device(model)
    if device in ("cpu", "cuda"):
        return None
    return f"measured on CPU and CUDA only, not on {device}"


def _tensorflow_step_memory(model: keras.Model, x, y) -> int:
    """The GPU allocator's peak during the step, less its level before."""
    import tensorflow as tf

    tf.config.experimental.reset_memory_stats("GPU:0")
    before = tf.config.experimental.get_memory_info("GPU:0")["current"]
    model.train_on_batch(x, y)  # NumPy logs: waits for the step.
    return tf.config.experimental.get_memory_info("GPU:0")["peak"] - before


def _tensorflow_reason(model: keras.Model) -> str | None:
    import tensorflow as tf

    if tf.config.list_logical_devices("GPU"):
        return None
    return (
        "no GPU: TensorFlow keeps allocator statistics for GPUs (on a CPU "
        "only in part: oneDNN's allocator leaves blocks under 256 KiB out)"
    )


_MEASURES = {
    "jax": _jax_step_memory,
    "torch": _torch_step_memory,
    "tensorflow": _tensorflow_step_memory,
}
_REASONS = {
    "jax": _jax_reason,
    "torch": _torch_reason,
    "tensorflow": _tensorflow_reason,
}
