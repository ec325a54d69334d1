"""Shared fixtures of the attacks tests: MNIST and small trained models.

The models are tiny CNNs trained for two epochs on 5,000 training images
(about 2 s each on two cores); they are trained once per process and shared
by every test file that asks for them.
"""

import functools
import os

import keras
import numpy as np
import tensorflow as tf

from sq_keras import attacks
from sq_keras import data
from sq_keras import models
from sq_keras.layers import SoftQuantization

NUM_TEST = 300
TOLERANCE = 1e-6  # float32 rounding of |x_adv - x| around eps.


def _data_dir():
    return os.environ.get("SQ_KERAS_DATA_DIR")


@functools.lru_cache(maxsize=None)
def mnist(split):
    images, labels = data.load_arrays("mnist", split, data_dir=_data_dir())
    return images.astype(np.float32) / 255.0, labels


def tiny_cnn(quantizer=None, seed=0):
    """A small CNN, optionally after a SoftQuantization layer."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((28, 28, 1), name="images")
    x = inputs
    if quantizer is not None:
        x = SoftQuantization(name="soft_quantization", **quantizer)(x)
    x = keras.layers.Conv2D(16, 3, strides=2, activation="relu")(x)
    x = keras.layers.Conv2D(32, 3, strides=2, activation="relu")(x)
    x = keras.layers.Flatten()(x)
    x = keras.layers.Dense(64, activation="relu")(x)
    return keras.Model(inputs, keras.layers.Dense(10)(x))


@functools.lru_cache(maxsize=None)
def trained_model(kind, seed=0):
    """'natural': plain CNN; 'masked': CNN behind an exact 10-level rounding.

    The masked toy rounds every pixel to the nearest of 10 levels at
    inference (`SoftQuantization(hard=True)`), so its input gradient is zero
    almost everywhere while eps = 0.3 still crosses two or three levels: plain
    PGD is stuck, yet the model is not robust.
    """
    quantizer = None
    if kind == "masked":
        quantizer = {"num_thresholds": 9, "hard": True, "trainable_thresholds": False}
    model = tiny_cnn(quantizer, seed=seed)
    model.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    images, labels = mnist("train[:5000]")
    model.fit(images, labels, batch_size=64, epochs=2, verbose=0)
    return model


def madry_cnn(policy="float32"):
    """The untrained Madry MNIST CNN behind a SoftQuantization layer."""
    keras.utils.set_random_seed(1)
    keras.config.set_dtype_policy(policy)
    try:
        return models.build(
            "madry_mnist",
            input_shape=(28, 28, 1),
            num_classes=10,
            soft_quantization={"num_thresholds": 1, "alpha": 10.0},
        )
    finally:
        keras.config.set_dtype_policy("float32")


def model_fn_of(model):
    return lambda images: model(images, training=False)


def counting(model_fn):
    """`(counted_fn, calls)`: `model_fn` that adds each call to the variable `calls`."""
    calls = tf.Variable(0, trainable=False)

    def counted_fn(images):
        calls.assign_add(1)
        return model_fn(images)

    return counted_fn, calls


def eval_data(num=NUM_TEST):
    images, labels = mnist("test[:1000]")
    return images[:num], labels[:num]


def run(attack, *args, **kwargs):
    """Runs an attack inside tf.function, as the evaluator does."""
    return tf.function(lambda x, y: attack(*args, x, y, **kwargs))


def square_images(model_fn, x, y, **kwargs):
    """`attacks.square` without the query counts, like the other attacks."""
    return attacks.square(model_fn, x, y, **kwargs)[0]


def fooled_mask(model_fn, x_adv, y):
    """Per example, whether `model_fn` misclassifies `x_adv`."""
    return attacks.predictions(model_fn, x_adv).numpy() != y


def input_gradient(model_fn, x, y):
    """Float32 logits and the input gradient of the summed cross-entropy."""
    x = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(x)
        logits = tf.cast(model_fn(x), tf.float32)
        loss = tf.reduce_sum(attacks.cross_entropy_loss(logits, tf.constant(y)))
    return logits.numpy(), tape.gradient(loss, x).numpy()
