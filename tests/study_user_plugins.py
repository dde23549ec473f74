"""A user's own model and regularizer, as `--imports` loads them.

`tests/test_study_plugins.py` runs `keras-dreg study run --imports
tests.study_user_plugins` on them.
"""

import keras

from keras_dreg.study import register_model
from keras_dreg.study import register_regularizer


def tiny_mlp(dataset, activation):
    """Flatten, one hidden `Dense(16, activation)`, logits."""
    inputs = keras.Input(dataset.x_train.shape[1:])
    x = keras.layers.Flatten()(inputs)
    x = keras.layers.Dense(16, activation=activation, name="hidden")(x)
    outputs = keras.layers.Dense(dataset.num_classes, name="logits")(x)
    return keras.Model(inputs, outputs, name="tiny_mlp")


def l1_kernels(model, lam):
    """L1 on every kernel, through Keras's own weight regularizers."""
    for layer in model.layers:
        if hasattr(layer, "kernel"):
            layer.kernel.regularizer = keras.regularizers.L1(lam)
    return model


register_model("tiny_mlp", tiny_mlp)
register_regularizer("l1_kernels", l1_kernels, lam=1e-3, source="a test")
