"""The one place that swaps a layer's `call` or `activation` for a while.

DREG records each regularized layer's pre-activation `z` during the
training forward pass, and the input-gradient penalty routes what
`Embedding` layers compute through its own function. Both do it with
*hooks*: a function `hook(original, *args, **kwargs)` that runs instead
of the layer's `call` (or `activation`) and calls `original` itself.

Rules, for every hook:

- Hooks are installed per `(layer, attribute)` with `hooked(...)`, a
  context manager, and counted: the same hook entered by several threads
  at once (TF `MirroredStrategy` replicas tracing the step) or nested is
  installed once. Several different hooks on one attribute chain, the
  last installed outermost.
- One restore rule: when the last hook of an attribute leaves, the layer
  gets back exactly what it had before the first one (its own instance
  attribute, or none, so that the class's method shows again).
- Hooks live only while a block that needs them runs (a training
  forward pass), so saving, `evaluate` and `predict` see the layers as
  they were built.
- `paused()` makes this thread's recording hooks pass through (they
  are skipped: `original` runs as if unhooked) for forward passes that
  are not the step's own, such as the input-gradient penalty's second
  run; the penalties of a `PenalizedModel` are not added in them
  either. Hooks installed with `pausable=False` (the input-gradient
  penalty's own taps) run on.

Example:

>>> def shout(original, x):
...     return original(x) * 2
>>> layer = keras.layers.Dense(1, kernel_initializer="ones")
>>> x = np.ones((1, 3), "float32")
>>> with hooked(layer, "call", shout):
...     float(layer(x)[0, 0])
6.0
>>> float(layer(x)[0, 0])
3.0
"""

import contextlib
import threading
from collections.abc import Callable

import keras

Hook = Callable[..., object]

_LOCK = threading.Lock()
_STATE = threading.local()


class _Slot:
    """The hooks of one `(layer, attribute)` and what was there before."""

    def __init__(self, layer: keras.layers.Layer, attribute: str):
        self.layer = layer
        self.attribute = attribute
        self.had_own = attribute in layer.__dict__
        self.original = getattr(layer, attribute)
        self.hooks: list[Hook] = []
        self.counts: dict[int, int] = {}
        self.unpausable: set[int] = set()

    def dispatch(self, *args, **kwargs):
        """Runs the hooks, the last installed outermost, then `original`."""
        call = self.original
        paused_now = is_paused()
        for hook in self.hooks:
            if not paused_now or id(hook) in self.unpausable:
                call = _bind(hook, call)
        return call(*args, **kwargs)

    def add(self, hook: Hook, pausable: bool) -> None:
        count = self.counts.get(id(hook), 0)
        self.counts[id(hook)] = count + 1
        if not count:
            self.hooks.append(hook)
            if not pausable:
                self.unpausable.add(id(hook))

    def remove(self, hook: Hook) -> None:
        self.counts[id(hook)] -= 1
        if not self.counts[id(hook)]:
            del self.counts[id(hook)]
            self.unpausable.discard(id(hook))
            self.hooks.remove(hook)

    def restore(self) -> None:
        if self.had_own:
            object.__setattr__(self.layer, self.attribute, self.original)
        else:
            self.layer.__dict__.pop(self.attribute, None)


_SLOTS: dict[tuple[int, str], _Slot] = {}


def _bind(hook, call):
    def hooked_call(*args, **kwargs):
        return hook(call, *args, **kwargs)

    return hooked_call


@contextlib.contextmanager
def hooked(
    layer: keras.layers.Layer,
    attribute: str,
    hook: Hook,
    pausable: bool = True,
):
    """Runs `hook(original, *args, **kwargs)` for `layer.<attribute>`
    while the block runs.

    Args:
        layer: The layer.
        attribute: `"call"`, or `"activation"` (a kernel layer's or an
            `Activation` layer's activation function).
        hook: Called with the attribute's previous value and the call's
            arguments; returns what the attribute returns.
    """
    key = (id(layer), attribute)
    with _LOCK:
        slot = _SLOTS.get(key)
        if slot is None:
            slot = _SLOTS[key] = _Slot(layer, attribute)
            object.__setattr__(layer, attribute, slot.dispatch)
        slot.add(hook, pausable)
    try:
        yield
    finally:
        with _LOCK:
            slot.remove(hook)
            if not slot.hooks:
                slot.restore()
                del _SLOTS[key]


@contextlib.contextmanager
def paused():
    """In this thread, pausable hooks are skipped and no penalty is added
    for the duration of the block.

    Example:

    >>> model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    >>> with paused():
    ...     y = model(np.ones((1, 3)), training=True)  # nothing recorded
    >>> is_paused()
    False
    """
    before = is_paused()
    _STATE.paused = True
    try:
        yield
    finally:
        _STATE.paused = before


def is_paused() -> bool:
    """Whether this thread is inside `paused()`."""
    return getattr(_STATE, "paused", False)
