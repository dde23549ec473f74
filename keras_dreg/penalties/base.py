"""The protocol every training penalty follows.

A penalty is a loss term of a `PenalizedModel`'s training loss: given
the model and a `Batch`, it returns a scalar. Two kinds:

- *Forward* penalties (`in_forward = True`: DREG, weight decay) depend
  on the weights and on what the forward pass computes. They are added
  during every `training=True` call of the model to its `losses`, as
  Keras's activity regularizers are, so every path that carries the
  model's `losses` carries them: `fit`, a user's `train_step` calling
  `compute_loss`, JAX `stateless_call(..., return_losses=True)` loops
  (reading the weights passed in), TF tapes and torch loops. Their
  `batch` has `x` (the call's inputs) and `y_pred` (its outputs), no
  targets.
- *Step* penalties (`in_forward = False`: the input-gradient and
  Jacobian penalties) need the step's targets or the loss; the model
  adds them in `compute_loss(..., training=True)`.

A penalty holds no per-model state: what it finds in a model
(DREG's layers) is returned by `bind(model)` and kept by the model
(`model.penalty_state(penalty)`), so one instance can serve several
models. A penalty that needs tensors from the forward pass records them
in `recording(state)`, a context the model holds around its training
forward pass.
"""

import contextlib
import math
import numbers
from typing import Any
from typing import NamedTuple

import keras


class Batch(NamedTuple):
    """What `compute_loss` receives in a training step.

    A `Penalty` gets it as `batch`: the inputs `x`, targets `y`,
    predictions `y_pred` and the sample weights.

    Example: a penalty on the size of the logits.

    ```python
    class LogitPenalty(keras_dreg.penalties.Penalty):
        name = "logits"
        default_lam = 1e-3

        def __call__(self, model, batch):
            return self.lam * keras.ops.mean(keras.ops.square(batch.y_pred))
    ```
    """

    x: Any
    y: Any
    y_pred: Any
    sample_weight: Any = None


class Penalty:
    """Base class of the penalties `PenalizedModel` adds to the loss.

    Subclasses set `name` (the logs show `<name>_penalty`) and
    `default_lam`, and implement `__call__`. Register them with
    `keras.saving.register_keras_serializable` so that models using them
    save and load; `get_config` must return the constructor arguments.

    Args:
        lam: Strength, a finite number >= 0; `None` takes `default_lam`.
        every_n_steps: Apply the penalty on every `k`-th training step
            only; other steps add zero.

    Example: an L1 penalty on every kernel.

    ```python
    @keras.saving.register_keras_serializable(package="my_project")
    class L1(keras_dreg.penalties.Penalty):
        name = "l1"
        default_lam = 1e-4

        def __call__(self, model, batch):
            return self.lam * sum(
                keras.ops.sum(keras.ops.abs(w))
                for w in model.trainable_weights
                if w.path.endswith("kernel")
            )

    model = keras_dreg.PenalizedModel(inputs, outputs, penalties=[L1()])
    ```
    """

    name: str = "penalty"
    default_lam: float = 0.0
    in_forward: bool = False

    def __init__(self, lam: float | None = None, every_n_steps: int = 1):
        self.lam = validate_lam(self.default_lam if lam is None else lam)
        self.every_n_steps = validate_positive_int(
            every_n_steps, "every_n_steps"
        )

    @property
    def seed_generators(self) -> list[keras.random.SeedGenerator]:
        """The penalty's random state, for the model to track.

        A penalty that draws random numbers in `__call__` lists its
        `keras.random.SeedGenerator`s here. `PenalizedModel` adds them to
        its own state when it is made (before any training step), so that
        they advance inside a compiled JAX step and when `every_n_steps`
        skips steps; create them in `__init__`. This is the only state a
        penalty may change while the model trains.
        """
        return []

    def bind(self, model: keras.Model) -> Any:
        """What this penalty needs to know about `model`, found once the
        model is built and before its first training step. The model
        keeps it (`model.penalty_state(self)`); raise here for a model
        the penalty cannot serve."""
        return None

    def recording(self, state: Any) -> contextlib.AbstractContextManager:
        """A context held open around each training forward pass."""
        return contextlib.nullcontext()

    def __call__(self, model: keras.Model, batch: Batch):
        """The weighted penalty (already multiplied by `lam`), a scalar."""
        raise NotImplementedError(
            f"{type(self).__name__} must implement __call__(model, batch)."
        )

    def get_config(self) -> dict:
        return {"lam": self.lam, "every_n_steps": self.every_n_steps}

    @classmethod
    def from_config(cls, config: dict):
        return cls(**config)

    def __repr__(self) -> str:
        options = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({options})"


def validate_lam(lam) -> float:
    """Returns `lam` as a float, or raises a clear error."""
    return validate_non_negative(
        lam,
        "lam",
        hint=" The study's value is 10**-2.5; lam=0 trains without the "
        "penalty.",
    )


def validate_non_negative(value, name: str, hint: str = "") -> float:
    """Returns `value` as a float if it is a finite real number >= 0,
    else raises a `TypeError`/`ValueError` naming `name`."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(
            f"`{name}` must be a real number, received {value!r} of type "
            f"{type(value).__name__}.{hint}"
        )
    if not math.isfinite(value) or value < 0:
        raise ValueError(
            f"`{name}` must be finite and >= 0, received {value}.{hint}"
        )
    return float(value)


def validate_positive_int(value, name: str) -> int:
    """Returns `value` as an int >= 1, or raises a clear error."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(
            f"`{name}` must be an integer >= 1, received {value!r}."
        )
    if value < 1:
        raise ValueError(f"`{name}` must be >= 1, received {value}.")
    return int(value)
