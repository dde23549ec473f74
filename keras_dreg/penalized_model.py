"""`PenalizedModel`: a `keras.Model` whose training loss adds penalties.

The model keeps Keras's own `train_step` on every backend and only wraps
it: the step runs inside each penalty's `recording()` context (DREG
records pre-activations there), and `compute_loss` adds each penalty's
value. Loss scaling under mixed precision, metrics, `jit_compile`, JAX's
stateless step and `tf.distribute` therefore work as for any Keras model.
"""

import contextlib
import threading

import keras
from keras import ops
from keras.src.losses.loss import scale_loss_for_distribution
from keras.src.models.functional import Functional
from keras.src.models.model import functional_init_arguments

from keras_dreg.penalties.base import Batch
from keras_dreg.penalties.base import Penalty


@keras.saving.register_keras_serializable(package="keras_dreg")
class PenalizedModel(keras.Model):
    """A `keras.Model` that adds `penalties` to its training loss.

    In each training step the loss becomes
    `loss + sum_p penalty_p(model, batch)`; the logs carry each penalty
    as `<name>_penalty` beside `loss` (which includes them). `evaluate`
    and `predict` never compute them. Build it functionally
    (`PenalizedModel(inputs, outputs, penalties=[...])`), by subclassing,
    or around an existing model with `PenalizedWrapper(model, ...)`.

    Args:
        penalties: `keras_dreg.penalties.Penalty` instances.
        **kwargs: Passed to `keras.Model`.

    Example:

    ```python
    model = keras_dreg.PenalizedModel(
        inputs,
        outputs,
        penalties=[keras_dreg.penalties.WeightDecay(lam=1e-4)],
    )
    model.compile("adam", "sparse_categorical_crossentropy")
    model.fit(x, y)  # logs loss and weight_decay_penalty
    ```
    """

    def __new__(cls, *args, **kwargs):
        if functional_init_arguments(args, kwargs) and not issubclass(
            cls, Functional
        ):
            cls = _functional_class(cls)
        return super().__new__(cls, *args, **kwargs)

    def __init__(self, *args, penalties=(), **kwargs):
        super().__init__(*args, **kwargs)
        self._penalties = _deserialize_penalties(penalties)
        # The model's own state, tracked before any train function exists,
        # in every form of the model (functional, subclassed, wrapped).
        self._penalty_seed_generators = _seed_generators(self._penalties)
        self._penalty_trackers = [
            keras.metrics.Mean(name=f"{p.name}_penalty")
            for p in self._penalties
        ]
        if any(p.every_n_steps > 1 for p in self._penalties):
            self._penalty_step = keras.Variable(
                0, dtype="int32", trainable=False, name="penalty_step"
            )
        self._step_state = threading.local()
        self._attached = False
        if isinstance(self, Functional):
            self._attach_penalties()

    @property
    def penalties(self) -> list[Penalty]:
        """The penalties added to the training loss."""
        return list(self._penalties)

    def _attach_penalties(self):
        if not self._attached:
            for penalty in self._penalties:
                penalty.attach(self)
            self._attached = True

    def _in_train_step(self) -> bool:
        return getattr(self._step_state, "active", False)

    @contextlib.contextmanager
    def _recording(self):
        """Every penalty's `recording()` (DREG records `z` there)."""
        self._attach_penalties()
        with contextlib.ExitStack() as stack:
            for penalty in self._penalties:
                stack.enter_context(penalty.recording())
            yield

    def train_step(self, *args, **kwargs):
        with self._recording():
            self._step_state.active = True
            try:
                return super().train_step(*args, **kwargs)
            finally:
                self._step_state.active = False

    def compute_loss(
        self, x=None, y=None, y_pred=None, sample_weight=None, training=True
    ):
        loss = super().compute_loss(
            x=x,
            y=y,
            y_pred=y_pred,
            sample_weight=sample_weight,
            training=training,
        )
        if not (training and self._in_train_step()):
            return loss
        batch = Batch(x, y, y_pred, sample_weight)
        due = self._due_penalties()
        for penalty, tracker in zip(self._penalties, self._penalty_trackers):
            value = self._scheduled(penalty, batch, due)
            tracker.update_state(value)
            # Keras divides losses by the replica count under tf.distribute.
            value = scale_loss_for_distribution(value)
            loss = loss + ops.cast(value, loss.dtype)
        return loss

    def _due_penalties(self):
        """This step's index; advances the counter of `every_n_steps`."""
        if not hasattr(self, "_penalty_step"):
            return None
        # A copy: on TF and torch `.value` aliases the updated variable.
        step = ops.copy(self._penalty_step.value)
        self._penalty_step.assign(step + 1)
        return step

    def _scheduled(self, penalty, batch, step):
        """The penalty on its steps (`step % every_n_steps == 0`), else 0.

        The two cases are the branches of an `ops.cond`, whose branches
        cannot change variables on JAX: the penalty runs statelessly and
        both branches return the state of its `seed_generators`, which is
        assigned after the `cond`, on every backend.
        """
        if penalty.every_n_steps == 1:
            return ops.cast(penalty(self, batch), "float32")
        state = [generator.state for generator in penalty.seed_generators]

        def apply():
            return self._stateless_penalty(penalty, batch, state)

        def skip():
            return ops.zeros((), "float32"), [v.value for v in state]

        value, new_state = ops.cond(
            ops.equal(ops.mod(step, penalty.every_n_steps), 0), apply, skip
        )
        for variable, new_value in zip(state, new_state):
            variable.assign(new_value)
        return value

    def _stateless_penalty(self, penalty, batch, state):
        """`penalty(self, batch)` in a `StatelessScope`, and the new values
        of the variables `state`; raises if it changed other variables."""
        variables = self.variables
        with keras.StatelessScope([(v, v.value) for v in variables]) as scope:
            before = [scope.get_current_value(v) for v in variables]
            value = ops.cast(penalty(self, batch), "float32")
        carried = {id(v) for v in state}
        changed = [
            v.path
            for v, old in zip(variables, before)
            if scope.get_current_value(v) is not old and id(v) not in carried
        ]
        if changed:
            raise ValueError(
                f"{type(penalty).__name__}(every_n_steps="
                f"{penalty.every_n_steps}) changed the variables {changed} "
                "of the model. On the steps that skip a penalty, only the "
                "state of its `seed_generators` is carried: a penalty may "
                "change only that. Run the model statelessly inside the "
                "penalty (`model.stateless_call`), list its random state in "
                "`seed_generators`, or use every_n_steps=1."
            )
        return value, [scope.get_current_value(v) for v in state]

    @contextlib.contextmanager
    def penalty_scope(self):
        """The penalties for a custom training loop.

        Forward passes run inside the block are recorded (DREG's `z`);
        the yielded function returns the sum of the weighted penalties for
        them, to add to the loss before the backward pass. Use it where
        `fit` is not, e.g. a torch loop around `DistributedDataParallel`.
        `every_n_steps` applies to `fit` only: here the loop decides.

        Example:

        ```python
        ddp = torch.nn.parallel.DistributedDataParallel(model)
        with model.penalty_scope() as penalty:
            y_pred = ddp(x, training=True)
            loss = loss_fn(y, y_pred) + penalty(x, y, y_pred)
        loss.backward()
        ```
        """
        with self._recording():

            def total(x=None, y=None, y_pred=None, sample_weight=None):
                batch = Batch(x, y, y_pred, sample_weight)
                values = [
                    ops.cast(p(self, batch), "float32") for p in self._penalties
                ]
                return ops.sum(ops.stack(values)) if values else 0.0

            yield total

    def get_metrics_result(self):
        results = super().get_metrics_result()
        if not self._in_train_step():
            for tracker in self._penalty_trackers:
                results.pop(tracker.name, None)
        return results

    def get_config(self):
        config = super().get_config()
        config["penalties"] = [
            keras.saving.serialize_keras_object(p) for p in self._penalties
        ]
        return config


@keras.saving.register_keras_serializable(package="keras_dreg")
class FunctionalPenalizedModel(PenalizedModel, Functional):
    """`PenalizedModel(inputs, outputs, ...)` builds one of these.

    Functional construction gets a class of its own, so that it does not
    rewrite the bases of the class it was asked for, as it does for other
    `keras.Model` subclasses (keras-team/keras#17270), which would break
    subclass-style use of that class afterwards.
    """


_FUNCTIONAL_CLASSES = {PenalizedModel: FunctionalPenalizedModel}


def register_functional_class(cls, functional_cls):
    """Declares `functional_cls` the functional form of `cls`."""
    _FUNCTIONAL_CLASSES[cls] = functional_cls


def _functional_class(cls):
    if cls not in _FUNCTIONAL_CLASSES:
        _FUNCTIONAL_CLASSES[cls] = type(
            cls.__name__,
            (cls, Functional),
            {"__module__": cls.__module__, "__qualname__": cls.__qualname__},
        )
    return _FUNCTIONAL_CLASSES[cls]


class WrapperMixin:
    """Makes a `PenalizedModel` class wrap an existing model.

    The wrapper's `call` is the wrapped model's, so layers and weights are
    shared, nothing is copied.
    """

    def __init__(self, model: keras.Model, **kwargs):
        if not isinstance(model, keras.Model):
            raise TypeError(
                f"{type(self).__name__} wraps a `keras.Model`; received "
                f"{type(model).__name__}. Build a model first, e.g. with "
                "`keras.Sequential([...])`."
            )
        super().__init__(**kwargs)
        self.wrapped = model
        self._attach_penalties()

    def call(self, inputs, training=None):
        return self.wrapped(inputs, training=training)

    def get_config(self):
        config = super().get_config()
        config["model"] = keras.saving.serialize_keras_object(self.wrapped)
        return config

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        model = keras.saving.deserialize_keras_object(
            config.pop("model"), custom_objects=custom_objects
        )
        return cls(model, **config)


@keras.saving.register_keras_serializable(package="keras_dreg")
class PenalizedWrapper(WrapperMixin, PenalizedModel):
    """A `PenalizedModel` around an existing model.

    Example:

    ```python
    model = keras_dreg.PenalizedWrapper(
        base_model, penalties=[keras_dreg.penalties.WeightDecay()]
    )
    ```
    """


def _seed_generators(penalties):
    generators = []
    for penalty in penalties:
        for generator in penalty.seed_generators:
            if not isinstance(generator, keras.random.SeedGenerator):
                raise TypeError(
                    f"{type(penalty).__name__}.seed_generators must list "
                    "`keras.random.SeedGenerator` instances; received "
                    f"{generator!r}. Create them in the penalty's `__init__`."
                )
            generators.append(generator)
    return generators


def _deserialize_penalties(penalties):
    penalties = [
        keras.saving.deserialize_keras_object(p) if isinstance(p, dict) else p
        for p in penalties
    ]
    for penalty in penalties:
        if not isinstance(penalty, Penalty):
            raise TypeError(
                "`penalties` must be keras_dreg.penalties.Penalty "
                f"instances; received {penalty!r}."
            )
    names = [p.name for p in penalties]
    if len(set(names)) != len(names):
        raise ValueError(
            f"Penalty names must be unique, received {names}: their logs "
            "would collide. Set a distinct `name` on each instance."
        )
    return penalties
