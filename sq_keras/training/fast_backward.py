"""Train-step backward passes with the first convolution's input gradient made fast.

Where a train step differentiates through the model's first layers (the
thresholds of a `SoftQuantization` front, or the input itself in free
adversarial training), TensorFlow's gradient of a float32 Conv2D on one input
channel runs a transposed convolution with a single output channel, a CPU
kernel several times slower than the layer's forward pass: on MNIST's Madry
CNN in float32 it makes a `sq_natural` step cost about 1.15x a `natural` one,
whose input needs no gradient. `fast_backward_model` clones a model so that
those layers get the input gradient of `sq_keras.attacks.fast_input_gradients`
and TensorFlow's own weight gradients; values and gradients are the model's.

```python
model_fn = fast_backward_model(model)            # the quantizer's own derivative
logits = model_fn(images, training=True)         # exactly model(images, training=True)
```
"""

import keras
import tensorflow as tf

from sq_keras import layers
from sq_keras import precision
from sq_keras.attacks.fast_input_gradients import conv_input_gradient
from sq_keras.attacks.fast_input_gradients import plain_single_channel_conv


def fast_backward_model(model, *, quantizer_call=None):
    """A copy of `model` whose single-channel convolutions have fast gradients.

    Layers and weights are the model's own, and so is every output. A
    stride-1 'same' Conv2D on one input channel (MNIST's first layer) gets the
    input gradient of `sq_keras.attacks.fast_input_gradients` and TensorFlow's
    weight gradients: in float32 always, in bfloat16 where TensorFlow's own
    kernel is the slower one (`has_slow_input_gradient`: on an Intel Xeon with
    AMX it was the faster one, on a CPU without AMX the slower,
    `benchmarks/conv_input_gradient.py`).

    Args:
        model: A functional `keras.Model`.
        quantizer_call: Optional `layer -> keras.layers.Layer` replacing each
            `SoftQuantization` layer (`sq_keras.training.free` gives it its
            BPDA stand-in's derivative); None keeps the layers as they are.

    Returns:
        A `keras.Model` called like `model`. Weights read inside the
        rewritten layers are not its own: differentiate with respect to
        `model.trainable_variables`.
    """

    def call_function(layer, *args, **kwargs):
        if quantizer_call is not None and isinstance(layer, layers.SoftQuantization):
            return quantizer_call(layer)(args[0])
        if has_slow_input_gradient(layer):
            return _conv_with_fast_gradients(layer)(args[0])
        return layer(*args, **kwargs)

    return keras.models.clone_model(
        model, clone_function=lambda layer: layer, call_function=call_function, recursive=True
    )


def has_slow_input_gradient(layer):
    """Whether `fast_backward_model` rewrites `layer`'s backward pass.

    A `plain_single_channel_conv` in float32 always; in bfloat16 on a CPU
    without AMX (`tensorflow_bfloat16_input_gradient_is_slow`).
    """
    if not plain_single_channel_conv(layer):
        return False
    if layer.compute_dtype == "float32":
        return True
    return layer.compute_dtype == "bfloat16" and tensorflow_bfloat16_input_gradient_is_slow()


def tensorflow_bfloat16_input_gradient_is_slow():
    """Whether TensorFlow's bfloat16 single-channel input gradient loses to the depthwise form.

    Measured (`benchmarks/conv_input_gradient.py`, `results/`): on an Intel
    Xeon with AMX TensorFlow's kernel took 1.15 ms against 1.73 ms; on an AMD
    EPYC with AVX512-BF16 and no AMX it was ~4x slower than the depthwise
    form. So: on a CPU (no GPU visible) whose usable bfloat16 instructions
    (`sq_keras.precision.native_bfloat16_flags`, which honours a oneDNN ISA
    cap) do not include AMX.
    """
    if tf.config.list_physical_devices("GPU"):
        return False
    return "amx_bf16" not in precision.native_bfloat16_flags()


def speeds_up(model):
    """Whether `fast_backward_model(model)` rewrites any layer.

    False for Sequential and subclassed models, which `keras.models.clone_model`
    cannot rewrite layer by layer.
    """
    if isinstance(model, keras.Sequential) or not hasattr(model, "_run_through_graph"):
        return False
    inner = model._flatten_layers(include_self=False, recursive=True)
    return any(has_slow_input_gradient(layer) for layer in inner)


def _conv_with_fast_gradients(layer):
    """A Lambda layer: the Conv2D `layer`, its input gradient in the depthwise form."""

    def call(inputs):
        @tf.custom_gradient
        def forward(x):
            outputs = layer(x)

            def gradient(upstream, variables=None):
                with tf.name_scope(f"{layer.name}_fast_backward"):  # named in profiles
                    g = upstream
                    if layer.activation is keras.activations.relu:
                        g = tf.raw_ops.ReluGrad(gradients=upstream, features=outputs)
                    dx = conv_input_gradient(layer, x, outputs, g, activation=False)
                    return dx, [_conv_weight_gradient(v, x, g) for v in variables or []]

            return outputs, gradient

        return forward(inputs)

    name = f"{layer.name}_fast_input_gradient"
    return keras.layers.Lambda(call, name=name, dtype=layer.dtype_policy)


def _conv_weight_gradient(variable, inputs, pre_activation_gradient):
    """TensorFlow's gradient of a stride-1 'same' Conv2D's kernel or bias."""
    if variable.shape.rank == 1:  # the bias
        gradient = tf.reduce_sum(pre_activation_gradient, axis=[0, 1, 2])
    else:
        gradient = tf.raw_ops.Conv2DBackpropFilter(
            input=inputs,
            filter_sizes=tf.shape(variable),
            out_backprop=pre_activation_gradient,
            strides=[1, 1, 1, 1],
            padding="SAME",
        )
    # Under a mixed policy the layer computes in bfloat16 from float32 variables.
    return tf.cast(gradient, variable.dtype)
