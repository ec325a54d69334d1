"""Tests for sq_keras.training.steps: each train step on real MNIST batches."""

from unittest import mock

import keras
import numpy as np
import tensorflow as tf
from absl.testing import absltest
from absl.testing import parameterized

from sq_keras import attacks
from sq_keras import data
from sq_keras import layers
from sq_keras import models
from sq_keras import training
from sq_keras.training import fast_backward
from sq_keras.training import steps
from tests.training.fixtures import assert_the_models_own_weight_gradients


def _mnist_batch(n):
    images, labels = data.load_arrays("mnist", f"train[:{n}]")
    return images.astype(np.float32) / 255.0, labels.astype(np.int64)


def _step(method, **overrides):
    config = training.TrainConfig(
        dataset="mnist", method=method, mixed_precision="float32", **overrides
    ).resolved()
    keras.utils.set_random_seed(0)
    # MNIST's default schedule (piecewise) needs the run's length.
    model, _, step = training.build_components(
        config, data.get_info("mnist"), tf.distribute.get_strategy(), steps_per_epoch=10
    )
    return step, model


class TrainStepTest(parameterized.TestCase):
    # Methods with per-example state (`free`) are tested in free_test.py.
    @parameterized.parameters(*sorted(k for k, m in training.METHODS.items() if not m.indexed))
    def test_loss_falls_over_a_few_steps(self, method):
        images, labels = _mnist_batch(128)
        step, _ = _step(method, eps=0.1, pgd_steps=5, pgd_step_size=0.03)
        losses = [float(step(images, labels)[0]) / 128 for _ in range(12)]
        self.assertTrue(np.all(np.isfinite(losses)), losses)
        self.assertLess(np.mean(losses[-3:]), 0.8 * np.mean(losses[:3]), losses)

    @parameterized.parameters(("pgd_at", 0), ("fgsm_rs", 0), ("pgd_at", 50))
    def test_training_attacks_stay_in_the_eps_ball(self, method, warmup):
        images, labels = _mnist_batch(64)
        distance = tf.Variable(0.0)
        bounds = tf.Variable([1.0, 0.0])
        pgd = attacks.pgd

        def recording_pgd(model_fn, x, y, **kwargs):
            x_adv = pgd(model_fn, x, y, **kwargs)
            distance.assign(tf.maximum(distance, tf.reduce_max(tf.abs(x_adv - x))))
            bounds.assign([tf.reduce_min(x_adv), tf.reduce_max(x_adv)])
            return x_adv

        with mock.patch.object(attacks, "pgd", recording_pgd):
            step, _ = _step(method, eps=0.3, pgd_steps=5, eps_warmup_steps=warmup)
            step(images, labels)
        # The first step's radius is eps / warmup during a warm-up, eps else.
        limit = 0.3 / warmup if warmup else 0.3
        self.assertLessEqual(float(distance), limit + 1e-6)
        self.assertGreater(float(distance), 0.5 * limit)
        self.assertGreaterEqual(float(bounds[0]), 0.0)
        self.assertLessEqual(float(bounds[1]), 1.0)

    @parameterized.parameters("sq_noisy", "sq_fgsm")
    def test_quantizer_models_train_on_their_own_gradients_through_the_fast_conv(self, method):
        images, labels = _mnist_batch(32)
        config = training.TrainConfig(
            dataset="mnist", method=method, mixed_precision="float32"
        ).resolved()
        keras.utils.set_random_seed(0)
        model = models.build(
            "madry_mnist",
            input_shape=(28, 28, 1),
            num_classes=10,
            soft_quantization={"num_thresholds": 2, "alpha": 10.0},
        )
        kind = training.METHODS[method].step
        objective = steps.OBJECTIVES[kind](model, keras.optimizers.Adam(), config)
        x = tf.constant(images)
        fast = fast_backward.conv_input_gradient
        with mock.patch.object(fast_backward, "conv_input_gradient", wraps=fast) as spy:
            with tf.GradientTape() as tape:
                per_example, logits = objective.loss(x, labels)
                loss = tf.reduce_sum(per_example)
            grads = tape.gradient(loss, model.trainable_variables)
        self.assertEqual(spy.call_count, 1)
        np.testing.assert_array_equal(logits, model(x, training=True))
        assert_the_models_own_weight_gradients(self, model, x, labels, grads)

    def test_a_sequential_quantizer_model_trains_on_its_own_backward_pass(self):
        # clone_model cannot rewrite a Sequential model's layers: it keeps its own.
        images, labels = _mnist_batch(8)
        keras.utils.set_random_seed(0)
        model = keras.Sequential(
            [
                keras.Input((28, 28, 1)),
                layers.SoftQuantization(num_thresholds=2),
                keras.layers.Conv2D(4, 3, padding="same", activation="relu"),
                keras.layers.Flatten(),
                keras.layers.Dense(10),
            ]
        )
        config = training.TrainConfig(dataset="mnist", method="sq_noisy").resolved()
        objective = steps.standard_objective(model, None, config)
        x = tf.constant(images)
        with tf.GradientTape() as tape:
            per_example, logits = objective.loss(x, labels)
        grads = tape.gradient(per_example, model.trainable_variables)
        np.testing.assert_array_equal(logits, model(x, training=True))
        self.assertTrue(all(np.abs(g).sum() > 0 for g in grads))

    def test_gradnorm_penalty_matches_finite_differences(self):
        images, labels = _mnist_batch(3)
        keras.utils.set_random_seed(0)
        # A smooth float64 CNN, so that central differences are accurate.
        model = keras.Sequential(
            [
                keras.Input((28, 28, 1), dtype="float64"),
                keras.layers.Conv2D(8, 5, strides=2, activation="tanh", dtype="float64"),
                keras.layers.Flatten(dtype="float64"),
                keras.layers.Dense(10, dtype="float64"),
            ]
        )
        x = tf.constant(images, tf.float64)
        loss, logits, l1 = training.gradnorm_loss(
            model, x, tf.constant(labels), eps=0.3, weight=2.0, training=False
        )
        ce = attacks.cross_entropy_loss(tf.cast(logits, tf.float32), labels)
        # Central differences of the cross-entropy, one pixel at a time.
        h = 1e-6
        eye = np.eye(784).reshape(784, 28, 28, 1) * h
        for i in range(3):
            plus = model(x[i] + eye, training=False)
            minus = model(x[i] - eye, training=False)
            y = np.full(784, labels[i])
            ce_plus = tf.nn.sparse_softmax_cross_entropy_with_logits(y, plus)
            ce_minus = tf.nn.sparse_softmax_cross_entropy_with_logits(y, minus)
            numeric = np.abs((ce_plus - ce_minus).numpy() / (2 * h)).sum()
            self.assertGreater(numeric, 0.0)
            np.testing.assert_allclose(float(l1[i]), numeric, rtol=1e-4)
            penalty = float(loss[i]) - float(ce[i])
            np.testing.assert_allclose(penalty, 2.0 * 0.3 * numeric, rtol=1e-4)


if __name__ == "__main__":
    absltest.main()
