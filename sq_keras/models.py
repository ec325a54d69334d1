"""Model registry.

Every model takes images in [0, 1] and returns float32 logits. With
`soft_quantization` set, a `SoftQuantization` layer sits right after the input.

```python
model = build("madry_mnist", input_shape=(28, 28, 1), num_classes=10,
              soft_quantization={"num_thresholds": 1, "alpha": 10.0})
```
"""

import functools

import keras

from sq_keras.layers import CaffePreprocessing
from sq_keras.layers import SoftQuantization


def _madry_mnist(x, num_classes, *, width=1, activation="relu"):
    """The MNIST CNN of Madry et al. 2018 (their mnist_challenge model).

    `width` multiplies both convolutions' filters (32, 64) and the hidden
    dense layer's units (1024); `activation` replaces ReLU.
    """
    x = keras.layers.Conv2D(32 * width, 5, padding="same", activation=activation, name="conv1")(x)
    x = keras.layers.MaxPooling2D(2, name="pool1")(x)
    x = keras.layers.Conv2D(64 * width, 5, padding="same", activation=activation, name="conv2")(x)
    x = keras.layers.MaxPooling2D(2, name="pool2")(x)
    x = keras.layers.Flatten(name="flatten")(x)
    x = keras.layers.Dense(1024 * width, activation=activation, name="fc1")(x)
    return keras.layers.Dense(num_classes, dtype="float32", name="logits")(x)


def _preact_block(x, filters, stride, name):
    """Pre-activation residual block (He et al. 2016, "Identity Mappings in
    Deep Residual Networks"): BN-ReLU-conv3x3-BN-ReLU-conv3x3, with a 1x1
    projection of the pre-activated input when the shape changes."""
    pre = keras.layers.BatchNormalization(name=f"{name}_bn1")(x)
    pre = keras.layers.ReLU(name=f"{name}_relu1")(pre)
    shortcut = x
    if stride != 1 or x.shape[-1] != filters:
        shortcut = keras.layers.Conv2D(
            filters, 1, strides=stride, use_bias=False, name=f"{name}_proj"
        )(pre)
    y = keras.layers.Conv2D(
        filters, 3, strides=stride, padding="same", use_bias=False, name=f"{name}_conv1"
    )(pre)
    y = keras.layers.BatchNormalization(name=f"{name}_bn2")(y)
    y = keras.layers.ReLU(name=f"{name}_relu2")(y)
    y = keras.layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"{name}_conv2")(y)
    return keras.layers.Add(name=f"{name}_add")([shortcut, y])


def _preact_resnet(x, num_classes, *, stem, stages, blocks_per_stage):
    x = keras.layers.Conv2D(stem, 3, padding="same", use_bias=False, name="stem")(x)
    for i, filters in enumerate(stages):
        for j in range(blocks_per_stage):
            stride = 2 if i > 0 and j == 0 else 1
            x = _preact_block(x, filters, stride, name=f"stage{i + 1}_block{j + 1}")
    x = keras.layers.BatchNormalization(name="final_bn")(x)
    x = keras.layers.ReLU(name="final_relu")(x)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    return keras.layers.Dense(num_classes, dtype="float32", name="logits")(x)


def _preact_resnet_mnist(x, num_classes):
    """A small pre-activation ResNet for 28x28 inputs: a 32-filter stem, then
    one block per stage at 32, 64 and 128 filters (28, 14 and 7 pixels
    square); about three times the Madry CNN's multiply-adds per image."""
    return _preact_resnet(x, num_classes, stem=32, stages=(32, 64, 128), blocks_per_stage=1)


def _preact_resnet18(x, num_classes):
    """PreAct ResNet-18 as used for CIFAR-10 by Wong, Rice and Kolter 2020."""
    return _preact_resnet(x, num_classes, stem=64, stages=(64, 128, 256, 512), blocks_per_stage=2)


def _wide_resnet(x, num_classes):
    """WRN-34-10, the wide ResNet of Madry et al.'s CIFAR-10 challenge:
    a 16-filter stem, then 3 stages of 5 pre-activation blocks, 160/320/640
    filters."""
    return _preact_resnet(x, num_classes, stem=16, stages=(160, 320, 640), blocks_per_stage=5)


def _resnet50(x, num_classes):
    """`keras.applications.ResNet50` (random weights; see `build`'s
    `init_weights`) behind its own caffe-style preprocessing."""
    base = keras.applications.ResNet50(
        weights=None,
        input_shape=tuple(x.shape[1:]),
        classes=num_classes,
        classifier_activation=None,
        name="resnet50",
    )
    logits = base(CaffePreprocessing(name="caffe_preprocessing")(x))
    return keras.layers.Activation("linear", dtype="float32", name="logits")(logits)


MODELS = {
    "madry_mnist": _madry_mnist,
    # Capacity and activation levers of MNIST's recipe (results/README.md).
    "madry_mnist_x2": functools.partial(_madry_mnist, width=2),
    "madry_mnist_x4": functools.partial(_madry_mnist, width=4),
    "madry_mnist_silu": functools.partial(_madry_mnist, activation="silu"),
    "resnet50": _resnet50,
    "preact_resnet18": _preact_resnet18,
    "preact_resnet_mnist": _preact_resnet_mnist,
    "wide_resnet": _wide_resnet,
}


def build(name, *, input_shape, num_classes, soft_quantization=None, init_weights=None):
    """Builds a registered model.

    Args:
        name: A key of `MODELS`.
        input_shape: `(H, W, C)` of one image.
        num_classes: Number of logits.
        soft_quantization: None for no quantizer, else a dict of
            `SoftQuantization` keyword arguments.
        init_weights: Optional weights file (`.weights.h5`, or a legacy
            `keras.applications` `.h5`) loaded into the pretrained part: the
            nested base model for `resnet50`, else the whole model.

    Returns:
        A functional `keras.Model` named after `name`.

    Raises:
        ValueError: Unknown model name or bad quantizer arguments.
    """
    if name not in MODELS:
        raise ValueError(f"Unknown model {name!r}. Valid models: {', '.join(sorted(MODELS))}.")
    inputs = keras.Input(shape=tuple(input_shape), name="images")
    x = inputs
    if soft_quantization is not None:
        x = SoftQuantization(name="soft_quantization", **soft_quantization)(x)
    logits = MODELS[name](x, num_classes)
    model = keras.Model(inputs, logits, name=name)
    if init_weights is not None:
        nested = [layer for layer in model.layers if isinstance(layer, keras.Model)]
        target = nested[0] if len(nested) == 1 else model
        try:
            target.load_weights(init_weights)
        except (OSError, ValueError) as e:
            raise ValueError(
                f"Cannot load --init_weights {init_weights} into {target.name}: {e}"
            ) from e
    return model


def with_soft_quantization(base, *, preprocessing=(), name=None, **quantizer_kwargs):
    """Puts a `SoftQuantization` layer in front of any Keras image model.

    `images in [0, 1] -> SoftQuantization -> preprocessing -> base`, so the
    base model keeps its own input preprocessing after the quantizer (e.g.
    `keras.layers.Rescaling(255.0)` and the model family's normalisation for
    a `keras.applications` network).

    Args:
        base: A Keras model taking images of a fixed shape.
        preprocessing: Keras layers applied, in order, between the quantizer
            and `base`.
        name: Name of the returned model; default `<base name>_sq`.
        **quantizer_kwargs: `SoftQuantization` keyword arguments.

    Returns:
        A functional `keras.Model` with float32 logits; `base`'s weights are
        shared, not copied.
    """
    inputs = keras.Input(shape=tuple(base.input_shape[1:]), name="images")
    x = SoftQuantization(name="soft_quantization", **quantizer_kwargs)(inputs)
    for layer in preprocessing:
        x = layer(x)
    outputs = keras.layers.Activation("linear", dtype="float32", name="logits")(base(x))
    return keras.Model(inputs, outputs, name=name or f"{base.name}_sq")
