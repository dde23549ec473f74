"""Weight decay: an L2 penalty on the kernels.

    WD = lam * sum_W ||W||_F^2

over every trainable kernel of the model: the variables whose name ends
in `kernel` (`kernel`, `recurrent_kernel`, `depthwise_kernel`,
`pointwise_kernel`), so neither biases, nor normalization parameters
(`gamma`, `beta`), nor embeddings. It is `keras.regularizers.L2(lam)` on
each kernel, applied to an existing model without rebuilding it. Its
gradient is `2 * lam * W`. PyTorch's `SGD(weight_decay=w)` adds `w * W`
to the gradient, an L2 loss of `(w / 2) ||W||^2`: in this convention its
`weight_decay=w` is `lam = w / 2`.

Default strength: `lam = 2.5e-4`, i.e. `SGD(weight_decay=5e-4)`, the
setting of Hoffman et al.'s (2019) MNIST example beside their Jacobian
penalty (facebookresearch/jacobian_regularizer) and the common default
for CNNs (the Wide ResNets of Zagoruyko & Komodakis, 2016); this
project's choice, the DREG preprint fixes only DREG's strength.
"""

import keras
from keras import ops

from keras_dreg import penalty
from keras_dreg.penalties import base

DEFAULT_LAM = 2.5e-4


@keras.saving.register_keras_serializable(package="keras_dreg")
class WeightDecay(base.Penalty):
    """`lam * sum ||W||^2` over the model's trainable kernels.

    Args:
        lam: Strength; defaults to `2.5e-4` (`SGD(weight_decay=5e-4)`).
        every_n_steps: Apply it on every `k`-th training step only.

    Example:

    ```python
    model = keras_dreg.PenalizedWrapper(
        base_model, penalties=[keras_dreg.penalties.WeightDecay(1e-4)]
    )
    model.compile("adam", "sparse_categorical_crossentropy")
    model.fit(x, y)  # logs loss and weight_decay_penalty
    ```
    """

    name = "weight_decay"
    default_lam = DEFAULT_LAM

    def __call__(self, model, batch):
        squares = [
            ops.sum(penalty.squared_column_norms(v)) for v in kernels(model)
        ]
        if not squares:
            return ops.zeros((), "float32")
        return self.lam * ops.sum(ops.stack(squares))


def kernels(model: keras.Model) -> list[keras.Variable]:
    """The trainable variables of `model` whose name ends in `kernel`."""
    return [v for v in model.trainable_variables if v.name.endswith("kernel")]
