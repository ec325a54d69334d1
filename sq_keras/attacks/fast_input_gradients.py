"""Faster CPU input gradients: a `model_fn` with hand-written backward passes.

`input_gradient_model` clones a Keras model with its own layers, rewriting
the backward pass of the layers whose TensorFlow input gradient runs on slow
CPU kernels. Outputs are exactly the model's; input gradients are
mathematically equal to TensorFlow's. `bpda` uses the same rewrite to replace
the backward pass of every `SoftQuantization` layer.
"""

import functools

import keras
import tensorflow as tf

from sq_keras.layers import SoftQuantization


def _relu_or_linear(layer):
    activation = getattr(layer, "activation", None)
    if activation is keras.activations.linear:
        return "linear"
    if activation is keras.activations.relu:
        return "relu"
    return None


def _plain_dense(layer):
    """A Dense layer whose input gradient `_dense_input_gradient` speeds up.

    Only in float32: with bfloat16 compute, TensorFlow's own gradient was
    faster on the CPUs measured.
    """
    return (
        type(layer) is keras.layers.Dense
        and layer.compute_dtype == "float32"
        and _relu_or_linear(layer) is not None
        and not getattr(layer, "lora_enabled", False)
        and getattr(layer, "quantization_mode", None) is None
        and _input_rank(layer) == 2
    )


def _input_rank(layer):
    try:
        return len(layer.input.shape)
    except (AttributeError, ValueError):  # not built, or called on several inputs
        return None


def plain_single_channel_conv(layer):
    """A stride-1 'same' Conv2D on one input channel, odd kernel, no dilation.

    `conv_input_gradient` is its input gradient (free adversarial training
    uses it too, `sq_keras.training.free`).
    """
    return (
        type(layer) is keras.layers.Conv2D
        and layer.compute_dtype in ("float32", "bfloat16")
        and _relu_or_linear(layer) is not None
        and layer.data_format == "channels_last"
        and layer.padding == "same"
        and tuple(layer.strides) == (1, 1)
        and tuple(layer.dilation_rate) == (1, 1)
        and layer.groups == 1
        and layer.kernel.shape[2] == 1
        and all(k % 2 == 1 for k in layer.kernel_size)
        and not getattr(layer, "lora_enabled", False)
        and getattr(layer, "quantization_mode", None) is None
    )


def _activation_backward(layer, outputs, upstream):
    if _relu_or_linear(layer) == "relu":
        # The op TensorFlow's own ReLU gradient runs: one pass over the data.
        return tf.raw_ops.ReluGrad(gradients=tf.cast(upstream, outputs.dtype), features=outputs)
    return upstream


def _dense_input_gradient(layer, inputs, outputs, upstream):
    # d/da of act(a @ W + b) is (g @ W^T); computed as (W @ g^T)^T, which
    # CPU matmul kernels run ~2x faster than a matmul with a transposed
    # large right operand (the gradient TensorFlow registers for MatMul).
    del inputs
    g = _activation_backward(layer, outputs, upstream)
    kernel = tf.cast(layer.kernel, g.dtype)
    return tf.transpose(tf.matmul(kernel, g, transpose_b=True))


def _relu_then_max_pool(layer, model_outputs):
    """A ReLU Conv2D (channels last) whose output feeds one MaxPooling2D only.

    ReLU is monotone, so max-pooling the pre-activations and then applying
    ReLU gives exactly the model's values, and ReLU's gradient then runs on
    the pooled tensor (a quarter of the entries for 2x2 pools).
    """
    outbound = getattr(layer, "_outbound_nodes", None) or []
    inbound = getattr(layer, "_inbound_nodes", None) or []
    return (
        type(layer) is keras.layers.Conv2D
        and _relu_or_linear(layer) == "relu"
        and layer.data_format == "channels_last"
        and not getattr(layer, "lora_enabled", False)
        and getattr(layer, "quantization_mode", None) is None
        and len(inbound) == 1
        and len(outbound) == 1
        and type(outbound[0].operation) is keras.layers.MaxPooling2D
        and id(layer.output) not in model_outputs
    )


def _conv_pre_activation(layer, inputs):
    # Keras's own Conv call (BaseConv.call) without the activation.
    dtype = layer.compute_dtype
    outputs = layer.convolution_op(
        keras.ops.cast(inputs, dtype), keras.ops.cast(layer.kernel, dtype)
    )
    if layer.use_bias:
        bias_shape = (1,) * (layer.rank + 1) + (layer.filters,)
        outputs = keras.ops.add(
            outputs, keras.ops.reshape(keras.ops.cast(layer.bias, dtype), bias_shape)
        )
    return outputs


def _output_ids(model):
    """ids of the output tensors of `model` and of the models nested in it."""
    ids = {id(t) for t in keras.tree.flatten(model.outputs)}
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            ids |= _output_ids(layer)
    return ids


def conv_input_gradient(layer, inputs, outputs, upstream, *, activation=True):
    """d(loss)/d(inputs) of a `plain_single_channel_conv` layer from `upstream`.

    With `activation=False`, `upstream` is already the gradient of the
    pre-activation.
    """
    # For one input channel and an odd k x k kernel w with 'same' padding p,
    # dx[i, j] = sum_{u, v, c} g[i - u + p, j - v + p, c] w[u, v, c]: a
    # depthwise correlation of g with the flipped kernel, summed over
    # channels. CPU kernels run it ~4x faster than the transposed
    # convolution with a single output channel that TensorFlow registers.
    del inputs
    g = _activation_backward(layer, outputs, upstream) if activation else upstream
    kernel = tf.cast(layer.kernel, g.dtype)  # [kh, kw, 1, channels]
    flipped = tf.transpose(tf.reverse(kernel, axis=[0, 1]), [0, 1, 3, 2])
    per_channel = tf.nn.depthwise_conv2d(g, flipped, strides=[1, 1, 1, 1], padding="SAME")
    return tf.reduce_sum(per_channel, axis=-1, keepdims=True)


def input_gradient_model(model, *, quantizer_backward=None):
    """A `model_fn` with the model's exact outputs and faster input gradients.

    The forward pass is the model's own. In the backward pass, float32 Dense
    layers (ReLU or linear, 2-D input) and float32 or bfloat16 stride-1
    'same' Conv2D layers on a single input channel get hand-written input
    gradients that are mathematically equal to TensorFlow's but avoid slow
    CPU kernels (a matmul with a transposed large operand; a transposed
    convolution with one output channel). A ReLU Conv2D read only by a
    MaxPooling2D applies its ReLU after the pool instead (the same values, as
    ReLU is monotone; ReLU's gradient then runs on the pooled tensor).
    Parameter gradients are not computed: the returned function is for
    attacks, which differentiate with respect to the input only.

    Args:
        model: A functional or sequential `keras.Model`.
        quantizer_backward: Optional `f(layer, inputs, outputs, upstream) -> dx` that
            replaces the backward pass of every `SoftQuantization` layer
            (see `bpda`).

    Returns:
        `model_fn(images) -> logits`.
    """
    model_outputs = _output_ids(model)
    pre_activations = set()  # ids of conv outputs whose ReLU moves after the pool

    def call_function(layer, *args, **kwargs):
        if _relu_then_max_pool(layer, model_outputs):
            outputs = _without_activation(layer)(args[0])
            pre_activations.add(id(outputs))
            return outputs
        if type(layer) is keras.layers.MaxPooling2D and id(args[0]) in pre_activations:
            return _pool_then_relu(layer)(args[0])
        backward = _input_backward(layer, quantizer_backward)
        if backward is not None:
            return _rewritten(layer, backward)(args[0])
        return layer(*args, **kwargs)

    surrogate = keras.models.clone_model(
        model,
        clone_function=lambda layer: layer,
        call_function=call_function,
        recursive=True,
    )

    def model_fn(images):
        return surrogate(images, training=False)

    return model_fn


def _input_backward(layer, quantizer_backward):
    """The hand-written `backward(layer, inputs, outputs, upstream)` of `layer`.

    None when TensorFlow's own gradient is kept.
    """
    if isinstance(layer, SoftQuantization) and quantizer_backward is not None:
        return quantizer_backward
    if _plain_dense(layer):
        return _dense_input_gradient
    if plain_single_channel_conv(layer):
        return conv_input_gradient
    return None


def _rewritten(layer, backward, forward_fn=None):
    """A Lambda layer: `layer`'s forward pass (or `forward_fn`'s), `backward`'s gradient."""

    def call(inputs):
        @tf.custom_gradient
        def forward(x):
            if forward_fn is None:
                outputs = layer(x, training=False)
            else:
                outputs = forward_fn(layer, x)

            def gradient(upstream, variables=None):
                dx = backward(layer, x, outputs, upstream)
                return tf.cast(dx, x.dtype), [None] * len(variables or [])

            return outputs, gradient

        return forward(inputs)

    return keras.layers.Lambda(call, name=f"{layer.name}_input_gradient", dtype=layer.dtype_policy)


def _without_activation(layer):
    """A Lambda layer: the pre-activation of a ReLU Conv2D read only by a max pool."""
    if plain_single_channel_conv(layer):
        backward = functools.partial(conv_input_gradient, activation=False)
        return _rewritten(layer, backward, _conv_pre_activation)
    return keras.layers.Lambda(
        lambda x: _conv_pre_activation(layer, x),
        name=f"{layer.name}_linear",
        dtype=layer.dtype_policy,
    )


def _pool_then_relu(layer):
    """A Lambda layer: the MaxPooling2D `layer`, then the ReLU moved after it."""
    return keras.layers.Lambda(
        lambda x: keras.ops.relu(layer(x, training=False)),
        name=f"{layer.name}_relu",
        dtype=layer.dtype_policy,
    )
