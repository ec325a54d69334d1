"""Tests of sq_keras.attacks.bpda on a gradient-masking toy trained on real MNIST."""

import keras
import numpy as np
import tensorflow as tf
from absl.testing import absltest
from absl.testing import parameterized

from sq_keras import attacks
from sq_keras import models
from tests.attacks.fixtures import eval_data
from tests.attacks.fixtures import model_fn_of
from tests.attacks.fixtures import run
from tests.attacks.fixtures import square_images
from tests.attacks.fixtures import trained_model


class BpdaTest(parameterized.TestCase):
    def test_forward_pass_is_the_real_model(self):
        model = trained_model("masked")
        x, _ = eval_data(50)
        for stand_in in attacks.STAND_INS:
            np.testing.assert_array_equal(attacks.bpda(model, stand_in=stand_in)(x), model(x))

    def test_gradient_flows_where_the_model_has_none(self):
        model = trained_model("masked")
        x, y = eval_data(20)
        x = tf.constant(x)

        def input_gradient(model_fn):
            with tf.GradientTape() as tape:
                tape.watch(x)
                loss = attacks.cross_entropy_loss(model_fn(x), tf.constant(y))
            return tape.gradient(loss, x)

        plain = input_gradient(model_fn_of(model))
        self.assertTrue(plain is None or float(tf.reduce_max(tf.abs(plain))) == 0.0)
        for stand_in in attacks.STAND_INS:
            through = input_gradient(attacks.bpda(model, stand_in=stand_in))
            self.assertGreater(float(tf.reduce_mean(tf.abs(through))), 0.0, stand_in)

    @parameterized.named_parameters(("identity", "identity"), ("smooth", "smooth"))
    def test_quantizer_in_front_of_a_nested_model(self, stand_in):
        keras.utils.set_random_seed(0)
        base = keras.Sequential(
            [
                keras.Input((28, 28, 1)),
                keras.layers.Conv2D(4, 3),
                keras.layers.BatchNormalization(),
                keras.layers.Flatten(),
                keras.layers.Dense(10),
            ],
            name="base",
        )
        model = models.with_soft_quantization(base, num_thresholds=1, alpha=200.0)
        x, y = eval_data(16)
        x = tf.constant(x)
        bpda_fn = attacks.bpda(model, stand_in=stand_in)
        np.testing.assert_array_equal(bpda_fn(x), model(x, training=False))
        with tf.GradientTape() as tape:
            tape.watch(x)
            loss = attacks.cross_entropy_loss(bpda_fn(x), tf.constant(y))
        gradient = tape.gradient(loss, x).numpy()
        with tf.GradientTape() as tape:
            tape.watch(x)
            loss = attacks.cross_entropy_loss(model(x, training=False), tf.constant(y))
        plain = tape.gradient(loss, x).numpy()
        # alpha = 200 saturates the sigmoid on most pixels; the stand-in does not.
        self.assertGreater(np.mean(gradient != 0), np.mean(plain != 0) + 0.3)

    def test_model_without_quantizer_is_rejected(self):
        with self.assertRaisesRegex(ValueError, "no SoftQuantization"):
            attacks.bpda(trained_model("natural"))

    def test_unknown_stand_in_is_rejected(self):
        with self.assertRaisesRegex(ValueError, "stand_in"):
            attacks.bpda(trained_model("masked"), stand_in="zero")


class StrengthTest(parameterized.TestCase):
    def test_masked_toy_fools_pgd_but_not_bpda_or_square(self):
        model = trained_model("masked")
        model_fn = model_fn_of(model)
        x, y = eval_data()
        clean = attacks.accuracy(model_fn, x, y)
        self.assertGreater(clean, 0.85)
        pgd = dict(eps=0.3, step_size=0.01, num_steps=40)
        plain = attacks.accuracy(model_fn, run(attacks.pgd, model_fn, **pgd)(x, y), y)
        self.assertGreater(plain, 0.8 * clean)
        for stand_in in attacks.STAND_INS:
            bpda_fn = attacks.bpda(model, stand_in=stand_in)
            broken = attacks.accuracy(model_fn, run(attacks.pgd, bpda_fn, **pgd)(x, y), y)
            self.assertLess(broken, 0.05, stand_in)
        x_square = run(square_images, model_fn, eps=0.3, max_queries=1000)(x, y)
        self.assertLess(attacks.accuracy(model_fn, x_square, y), 0.10)


if __name__ == "__main__":
    absltest.main()
