"""Tests for sq_keras.training.metrics."""

import keras
import numpy as np
import tensorflow as tf
from absl.testing import absltest
from absl.testing import parameterized

from sq_keras import training


class InputGradientStatsTest(parameterized.TestCase):
    def test_linear_model_gradient_norm(self):
        # logits = [w.x, 0]: d CE / dx = -(1 - p_0) * w for label 0.
        inputs = keras.Input((2,))
        dense = keras.layers.Dense(2, use_bias=False)
        model = keras.Model(inputs, dense(inputs))
        dense.kernel.assign([[1.0, 0.0], [-2.0, 0.0]])
        x = np.zeros((1, 2), np.float32)
        l1, zero = training.input_gradient_stats(model, x, np.array([0]))
        self.assertAlmostEqual(l1, 0.5 * 3.0, places=5)
        self.assertEqual(zero, 0.0)


class EvaluateAccuracyTest(parameterized.TestCase):
    def test_counts_correct_predictions_over_uneven_batches(self):
        # logits = x: the prediction is the argmax of the input.
        model = keras.Sequential([keras.Input((3,)), keras.layers.Identity()])
        x = np.eye(3, dtype=np.float32)[[0, 1, 2, 0, 1]]
        y = np.array([0, 1, 0, 0, 2], np.int64)
        batches = tf.data.Dataset.from_tensor_slices((x, y)).batch(2)
        self.assertAlmostEqual(training.evaluate_accuracy(model, batches), 3 / 5)


if __name__ == "__main__":
    absltest.main()
