"""Tests for sq_keras.data.noise on real MNIST batches."""

import numpy as np
import tensorflow as tf
from absl.testing import absltest
from absl.testing import parameterized

from sq_keras import data


def _mnist_batches(n=512, batch_size=128):
    return data.load("mnist", f"test[:{n}]").batch(batch_size)


def _collect(ds):
    clean, noisy = [], []
    for (x, _), (xn, _) in ds:
        clean.append(x.numpy())
        noisy.append(xn.numpy())
    return np.concatenate(clean), np.concatenate(noisy)


def _pairs(kind, scale, seed):
    clean = _mnist_batches()
    return tf.data.Dataset.zip((clean, data.add_noise(clean, kind=kind, scale=scale, seed=seed)))


class AddNoiseTest(parameterized.TestCase):
    @parameterized.named_parameters(
        ("uniform", "uniform"), ("gaussian", "gaussian"), ("sign", "sign")
    )
    def test_stays_in_unit_interval_and_labels_unchanged(self, kind):
        clean = _mnist_batches()
        noisy = data.add_noise(clean, kind=kind, scale=0.3, seed=0)
        for (x, y), (xn, yn) in zip(clean, noisy):
            np.testing.assert_array_equal(y, yn)
            self.assertGreaterEqual(float(tf.reduce_min(xn)), 0.0)
            self.assertLessEqual(float(tf.reduce_max(xn)), 1.0)
            self.assertEqual(xn.shape, x.shape)
            self.assertEqual(xn.dtype, tf.float32)

    @parameterized.named_parameters(("uniform", "uniform"), ("sign", "sign"))
    def test_bounded_kinds_stay_in_the_eps_ball(self, kind):
        x, xn = _collect(_pairs(kind, 0.3, 0))
        self.assertLessEqual(np.abs(xn - x).max(), 0.3 + 1e-6)

    def test_moments_on_unclipped_pixels(self):
        # Mid-grey pixels far from 0 and 1 are never clipped, so their noise
        # shows the raw distribution.
        images = tf.fill((64, 28, 28, 1), 0.5)
        ds = tf.data.Dataset.from_tensors((images, tf.zeros((64,), tf.int64)))
        s = 0.1
        stats = {}
        for kind in ("uniform", "gaussian", "sign"):
            ((xn, _),) = list(data.add_noise(ds, kind=kind, scale=s, seed=3))
            stats[kind] = (xn.numpy() - 0.5).ravel()
        for kind, delta in stats.items():
            self.assertAlmostEqual(delta.mean(), 0.0, delta=0.003, msg=kind)
        self.assertAlmostEqual(stats["uniform"].std(), s / np.sqrt(3), delta=0.002)
        self.assertAlmostEqual(stats["gaussian"].std(), s, delta=0.002)
        np.testing.assert_allclose(np.abs(stats["sign"]), s, atol=1e-6)
        self.assertAlmostEqual((stats["sign"] > 0).mean(), 0.5, delta=0.01)
        self.assertLessEqual(np.abs(stats["uniform"]).max(), s + 1e-6)

    def test_same_seed_same_noise(self):
        _, a = _collect(_pairs("uniform", 0.3, (7, 2)))
        _, b = _collect(_pairs("uniform", 0.3, (7, 2)))
        np.testing.assert_array_equal(a, b)

    def test_different_or_missing_seed_different_noise(self):
        _, a = _collect(_pairs("uniform", 0.3, (7, 2)))
        _, b = _collect(_pairs("uniform", 0.3, (7, 3)))
        _, c = _collect(_pairs("uniform", 0.3, None))
        _, d = _collect(_pairs("uniform", 0.3, None))
        self.assertGreater(np.abs(a - b).mean(), 0.05)
        self.assertGreater(np.abs(c - d).mean(), 0.05)

    def test_batches_get_independent_noise(self):
        images = tf.fill((2, 8, 8, 1), 0.5)
        ds = tf.data.Dataset.from_tensors((images, tf.zeros((2,), tf.int64))).repeat(2)
        first, second = [x.numpy() for x, _ in data.add_noise(ds, kind="sign", scale=0.1, seed=0)]
        self.assertFalse(np.array_equal(first, second))

    def test_none_and_zero_scale_are_identity(self):
        x, xn = _collect(_pairs("none", 0.3, 0))
        np.testing.assert_array_equal(x, xn)
        x, xn = _collect(_pairs("gaussian", 0.0, 0))
        np.testing.assert_array_equal(x, xn)

    def test_invalid_arguments(self):
        with self.assertRaisesRegex(ValueError, "kind"):
            data.add_noise(_mnist_batches(), kind="salt", scale=0.3)
        with self.assertRaisesRegex(ValueError, "scale"):
            data.add_noise(_mnist_batches(), kind="uniform", scale=-0.1)


if __name__ == "__main__":
    absltest.main()
