"""BPDA: a `model_fn` whose backward pass replaces every quantizer by a stand-in."""

import tensorflow as tf

from sq_keras.attacks.fast_input_gradients import input_gradient_model
from sq_keras.layers import quantization_layers

STAND_INS = ("identity", "smooth")


def has_quantizer(model):
    """True if `model` (a `keras.Model`) contains a `SoftQuantization` layer."""
    return bool(quantization_layers(model))


def stand_in_derivative(layer, inputs, stand_in, smooth_alpha=10.0):
    """d stand-in / dx for one `SoftQuantization` layer, element-wise (float32).

    Also what free adversarial training differentiates the quantizer with
    (`sq_keras.training.free`).
    """
    x = tf.cast(inputs, tf.float32)
    if stand_in == "identity":
        return tf.ones_like(x)
    # Smoothed copy q_s(x) = mean_k sigmoid(a * (x - t_k)) with a small a:
    # dq_s/dx = mean_k a * s_k * (1 - s_k).
    thresholds = tf.stop_gradient(tf.cast(layer.thresholds, tf.float32))
    s = tf.sigmoid(smooth_alpha * (tf.expand_dims(x, -1) - thresholds))
    return tf.reduce_mean(smooth_alpha * s * (1.0 - s), axis=-1)


def bpda(model, *, stand_in="identity", smooth_alpha=10.0):
    """Backward Pass Differentiable Approximation of a quantized model.

    Athalye, Carlini and Wagner 2018, "Obfuscated Gradients Give a False Sense
    of Security", section 4.1: the forward pass is the real model; in the
    backward pass every `SoftQuantization` layer (soft or hard) is replaced by
    a differentiable stand-in:

    * "identity": straight-through, dq/dx := 1;
    * "smooth": a copy of the same quantizer with the small steepness
      `smooth_alpha`, whose derivative is not saturated near thresholds.

    Any gradient attack then runs on the returned function.

    Args:
        model: A functional or sequential `keras.Model` taking images in [0, 1].
        stand_in: "identity" or "smooth".
        smooth_alpha: Steepness of the "smooth" stand-in (> 0).

    Returns:
        A `model_fn(images) -> logits` with the model's exact outputs.

    Raises:
        ValueError: Unknown `stand_in`, bad `smooth_alpha`, or a model that
            contains no `SoftQuantization` layer.
    """
    if stand_in not in STAND_INS:
        raise ValueError(f"`stand_in` must be one of {STAND_INS}. Received: stand_in={stand_in!r}")
    if not smooth_alpha > 0:
        raise ValueError(f"`smooth_alpha` must be > 0. Received: smooth_alpha={smooth_alpha}")
    if not has_quantizer(model):
        raise ValueError(
            f"Model {model.name!r} contains no SoftQuantization layer; BPDA would "
            "equal a plain gradient attack."
        )

    def quantizer_backward(layer, x, outputs, upstream):
        del outputs
        derivative = stand_in_derivative(layer, x, stand_in, smooth_alpha)
        return tf.cast(tf.cast(upstream, tf.float32) * derivative, x.dtype)

    return input_gradient_model(model, quantizer_backward=quantizer_backward)
