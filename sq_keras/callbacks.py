"""Keras callbacks: the quantizer's steepness schedule and the input-gradient curve.

What `apps.train` does between epochs, for `keras.Model.fit`:

```python
callbacks = [
    AlphaSchedule(start=10.0, end=100.0),           # anneal every SoftQuantization
    GradientNormLogger(x_test[:256], y_test[:256]),  # logs grad_l1, grad_zero_fraction
    keras.callbacks.TensorBoard("logs"),            # after them: writes what they logged
]
model.fit(x_train, y_train, epochs=10, callbacks=callbacks)
```

Both add their values to the epoch's `logs`, so that callbacks after them in
the list (TensorBoard, CSVLogger) and the `History` returned by `fit` see
them: `alpha`, `grad_l1` (mean l1 norm over the probe examples of the input
gradient of the cross-entropy, the quantity soft quantization keeps small)
and `grad_zero_fraction` (share of exactly-zero gradient entries, a sign of
gradient masking). TensorBoard shows them as `epoch_alpha`, `epoch_grad_l1`
and `epoch_grad_zero_fraction`.
"""

import keras
import numpy as np

from sq_keras import layers
from sq_keras.training.metrics import input_gradient_stats
from sq_keras.training.schedules import ALPHA_SCHEDULES


class AlphaSchedule(keras.callbacks.Callback):
    """Sets every `SoftQuantization` layer's alpha at the start of each epoch.

    Epoch `e` of `epochs` gets `sq_keras.layers.alpha_schedule(e, epochs,
    start=start, end=end, kind=kind)`, the schedule of `apps.train
    --alpha_start --alpha_end --alpha_schedule`; the last epoch trains (and
    the saved model keeps) `end`.

    Args:
        start: Steepness of the first epoch (> 0).
        end: Steepness of the last epoch (> 0).
        kind: One of `sq_keras.training.ALPHA_SCHEDULES`: "geometric"
            (constant ratio between epochs), "linear" or "constant" (always
            `end`).
        epochs: Length of the schedule; default the `epochs` given to `fit`.
            Epochs past it keep `end`.

    Raises:
        ValueError: An argument out of range; at the start of `fit`, a model
            without a `SoftQuantization` layer.
    """

    def __init__(self, start=10.0, end=100.0, kind="geometric", epochs=None):
        super().__init__()
        for name, value in (("start", start), ("end", end)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise ValueError(f"`{name}` must be a number > 0. Received: {name}={value!r}")
        if kind not in ALPHA_SCHEDULES:
            raise ValueError(
                f"`kind` must be one of {', '.join(ALPHA_SCHEDULES)}. Received: kind={kind!r}"
            )
        if epochs is not None and (
            isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1
        ):
            raise ValueError(f"`epochs` must be a positive integer or None. Received: {epochs!r}")
        self.start = float(start)
        self.end = float(end)
        self.kind = kind
        self.epochs = epochs
        self.alpha = None

    def on_train_begin(self, logs=None):
        if not layers.quantization_layers(self.model):
            raise ValueError(
                f"AlphaSchedule: model {self.model.name!r} has no SoftQuantization layer. "
                "Add one (sq_keras.layers.SoftQuantization after the input, or "
                "sq_keras.RobustModel(..., add_quantizer=True)) or drop the callback."
            )

    def _num_epochs(self):
        return self.epochs or self.params.get("epochs") or 1

    def on_epoch_begin(self, epoch, logs=None):
        self.alpha = layers.alpha_schedule(
            epoch, self._num_epochs(), start=self.start, end=self.end, kind=self.kind
        )
        layers.set_alpha(self.model, self.alpha)

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None and self.alpha is not None:
            logs["alpha"] = self.alpha


class GradientNormLogger(keras.callbacks.Callback):
    """Adds the input-gradient size on fixed probe examples to each epoch's logs.

    At the end of every epoch computes, as `apps.train` does,
    `sq_keras.training.input_gradient_stats` of the model in inference mode
    on `images` and `labels`, and adds `grad_l1` and `grad_zero_fraction` to
    the logs. Put it before `keras.callbacks.TensorBoard` in the list.

    Args:
        images: float32 `[N, H, W, C]` probe images in [0, 1] (a few hundred
            test images suffice; they go through the model in one batch).
        labels: int `[N]` labels.

    Attributes:
        history: The `(grad_l1, grad_zero_fraction)` of every epoch so far.

    Raises:
        ValueError: No images, or images and labels of different lengths.
    """

    def __init__(self, images, labels):
        super().__init__()
        images = np.asarray(images, np.float32)
        labels = np.asarray(labels)
        if images.ndim < 2 or not len(images):
            raise ValueError(
                f"`images` must be a non-empty batch [N, ...]. Received shape {images.shape}"
            )
        if labels.shape != (len(images),):
            raise ValueError(
                f"`labels` must have shape ({len(images)},) to match `images`. "
                f"Received shape {labels.shape}"
            )
        if not np.issubdtype(labels.dtype, np.integer):
            raise ValueError(f"`labels` must be integers. Received dtype {labels.dtype}")
        self.images = images
        self.labels = labels.astype(np.int64)
        self.history = []

    def on_epoch_end(self, epoch, logs=None):
        grad_l1, zero_fraction = input_gradient_stats(self.model, self.images, self.labels)
        self.history.append((grad_l1, zero_fraction))
        if logs is not None:
            logs["grad_l1"] = grad_l1
            logs["grad_zero_fraction"] = zero_fraction
