"""Callbacks that show where DREG puts its pressure."""

import os

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

    and adds them to the epoch logs, so `History`, and `TensorBoard` and
    `CSVLogger` placed after this callback in the list, record them. With
    `log_dir`, it also writes them itself as TensorBoard scalars (one
    point per epoch) to the run `<log_dir>/dreg`, wherever it stands in
    the list; that needs TensorFlow installed (any Keras backend), as
    `keras.callbacks.TensorBoard` does.

    Args:
        probe: A batch of inputs, kept fixed across epochs.
        log_dir: Optional directory for TensorBoard event files; give the
            `log_dir` of a `keras.callbacks.TensorBoard` to see the `dreg`
            run next to its `train` and `validation` runs.

    Example:

    >>> x = np.random.default_rng(0).normal(size=(64, 4)).astype("float32")
    >>> y = (x[:, 0] > 0).astype("int32")
    >>> inputs = keras.Input((4,))
    >>> hidden = keras.layers.Dense(8, activation="gelu", name="hidden")
    >>> outputs = keras.layers.Dense(2)(hidden(inputs))
    >>> model = keras_dreg.DREGRegularizedModel(inputs, outputs)
    >>> model.compile("adam", "sparse_categorical_crossentropy")
    >>> monitor = keras_dreg.callbacks.DREGMonitor(x[:16], log_dir=tmp_dir)
    >>> history = model.fit(x, y, epochs=2, verbose=0, callbacks=[monitor])
    >>> len(history.history["dreg/hidden/penalty"])
    2
    >>> sorted(os.listdir(tmp_dir))
    ['dreg']
    """

    def __init__(self, probe, log_dir: str | None = None):
        super().__init__()
        self.probe = probe
        self.log_dir = log_dir
        self._writer = None

    def on_epoch_end(self, epoch, logs=None):
        if logs is None and self.log_dir is None:
            return
        values = self._measure()
        if logs is not None:
            logs.update(values)
        if self.log_dir is not None:
            self._write(values, step=epoch)

    def on_train_end(self, logs=None):
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def _measure(self) -> dict[str, float]:
        """`{"dreg/<layer>/<quantity>": value}` on the probe batch."""
        if not hasattr(self.model, "dreg_penalty"):
            raise TypeError(
                "DREGMonitor needs a keras_dreg.DREGRegularizedModel; "
                f"got {type(self.model).__name__}. Wrap the model with "
                "`keras_dreg.wrap(model)`."
            )
        quantities = {
            "penalty": self.model.dreg_penalty(self.probe, per_layer=True),
            "mean_sq_derivative": self.model.mean_squared_derivatives(
                self.probe
            ),
        }
        return {
            f"dreg/{name}/{quantity}": float(ops.convert_to_numpy(value))
            for quantity, per_layer in quantities.items()
            for name, value in per_layer.items()
        }

    def _write(self, values: dict[str, float], step: int) -> None:
        try:
            import tensorflow as tf
        except ImportError as error:
            raise ImportError(
                "DREGMonitor(log_dir=...) writes TensorBoard event files "
                "with TensorFlow, which is not installed. Install it "
                "(`pip install tensorflow`), or drop `log_dir` and put a "
                "`keras.callbacks.CSVLogger` after this callback."
            ) from error
        if self._writer is None:
            self._writer = tf.summary.create_file_writer(
                os.path.join(self.log_dir, "dreg")
            )
        with self._writer.as_default(step=step):
            for tag, value in values.items():
                tf.summary.scalar(tag, value)
        self._writer.flush()
