"""Tests for sq_keras.data.augment."""

import numpy as np
import tensorflow as tf
from absl.testing import absltest
from absl.testing import parameterized

from sq_keras import data


def _images(n=16, size=8):
    rng = np.random.default_rng(0)
    return rng.random((n, size, size, 3), dtype=np.float32) + 0.1  # no zeros


class AugmentTest(parameterized.TestCase):
    def test_crop_is_a_window_of_the_zero_padded_image(self):
        x = _images()
        out = data.augment_batch(tf.constant(x), kind="crop", seed=[1, 2], padding=2).numpy()
        self.assertEqual(out.shape, x.shape)
        padded = np.pad(x, [[0, 0], [2, 2], [2, 2], [0, 0]])
        shifts = []
        for i in range(len(x)):
            matches = [
                (dy, dx)
                for dy in range(5)
                for dx in range(5)
                if np.array_equal(padded[i, dy : dy + 8, dx : dx + 8], out[i])
            ]
            self.assertLen(matches, 1)
            shifts.append(matches[0])
        self.assertGreater(len(set(shifts)), 3)  # examples get different crops

    def test_crop_flip_flips_about_half(self):
        x = _images(n=200, size=4)
        out = data.augment_batch(tf.constant(x), kind="crop_flip", seed=[3, 4], padding=0).numpy()
        flipped = [np.array_equal(out[i], x[i, :, ::-1]) for i in range(len(x))]
        kept = [np.array_equal(out[i], x[i]) for i in range(len(x))]
        self.assertTrue(all(f or k for f, k in zip(flipped, kept)))
        self.assertBetween(np.mean(flipped), 0.35, 0.65)

    def test_seeded_and_per_batch(self):
        x = tf.constant(_images())
        ds = tf.data.Dataset.from_tensors((x, tf.zeros([16], tf.int64))).repeat(2)
        a = [b.numpy() for b, _ in data.add_augmentation(ds, kind="crop_flip", seed=(0, 1))]
        b = [b.numpy() for b, _ in data.add_augmentation(ds, kind="crop_flip", seed=(0, 1))]
        c = [b.numpy() for b, _ in data.add_augmentation(ds, kind="crop_flip", seed=(0, 2))]
        np.testing.assert_array_equal(a[0], b[0])
        self.assertFalse(np.array_equal(a[0], a[1]))
        self.assertFalse(np.array_equal(a[0], c[0]))

    def test_none_is_identity_and_bad_kind_raises(self):
        x = tf.constant(_images())
        np.testing.assert_array_equal(data.augment_batch(x, kind="none", seed=[0, 0]), x)
        with self.assertRaisesRegex(ValueError, "kind"):
            data.augment_batch(x, kind="rotate", seed=[0, 0])


if __name__ == "__main__":
    absltest.main()
