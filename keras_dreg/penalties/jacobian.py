"""Jacobian regularization of the input-output map (Hoffman et al., 2019).

For an example `x_i` whose model output, all outputs flattened, is
`f(x_i)` in `R^C`, the penalty is the batch mean of the squared
Frobenius norm of the input-output Jacobian `J_i = d f(x_i) / d x_i`:

    JR(x) = lam * mean_i ||J_i||_F^2

Computing `J_i` takes `C` backward passes. Hoffman et al. estimate the
norm with random projections instead: for `v` uniform on the unit sphere
of `R^C`, `E[v v^T] = I / C`, so `E[C ||v^T J||^2] = ||J||_F^2` and

    ||J_i||_F^2 ~= (C / n) sum_{k=1..n} ||v_k^T J_i||^2

is unbiased. Each `v_k^T J_i` is one vector-Jacobian product: a backward
pass through a second forward pass of the model, which the `n` products
share (see `keras_dreg.penalties.input_gradient`, which also describes
how dropout, `BatchNormalization`, integer token inputs and fused cuDNN
RNNs are handled); the training step differentiates them again. `n`
(`num_projections`) defaults to 1, as in Hoffman et al.; `exact=True`
takes the `C` products with the unit vectors `e_1 .. e_C` instead, which
is exact and costs `C` backward passes (for tests and small `C`).

The projections are drawn from a `keras.random.SeedGenerator`, listed in
the penalty's `seed_generators`: the model tracks it as part of its own
state (functional, subclassed or wrapped), so the projections differ
from step to step also inside a compiled JAX step, and with
`every_n_steps > 1` the seed advances on the steps that apply the
penalty only.

Default strength: `lam = 5e-2`. Hoffman et al.'s reference `JacobianReg`
(facebookresearch/jacobian_regularizer) returns half the batch mean of
`||J||_F^2` and their MNIST example trains with `lambda_JR = 0.1` on
that, which is `lam = 0.05` on this penalty's full `||J||_F^2`; the
DREG preprint fixes only DREG's strength.
"""

import math

import keras
from keras import ops
from keras import tree

from keras_dreg.penalties import base
from keras_dreg.penalties import input_gradient

DEFAULT_LAM = 5e-2


@keras.saving.register_keras_serializable(package="keras_dreg")
class JacobianPenalty(base.Penalty):
    """`lam * mean_i ||d f(x_i) / d x_i||_F^2`, by random projections.

    Args:
        lam: Strength; defaults to `5e-2` (Hoffman et al.'s 0.1 on
            half of `||J||_F^2`).
        num_projections: Random projections per example and step, `n`.
        exact: Use the `C` unit vectors instead (exact, `C` passes).
        seed: Seed of the projections; `None` draws one.
        every_n_steps: Apply it on every `k`-th training step only.

    Example:

    ```python
    model = keras_dreg.PenalizedWrapper(
        base_model,
        penalties=[keras_dreg.penalties.JacobianPenalty(num_projections=2)],
    )
    model.compile("adam", "sparse_categorical_crossentropy")
    model.fit(x, y)  # logs loss and jacobian_penalty
    ```
    """

    name = "jacobian"
    default_lam = DEFAULT_LAM

    def __init__(
        self,
        lam: float | None = None,
        num_projections: int = 1,
        exact: bool = False,
        seed: int | None = None,
        every_n_steps: int = 1,
    ):
        super().__init__(lam, every_n_steps)
        self.num_projections = base.validate_positive_int(
            num_projections, "num_projections"
        )
        self.exact = bool(exact)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    @property
    def seed_generators(self) -> list[keras.random.SeedGenerator]:
        return [self.seed_generator]

    def bind(self, model: keras.Model) -> None:
        input_gradient.check_double_backprop(model, type(self).__name__)

    def __call__(self, model, batch):
        return self.lam * ops.mean(self.squared_norms(model, batch.x))

    def squared_norms(self, model: keras.Model, x):
        """`||J_i||_F^2` of each example (estimated unless `exact`).

        Float32, shape `(batch,)`. Runs the model with `training=True`,
        changing no state but the seed of the projections.
        """
        outputs, pullback = input_gradient.input_vjp(model, x, _flat_outputs)
        (flat,) = outputs
        units = flat.shape[1]
        if self.exact:
            eye = ops.eye(units, dtype="float32")
            cotangents = [ops.zeros_like(flat) + eye[k] for k in range(units)]
            scale = 1.0
        else:
            cotangents = [
                self._projection(flat) for _ in range(self.num_projections)
            ]
            scale = units / self.num_projections
        return scale * sum(
            input_gradient.per_example_squared_norm(pullback([v]))
            for v in cotangents
        )

    def _projection(self, flat):
        """One vector per example, uniform on the unit sphere."""
        v = keras.random.normal(ops.shape(flat), seed=self.seed_generator)
        return v / ops.norm(v, axis=1, keepdims=True)

    def get_config(self) -> dict:
        return {
            **super().get_config(),
            "num_projections": self.num_projections,
            "exact": self.exact,
            "seed": self.seed,
        }


def _flat_outputs(y_pred):
    """The model's outputs as one float32 `(batch, C)` tensor."""
    flat = []
    for t in tree.flatten(y_pred):
        if any(d is None for d in t.shape[1:]):
            raise ValueError(
                "The Jacobian penalty needs outputs of known size per "
                f"example; received an output of shape {t.shape}."
            )
        units = math.prod(t.shape[1:])
        flat.append(ops.reshape(ops.cast(t, "float32"), (-1, units)))
    return [flat[0] if len(flat) == 1 else ops.concatenate(flat, axis=1)]
