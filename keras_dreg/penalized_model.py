"""`PenalizedModel`: a `keras.Model` whose training loss adds penalties.

Where each penalty enters training (see `keras_dreg.penalties.base`):

- Forward penalties (DREG, weight decay) are losses of the training
  forward pass. Every `call` of the model with `training=True` (by
  `__call__`, `fit`, or `stateless_call`) runs inside the penalties'
  `recording(state)` contexts and ends by adding each value to the
  model's `losses` (kept per thread: see `_get_own_losses`), as Keras's
  activity regularizers add theirs. So every path that sums the model's
  `losses` gets them, with the weights the call used: `fit`, a user's
  `train_step` calling `compute_loss`, JAX `stateless_call(...,
  return_losses=True)` loops under `jax.jit`, TF tapes, torch loops.
- Step penalties (input gradient, Jacobian) need the targets or the
  loss: `compute_loss(..., training=True)` adds them.

The model keeps Keras's own `train_step` on every backend and only marks
the step (so that a `call` without a `training` argument counts as a
training call, and the `<name>_penalty` metrics are shown): loss scaling
under mixed precision, metrics, `jit_compile`, JAX's stateless step and
`tf.distribute` work as for any Keras model. `evaluate` and `predict`
add no penalty.

Every subclass's `call` is wrapped once, when the class is made
(`__init_subclass__`), so subclassed, functional and wrapping forms all
add the penalties.
"""

import contextlib
import functools
import threading

import keras
from keras import ops

from keras_dreg import interception
from keras_dreg import internals
from keras_dreg.penalties.base import Batch
from keras_dreg.penalties.base import Penalty


def _adding_penalties(call):
    """`call`, made to add the model's penalties in training calls."""

    @functools.wraps(call)
    def call_adding_penalties(self, *args, **kwargs):
        if self._adds_penalties(kwargs):
            return self._penalized_call(call, args, kwargs)
        if self._starts_a_forward_pass():
            self._step_state.losses = []
        return call(self, *args, **kwargs)

    call_adding_penalties._penalized = True
    return call_adding_penalties


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

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        call = cls.call
        if call is not keras.Model.call and not hasattr(call, "_penalized"):
            cls.call = _adding_penalties(call)

    def __new__(cls, *args, **kwargs):
        if internals.functional_init_arguments(args, kwargs) and not issubclass(
            cls, internals.Functional
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
        # Not tracked by Keras: what the penalties found in this model.
        object.__setattr__(self, "_penalty_states", None)
        if isinstance(self, internals.Functional):
            self._bind_if_built()

    def _bind_if_built(self):
        """Binds the penalties now if the layer graph exists (errors and
        the warning about unregularized layers come at construction);
        else the first training call binds them."""
        if self._penalties and (self.built or _inner_built(self)):
            self.penalty_state(self._penalties[0])

    @property
    def penalties(self) -> list[Penalty]:
        """The penalties added to the training loss."""
        return list(self._penalties)

    def penalty_state(self, penalty: Penalty):
        """What `penalty.bind(self)` found in this model (DREG: its
        layers); binds every penalty on first use.

        Raises:
            ValueError: if the model is not built yet (a Sequential model
                without `keras.Input`, a subclassed model never called),
                or `penalty` is not one of this model's.
        """
        if self._penalty_states is None:
            self._check_built()
            states = [p.bind(self) for p in self._penalties]
            object.__setattr__(self, "_penalty_states", states)
        for candidate, state in zip(self._penalties, self._penalty_states):
            if candidate is penalty:
                return state
        raise ValueError(
            f"{penalty!r} is not a penalty of model '{self.name}'; its "
            f"penalties: {self._penalties}."
        )

    def _check_built(self):
        if self.built or _inner_built(self):
            return
        raise ValueError(
            f"Model '{self.name}' is not built yet, so its layers cannot be "
            "surveyed (a Sequential model without `keras.Input` has no "
            "layer graph before its first call). Call it on a batch "
            "(`model(x)`), or `model.build(input_shape)`, first; `fit` "
            "does this by itself at its first step."
        )

    def _in_train_step(self) -> bool:
        return getattr(self._step_state, "active", False)

    def train_step(self, *args, **kwargs):
        self._step_state.active = True
        try:
            # Recording starts here, around Keras's step, so the forward
            # pass inside it finds the hooks in place: under
            # `torch.compile` entering them (a lock) breaks the graph, and
            # here that break leaves Keras's step, forward pass and
            # penalties included, to be compiled whole. (A model that is
            # not built yet starts recording in its first forward pass.)
            built = self.built or _inner_built(self)
            with self._recording() if built else contextlib.nullcontext():
                return super().train_step(*args, **kwargs)
        finally:
            self._step_state.active = False

    @contextlib.contextmanager
    def _recording(self):
        """The forward penalties' `recording` contexts, entered once: a
        nested training call finds them entered."""
        if getattr(self._step_state, "recording", False):
            yield
            return
        with contextlib.ExitStack() as stack:
            for penalty in self._penalties:
                if penalty.in_forward:
                    state = self.penalty_state(penalty)
                    stack.enter_context(penalty.recording(state))
            self._step_state.recording = True
            try:
                yield
            finally:
                self._step_state.recording = False

    def _adds_penalties(self, kwargs) -> bool:
        """Whether this `call` is a training pass that adds penalties."""
        if not (self._penalties and self._starts_a_forward_pass()):
            return False
        training = kwargs.get("training")
        if training is None:
            training = internals.call_context_training()
        if training is None:
            training = self._in_train_step()
        return bool(training)

    def _penalized_call(self, call, args, kwargs):
        """`call`, recorded by the penalties; adds the forward ones."""
        forward = [p for p in self._penalties if p.in_forward]
        self._step_state.in_forward = True
        try:
            with self._recording():
                outputs = call(self, *args, **kwargs)
                step = self._advance_step()
                batch = Batch(args[0] if args else None, None, outputs)
                values = {}
                for penalty in forward:
                    values[penalty.name] = self._scheduled(penalty, batch, step)
        finally:
            self._step_state.in_forward = False
        # Raw values: Keras scales `losses` for `tf.distribute` itself.
        self._step_state.losses = []
        for value in values.values():
            if internals.in_stateless_scope():
                # Collected by `stateless_call(..., return_losses=True)`
                # (JAX's `fit`, user loops), dropped otherwise.
                keras.layers.Layer.add_loss(self, value)
            else:
                self._step_state.losses.append(value)
        self._step_state.forward = (values, step)
        return outputs

    def _starts_a_forward_pass(self) -> bool:
        """Whether a `call` that adds no penalty is a pass of its own (not
        a symbolic build, a paused re-run or a call nested in a training
        pass), which clears the previous pass's penalty losses."""
        return not (
            interception.is_paused()
            or internals.in_symbolic_scope()
            or getattr(self._step_state, "in_forward", False)
        )

    def _get_own_losses(self):
        """Keras's own losses of this model, and the penalties of this
        thread's last training pass.

        The penalties are kept per thread, not in the model's shared
        `add_loss` list: TF `MirroredStrategy` replicas run the forward
        pass in parallel threads, and each replica's loss must carry its
        own penalty only. (Inside a `StatelessScope` they go to the scope,
        as any `add_loss`, so no traced value outlives the trace.)
        `Layer.losses` (`compute_loss`, JAX's `stateless_call(...,
        return_losses=True)`, an outer model) reads the model's losses
        through this method.
        """
        penalties = getattr(self._step_state, "losses", None) or []
        return super()._get_own_losses() + list(penalties)

    def compute_loss(
        self, x=None, y=None, y_pred=None, sample_weight=None, training=True
    ):
        """Keras's loss (the forward penalties are among `self.losses`),
        plus the step penalties when `training`."""
        loss = super().compute_loss(
            x=x,
            y=y,
            y_pred=y_pred,
            sample_weight=sample_weight,
            training=training,
        )
        if not training:
            return loss
        values, step = getattr(self._step_state, "forward", None) or ({}, None)
        self._step_state.forward = None
        if step is None:
            step = self._advance_step()
        batch = Batch(x, y, y_pred, sample_weight)
        for penalty in self._penalties:
            if not penalty.in_forward:
                self.penalty_state(penalty)
                value = self._scheduled(penalty, batch, step)
                values[penalty.name] = value
                value = internals.scale_loss_for_distribution(value)
                loss = loss + ops.cast(value, loss.dtype)
        for penalty, tracker in zip(self._penalties, self._penalty_trackers):
            if penalty.name in values:
                tracker.update_state(values[penalty.name])
        return loss

    def _advance_step(self):
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
class FunctionalPenalizedModel(PenalizedModel, internals.Functional):
    """`PenalizedModel(inputs, outputs, ...)` builds one of these.

    Functional construction gets a class of its own, so that it does not
    rewrite the bases of the class it was asked for, as it does for other
    `keras.Model` subclasses (keras-team/keras#17270), which would break
    subclass-style use of that class afterwards.
    """


_FUNCTIONAL_CLASSES = {PenalizedModel: FunctionalPenalizedModel}


def _inner_built(model) -> bool:
    wrapped = getattr(model, "wrapped", None)
    return wrapped is not None and wrapped.built


def register_functional_class(cls, functional_cls):
    """Declares `functional_cls` the functional form of `cls`."""
    _FUNCTIONAL_CLASSES[cls] = functional_cls


def _functional_class(cls):
    if cls not in _FUNCTIONAL_CLASSES:
        _FUNCTIONAL_CLASSES[cls] = type(
            cls.__name__,
            (cls, internals.Functional),
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
        self._bind_if_built()

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
