"""Shared by the training tests: a small run configuration, a dying step, a gradient check."""

import numpy as np
import tensorflow as tf

from sq_keras import attacks
from sq_keras import training


def small_config(model_dir, **kwargs):
    """A one-epoch float32 run on 1000 MNIST images, no export; `kwargs` override."""
    defaults = dict(
        epochs=1,
        train_examples=1000,
        batch_size=100,
        grad_examples=64,
        seed=0,
        model_dir=model_dir,
        export_dir=None,
        mixed_precision="float32",
    )
    return training.TrainConfig(**{**defaults, **kwargs})


class Killed(Exception):
    """What a step built by `dying_after` raises: the process "dies" there."""


def dying_after(builder, calls):
    """A step builder whose step runs `calls` times, then raises `Killed`.

    Patch it into `training.STEP_BUILDERS` to kill a run mid-epoch; the step
    keeps the `state` the loop checkpoints.
    """

    def build(*args, **kwargs):
        step = builder(*args, **kwargs)
        return _DyingStep(step, calls)

    return build


class _DyingStep:
    def __init__(self, step, calls):
        self._step, self._left = step, calls
        self.state = getattr(step, "state", {})

    def __call__(self, *batch):
        if self._left == 0:
            raise Killed
        self._left -= 1
        return self._step(*batch)


def assert_the_models_own_weight_gradients(test, model, images, labels, grads):
    """`grads` are the gradients of `model`'s summed cross-entropy in training mode
    with respect to its trainable variables, thresholds included, and none is zero."""
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(attacks.cross_entropy_loss(model(images, training=True), labels))
    expected = tape.gradient(loss, model.trainable_variables)
    for variable, got, want in zip(model.trainable_variables, grads, expected):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6, err_msg=variable.path)
        test.assertGreater(np.abs(got).sum(), 0.0, variable.path)
