"""Tests of sq_keras.attacks.linf: the guarantees every attack shares.

Every attack stays in the eps-ball and the pixel range, is the identity at
eps = 0 and checks its arguments, on a small model trained on real MNIST.
"""

import numpy as np
import tensorflow as tf
from absl.testing import absltest
from absl.testing import parameterized

from sq_keras import attacks
from sq_keras.attacks import linf
from tests.attacks.fixtures import TOLERANCE
from tests.attacks.fixtures import eval_data
from tests.attacks.fixtures import model_fn_of
from tests.attacks.fixtures import run
from tests.attacks.fixtures import square_images
from tests.attacks.fixtures import trained_model

ATTACK_CASES = (
    ("fgsm", attacks.fgsm, {}),
    ("pgd_ce", attacks.pgd, {"step_size": 0.05, "num_steps": 10}),
    (
        "pgd_margin_restarts",
        attacks.pgd,
        {"step_size": 0.05, "num_steps": 5, "restarts": 2, "loss": "margin"},
    ),
    (
        "pgd_last_iterate",
        attacks.pgd,
        {"step_size": 0.05, "num_steps": 10, "keep_most_damaging": False},
    ),
    ("apgd_ce", attacks.apgd, {"num_steps": 10}),
    ("apgd_dlr", attacks.apgd, {"num_steps": 10, "loss": "dlr"}),
    ("square", square_images, {"max_queries": 50}),
)


class PropertyTest(parameterized.TestCase):
    @parameterized.named_parameters(*ATTACK_CASES)
    def test_within_eps_and_bounds(self, attack, kwargs):
        model_fn = model_fn_of(trained_model("natural"))
        x, y = eval_data(100)
        eps = 0.2
        x_adv = run(attack, model_fn, eps=eps, **kwargs)(x, y).numpy()
        self.assertEqual(x_adv.shape, x.shape)
        self.assertLessEqual(np.abs(x_adv - x).max(), eps + TOLERANCE)
        self.assertGreaterEqual(x_adv.min(), 0.0)
        self.assertLessEqual(x_adv.max(), 1.0)
        # The attack did move the images and hurt the model.
        self.assertGreater(np.abs(x_adv - x).max(), eps / 2)
        self.assertLess(attacks.accuracy(model_fn, x_adv, y), attacks.accuracy(model_fn, x, y))

    @parameterized.named_parameters(*ATTACK_CASES)
    def test_eps_zero_gives_clean_accuracy(self, attack, kwargs):
        model_fn = model_fn_of(trained_model("natural"))
        x, y = eval_data(100)
        x_adv = run(attack, model_fn, eps=0.0, **kwargs)(x, y).numpy()
        np.testing.assert_array_equal(x_adv, x)

    def test_tighter_bounds_are_respected(self):
        model_fn = model_fn_of(trained_model("natural"))
        x, y = eval_data(50)
        x_adv = attacks.pgd(
            model_fn, x, y, eps=0.3, step_size=0.1, num_steps=3, clip_min=0.1, clip_max=0.8
        ).numpy()
        self.assertGreaterEqual(x_adv.min(), 0.1 - TOLERANCE)
        self.assertLessEqual(x_adv.max(), 0.8 + TOLERANCE)


class HelperTest(parameterized.TestCase):
    def test_projection_then_clipping(self):
        x = tf.constant([0.1, 0.5, 0.95])
        x_adv = tf.constant([-0.5, 0.55, 1.5])
        np.testing.assert_allclose(attacks.project_linf(x_adv, x, 0.2), [-0.1, 0.55, 1.15])
        np.testing.assert_allclose(
            attacks.clip_to_bounds(attacks.project_linf(x_adv, x, 0.2)), [0.0, 0.55, 1.0]
        )

    def test_keep_more_damaging_prefers_fooled_then_higher_loss(self):
        best = (tf.zeros([3, 2]), tf.constant([False, True, False]), tf.constant([1.0, 0.0, 5.0]))
        candidate = (
            tf.ones([3, 2]),
            tf.constant([False, False, True]),
            tf.constant([2.0, 9.0, -1.0]),
        )
        x, fooled, loss = linf.keep_more_damaging(best, candidate)
        # Higher loss; already fooled beats a higher loss; newly fooled beats any loss.
        np.testing.assert_array_equal(x[:, 0], [1.0, 0.0, 1.0])
        np.testing.assert_array_equal(fooled, [False, True, True])
        np.testing.assert_array_equal(loss, [2.0, 0.0, -1.0])


class ValidationTest(parameterized.TestCase):
    @parameterized.named_parameters(
        ("negative_eps", attacks.pgd, {"eps": -0.1, "step_size": 0.1, "num_steps": 1}, "eps"),
        ("eps_above_one", attacks.fgsm, {"eps": 1.5}, "eps"),
        ("zero_steps", attacks.pgd, {"eps": 0.1, "step_size": 0.1, "num_steps": 0}, "num_steps"),
        (
            "zero_restarts",
            attacks.pgd,
            {"eps": 0.1, "step_size": 0.1, "num_steps": 1, "restarts": 0},
            "restarts",
        ),
        ("bad_step_size", attacks.pgd, {"eps": 0.1, "step_size": 0.0, "num_steps": 1}, "step_size"),
        ("unknown_loss", attacks.apgd, {"eps": 0.1, "num_steps": 1, "loss": "hinge"}, "loss"),
        ("zero_queries", attacks.square, {"eps": 0.1, "max_queries": 0}, "max_queries"),
        ("bad_p_init", attacks.square, {"eps": 0.1, "max_queries": 5, "p_init": 0.0}, "p_init"),
    )
    def test_bad_arguments_raise(self, attack, kwargs, name):
        x, y = eval_data(2)
        with self.assertRaisesRegex(ValueError, name):
            attack(lambda images: tf.zeros([tf.shape(images)[0], 10]), x, y, **kwargs)

    def test_labels_are_required(self):
        x, _ = eval_data(2)
        with self.assertRaises(TypeError):
            attacks.pgd(lambda images: images, x, eps=0.1, step_size=0.1, num_steps=1)


if __name__ == "__main__":
    absltest.main()
