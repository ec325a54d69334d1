"""Soft-quantization input layer.

A differentiable staircase placed right after the input of a classifier:

    q(x) = (1 / K) * sum_k sigmoid(alpha * (x - t_k))

for inputs in [0, 1], with K learnable thresholds `t_k` and a steepness `alpha`.
On the plateaus between thresholds the Jacobian dq/dx is close to zero, so small
perturbations of the input barely move the network's features (Zheng, Chen and
Ren, arXiv 1810.05665). `alpha` lives in a non-trainable weight so that a
schedule can anneal it during training and the exported model keeps its final
value:

```python
layer = SoftQuantization(num_thresholds=1, alpha=10.0)
y = layer(images)                 # soft staircase, differentiable
set_alpha(model, 100.0)           # anneal: every SoftQuantization in `model`
```
"""

import functools

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="sq_keras")
class SortedUnitInterval(keras.constraints.Constraint):
    """Keeps the last axis of a weight sorted ascending and inside [m, 1 - m].

    The optimiser applies it after every update, so learned thresholds never
    cross each other and never leave the input range.

    Args:
        margin: Distance m in [0, 0.5) kept from 0 and 1.
    """

    def __init__(self, margin=0.0):
        self.margin = float(margin)

    def __call__(self, w):
        return ops.sort(ops.clip(w, self.margin, 1.0 - self.margin), axis=-1)

    def get_config(self):
        return {"margin": self.margin}


@keras.saving.register_keras_serializable(package="sq_keras")
class SoftQuantization(keras.layers.Layer):
    """Element-wise soft staircase with learnable thresholds.

    `q(x) = mean_k sigmoid(alpha * (x - t_k))`, so the output lies in (0, 1) and
    has K + 1 plateaus near 0, 1/K, ..., 1.

    Args:
        num_thresholds: Number K of thresholds (steps). 1 is a soft
            binarisation.
        alpha: Initial steepness of the sigmoids (> 0). Stored in the
            non-trainable weight `alpha`; change it with `set_alpha`.
        per_channel: If True, each input channel gets its own K thresholds;
            otherwise all channels share them.
        hard: If True, inference (`training=False`) uses the exact staircase
            `mean_k [x > t_k]`, whose gradient is zero almost everywhere.
            Training always uses the soft staircase so thresholds can learn.
        trainable_thresholds: If False the thresholds stay at their initial,
            evenly spaced values.
        threshold_margin: Thresholds start evenly spaced inside
            [m, 1 - m] and are kept there. With m > eps, an input at exactly
            0 or 1 (the modes of MNIST-like data) cannot be moved across a
            threshold by an eps-bounded perturbation. 0 allows all of [0, 1].
        **kwargs: Base layer keyword arguments. The dtype policy defaults to
            float32 even under a mixed-precision global policy, see `call`.

    Call arguments:
        inputs: Images with values in [0, 1], channels last.
        training: Only matters when `hard=True`: the soft staircase is used
            when True, the exact staircase when False.

    Input shape:
        Any rank >= 1 with a defined last (channel) axis when `per_channel`.

    Output shape:
        Same as the input.
    """

    def __init__(
        self,
        num_thresholds=1,
        alpha=10.0,
        per_channel=False,
        hard=False,
        trainable_thresholds=True,
        threshold_margin=0.0,
        **kwargs,
    ):
        # Steep sigmoids evaluated in 16 bits lose their plateaus: bfloat16
        # has an 8-bit mantissa, so alpha * (x - t) is rounded to ~1% and
        # inputs near a threshold jump between levels, while float16 overflows
        # exp() for alpha * |x - t| > ~11. The layer therefore runs in float32
        # unless a dtype is given explicitly; the next layer casts its output.
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        if not isinstance(num_thresholds, int) or isinstance(num_thresholds, bool):
            raise ValueError(
                "`num_thresholds` must be a positive integer. "
                f"Received: num_thresholds={num_thresholds}"
            )
        if num_thresholds < 1:
            raise ValueError(
                "`num_thresholds` must be a positive integer. "
                f"Received: num_thresholds={num_thresholds}"
            )
        if not alpha > 0:
            raise ValueError(f"`alpha` must be > 0. Received: alpha={alpha}")
        if not 0.0 <= threshold_margin < 0.5:
            raise ValueError(
                "`threshold_margin` must be in [0, 0.5). "
                f"Received: threshold_margin={threshold_margin}"
            )
        self.num_thresholds = num_thresholds
        self.initial_alpha = float(alpha)
        self.per_channel = bool(per_channel)
        self.hard = bool(hard)
        self.trainable_thresholds = bool(trainable_thresholds)
        self.threshold_margin = float(threshold_margin)
        self.supports_masking = True

    def build(self, input_shape):
        if self.per_channel:
            channels = input_shape[-1]
            if channels is None:
                raise ValueError(
                    "`per_channel=True` needs a defined last axis. "
                    f"Received: input_shape={input_shape}"
                )
            shape = (channels, self.num_thresholds)
        else:
            shape = (self.num_thresholds,)
        self.thresholds = self.add_weight(
            name="thresholds",
            shape=shape,
            initializer=functools.partial(_even_thresholds, margin=self.threshold_margin),
            constraint=SortedUnitInterval(self.threshold_margin),
            trainable=self.trainable_thresholds,
        )
        self.alpha = self.add_weight(
            name="alpha",
            shape=(),
            initializer=keras.initializers.Constant(self.initial_alpha),
            trainable=False,
        )

    def call(self, inputs, training=False):
        x = ops.cast(inputs, self.compute_dtype)
        # [..., C] -> [..., C, 1] against thresholds [K] or [C, K].
        diff = ops.expand_dims(x, -1) - ops.cast(self.thresholds, x.dtype)
        if self.hard and not training:
            steps = ops.cast(diff > 0, x.dtype)
        else:
            steps = ops.sigmoid(ops.cast(self.alpha, x.dtype) * diff)
        return ops.mean(steps, axis=-1)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {
            **super().get_config(),
            "num_thresholds": self.num_thresholds,
            "alpha": self.initial_alpha,
            "per_channel": self.per_channel,
            "hard": self.hard,
            "trainable_thresholds": self.trainable_thresholds,
            "threshold_margin": self.threshold_margin,
        }


def _even_thresholds(shape, dtype=None, margin=0.0):
    """t_k = m + (1 - 2m) k / (K + 1), k = 1..K: evenly inside (m, 1 - m),
    broadcast per channel."""
    k = shape[-1]
    values = margin + (1.0 - 2.0 * margin) * ops.arange(1, k + 1, dtype="float32") / (k + 1)
    return ops.cast(ops.broadcast_to(values, shape), dtype or "float32")


def quantization_layers(model):
    """Returns every `SoftQuantization` layer inside `model`, nested ones included."""
    return [
        layer
        for layer in model._flatten_layers(include_self=True, recursive=True)
        if isinstance(layer, SoftQuantization)
    ]


def set_alpha(model, alpha):
    """Sets the steepness of every `SoftQuantization` layer in `model`."""
    if not alpha > 0:
        raise ValueError(f"`alpha` must be > 0. Received: alpha={alpha}")
    for layer in quantization_layers(model):
        layer.alpha.assign(alpha)


def alpha_schedule(epoch, num_epochs, *, start, end, kind="geometric"):
    """Steepness for a 0-based `epoch` of `num_epochs`, annealed from start to end.

    Args:
        epoch: Current epoch, 0-based.
        num_epochs: Total number of epochs; the last one uses `end`.
        start: Steepness of the first epoch (> 0).
        end: Steepness of the last epoch (> 0).
        kind: "geometric" (constant ratio between epochs), "linear" or
            "constant" (always `end`).

    Returns:
        A Python float.
    """
    if kind == "constant" or num_epochs <= 1:
        return float(end)
    frac = min(max(epoch / (num_epochs - 1), 0.0), 1.0)
    if kind == "linear":
        return float(start + (end - start) * frac)
    if kind == "geometric":
        return float(start * (end / start) ** frac)
    raise ValueError(f"`kind` must be 'geometric', 'linear' or 'constant'. Received: kind={kind}")


@keras.saving.register_keras_serializable(package="sq_keras")
class CaffePreprocessing(keras.layers.Layer):
    """`keras.applications` "caffe" preprocessing from images in [0, 1].

    Scales to [0, 255], reorders RGB to BGR and subtracts the ImageNet BGR
    means, as `keras.applications.resnet50.preprocess_input` does for 0-255
    input. As a layer it is saved with the model and runs in the SavedModel.

    Input shape:
        `[..., 3]` RGB images in [0, 1].

    Output shape:
        Same as the input.
    """

    MEAN_BGR = (103.939, 116.779, 123.68)

    def call(self, inputs):
        bgr = ops.flip(ops.cast(inputs, self.compute_dtype) * 255.0, axis=-1)
        return bgr - ops.convert_to_tensor(self.MEAN_BGR, dtype=self.compute_dtype)

    def compute_output_shape(self, input_shape):
        return input_shape
