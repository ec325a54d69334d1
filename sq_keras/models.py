"""Model registry.

Every model takes images in [0, 1] and returns float32 logits. With
`soft_quantization` set, a `SoftQuantization` layer sits right after the input.

```python
model = build("madry_mnist", input_shape=(28, 28, 1), num_classes=10,
              soft_quantization={"num_thresholds": 1, "alpha": 10.0})
```
"""

import keras

from sq_keras.layers import SoftQuantization


def _madry_mnist(x, num_classes):
    """The MNIST CNN of Madry et al. 2018 (their mnist_challenge model)."""
    x = keras.layers.Conv2D(32, 5, padding="same", activation="relu", name="conv1")(x)
    x = keras.layers.MaxPooling2D(2, name="pool1")(x)
    x = keras.layers.Conv2D(64, 5, padding="same", activation="relu", name="conv2")(x)
    x = keras.layers.MaxPooling2D(2, name="pool2")(x)
    x = keras.layers.Flatten(name="flatten")(x)
    x = keras.layers.Dense(1024, activation="relu", name="fc1")(x)
    return keras.layers.Dense(num_classes, dtype="float32", name="logits")(x)


MODELS = {"madry_mnist": _madry_mnist}


def build(name, *, input_shape, num_classes, soft_quantization=None):
    """Builds a registered model.

    Args:
        name: A key of `MODELS`.
        input_shape: `(H, W, C)` of one image.
        num_classes: Number of logits.
        soft_quantization: None for no quantizer, else a dict of
            `SoftQuantization` keyword arguments.

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
    return keras.Model(inputs, logits, name=name)
