"""Tests of sq_keras.attacks.losses: hand-computed losses and their input gradient."""

import numpy as np
import tensorflow as tf
from absl.testing import absltest
from absl.testing import parameterized

from sq_keras import attacks


class LossTest(parameterized.TestCase):
    def test_margin_positive_exactly_when_misclassified(self):
        logits = tf.constant([[3.0, 1.0, 0.0], [1.0, 4.0, 2.0]])
        labels = tf.constant([0, 0], tf.int64)
        np.testing.assert_allclose(attacks.margin_loss(logits, labels), [-2.0, 3.0])

    def test_dlr_hand_computed_and_scale_invariant(self):
        logits = tf.constant([[3.0, 1.0, 0.0, -1.0]])
        labels = tf.constant([0], tf.int64)
        # -(3 - 1) / (3 - 0) = -2/3.
        np.testing.assert_allclose(attacks.dlr_loss(logits, labels), [-2.0 / 3.0], rtol=1e-6)
        np.testing.assert_allclose(
            attacks.dlr_loss(5.0 * logits + 7.0, labels), [-2.0 / 3.0], rtol=1e-5
        )

    def test_dlr_needs_three_classes(self):
        with self.assertRaisesRegex(ValueError, "at least 3 classes"):
            attacks.dlr_loss(tf.zeros([1, 2]), tf.constant([0], tf.int64))

    def test_dlr_targeted_hand_computed_and_scale_invariant(self):
        logits = tf.constant([[3.0, 1.0, 0.0, -1.0, -3.0], [0.0, 4.0, 2.0, 1.0, -1.0]])
        labels = tf.constant([0, 0], tf.int64)
        target = tf.constant([2, 2], tf.int64)
        # Sorted: 3, 1, 0, -1 -> -(3 - 0) / (3 - (0 - 1) / 2) = -3 / 3.5;
        # sorted: 4, 2, 1, 0 -> -(0 - 2) / (4 - (1 + 0) / 2) = 2 / 3.5.
        expected = [-3.0 / 3.5, 2.0 / 3.5]
        np.testing.assert_allclose(
            attacks.dlr_targeted_loss(logits, labels, target), expected, rtol=1e-6
        )
        np.testing.assert_allclose(
            attacks.dlr_targeted_loss(2.0 * logits - 5.0, labels, target), expected, rtol=1e-5
        )

    def test_dlr_targeted_positive_once_the_target_beats_the_label(self):
        logits = tf.constant([[1.0, 2.0, 0.0, -1.0], [1.0, 0.5, 0.0, -1.0]])
        losses = attacks.dlr_targeted_loss(
            logits, tf.constant([0, 0], tf.int64), tf.constant([1, 1], tf.int64)
        )
        np.testing.assert_array_equal(losses.numpy() > 0, [True, False])

    def test_dlr_targeted_needs_four_classes(self):
        with self.assertRaisesRegex(ValueError, "at least 4 classes"):
            attacks.dlr_targeted_loss(
                tf.zeros([1, 3]), tf.constant([0], tf.int64), tf.constant([1], tf.int64)
            )

    def test_targeted_loss_binds_the_targets(self):
        logits = tf.constant([[3.0, 1.0, 0.0, -1.0]])
        labels = tf.constant([0], tf.int64)
        self.assertEqual(attacks.TARGETED_LOSSES, ("dlr_targeted",))
        loss_fn = attacks.targeted_loss("dlr_targeted", tf.constant([1], tf.int64))
        # -(3 - 1) / (3 - (0 - 1) / 2) = -2 / 3.5.
        np.testing.assert_allclose(loss_fn(logits, labels), [-2.0 / 3.5], rtol=1e-6)
        _, _, gradient = attacks.loss_gradient(lambda v: v, logits, labels, loss_fn)
        np.testing.assert_allclose(tf.reduce_sum(gradient), 0.0, atol=1e-6)  # Shift invariant.

    @parameterized.parameters("dlr", "ce", "hinge")
    def test_targeted_loss_unknown_name_raises(self, name):
        with self.assertRaisesRegex(ValueError, "`loss` must be one of .*dlr_targeted"):
            attacks.targeted_loss(name, tf.constant([1], tf.int64))


class LossGradientTest(parameterized.TestCase):
    def test_gradient_of_the_summed_margin(self):
        # logits = x @ w: d margin/dx = w[:, j] - w[:, y], j the largest wrong class.
        w = tf.constant([[1.0, 3.0, 0.0], [2.0, -1.0, 0.5]])
        x = tf.constant([[1.0, 0.0], [0.0, 1.0]])
        y = tf.constant([0, 0], tf.int64)
        losses, logits, gradient = attacks.loss_gradient(lambda v: v @ w, x, y, "margin")
        np.testing.assert_allclose(logits, [[1.0, 3.0, 0.0], [2.0, -1.0, 0.5]])
        np.testing.assert_allclose(losses, [2.0, -1.5])
        np.testing.assert_allclose(gradient, [[2.0, -3.0], [-1.0, -1.5]])

    def test_model_without_input_dependence_has_zero_gradient(self):
        x = tf.ones([2, 3])
        _, _, gradient = attacks.loss_gradient(
            lambda v: tf.zeros([2, 4]), x, tf.constant([0, 1], tf.int64), "ce"
        )
        np.testing.assert_array_equal(gradient, np.zeros([2, 3]))

    def test_callable_loss(self):
        x = tf.constant([[1.0, 2.0]])
        losses, _, gradient = attacks.loss_gradient(
            lambda v: v, x, tf.constant([0], tf.int64), lambda logits, y: logits[:, 1]
        )
        np.testing.assert_allclose(losses, [2.0])
        np.testing.assert_allclose(gradient, [[0.0, 1.0]])

    def test_unknown_loss_name_raises(self):
        with self.assertRaisesRegex(ValueError, "`loss` must be one of"):
            attacks.loss_gradient(lambda v: v, tf.ones([1, 3]), tf.constant([0]), "hinge")


if __name__ == "__main__":
    absltest.main()
