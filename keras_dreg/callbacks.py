"""Callbacks that show where DREG puts its pressure."""

import keras
from keras import ops


class DREGMonitor(keras.callbacks.Callback):
    """Logs each regularized layer's penalty and `mean(phi'(z)^2)`.

    DREG weights each unit's incoming weight norm by the squared
    activation derivative, so the pressure concentrates on the layers
    where `phi'` is largest. At the end of every epoch this callback
    evaluates, on a fixed probe batch and with `training=False`:

    - `dreg/<layer>/penalty`: `lam * weight_l * DREG_l(probe)`;
    - `dreg/<layer>/mean_sq_derivative`: `mean(phi'(z)^2)` over the
      layer's units, positions and the probe batch;

    and adds them to the epoch logs, so `History` and `TensorBoard`
    (placed after this callback in the list) show them.

    Args:
        probe: A batch of inputs, kept fixed across epochs.

    Example:

    ```python
    monitor = keras_dreg.callbacks.DREGMonitor(x_train[:256])
    history = model.fit(x_train, y_train, epochs=5, callbacks=[monitor])
    history.history["dreg/dense/penalty"]
    ```
    """

    def __init__(self, probe):
        super().__init__()
        self.probe = probe

    def on_epoch_end(self, epoch, logs=None):
        if logs is None:
            return
        if not hasattr(self.model, "dreg_penalty"):
            raise TypeError(
                "DREGMonitor needs a keras_dreg.DREGRegularizedModel; "
                f"got {type(self.model).__name__}. Wrap the model with "
                "`keras_dreg.wrap(model)`."
            )
        penalties = self.model.dreg_penalty(self.probe, per_layer=True)
        derivatives = self.model.mean_squared_derivatives(self.probe)
        for name, value in penalties.items():
            logs[f"dreg/{name}/penalty"] = float(ops.convert_to_numpy(value))
        for name, value in derivatives.items():
            logs[f"dreg/{name}/mean_sq_derivative"] = float(
                ops.convert_to_numpy(value)
            )
