"""Tests for sq_keras.training.perturbation_memory: its sizes, refusals and memory-less start."""

import os

import numpy as np
import tensorflow as tf
from absl.testing import absltest
from absl.testing import parameterized

from sq_keras.training import perturbation_memory as pm

EPS = 0.3
MNIST = (60_000, (28, 28, 1))
CIFAR10 = (50_000, (32, 32, 3))
IMAGENET = (1_281_167, (224, 224, 3))


class MemorySizeTest(parameterized.TestCase):
    @parameterized.named_parameters(
        ("mnist_float32", *MNIST, "float32", 1, 188_160_000),
        ("mnist_bfloat16", *MNIST, "bfloat16", 1, 94_080_000),
        ("mnist_int8", *MNIST, "int8", 1, 47_040_000),
        ("cifar10_float32", *CIFAR10, "float32", 1, 614_400_000),
        # 1,281,167 / 64 rounds up to 20,019 examples per worker.
        ("imagenet_int8_64_workers", *IMAGENET, "int8", 64, 20_019 * 150_528),
    )
    def test_bytes_are_examples_times_pixels_times_itemsize_per_shard(
        self, num, shape, dtype, shards, expected
    ):
        self.assertEqual(pm.memory_bytes(num, shape, dtype, shards=shards), expected)

    def test_imagenet_in_int8_over_64_workers_is_about_3_gb_each(self):
        size = pm.memory_bytes(*IMAGENET, "int8", shards=64)
        self.assertAlmostEqual(size / 1e9, 3.01, places=2)

    @parameterized.parameters("float32", "bfloat16", "int8")
    def test_a_variable_and_its_checkpoint_take_what_the_formula_says(self, dtype):
        variable = pm.memory_variable(pm.initial_memory(2_000, (28, 28, 1), eps=EPS, dtype=dtype))
        expected = pm.memory_bytes(2_000, (28, 28, 1), dtype)
        self.assertEqual(variable.numpy().nbytes, expected)
        prefix = os.path.join(self.create_tempdir().full_path, "ckpt")
        path = tf.train.Checkpoint(perturbations=variable).write(prefix)
        on_disk = sum(
            os.path.getsize(os.path.join(os.path.dirname(path), name))
            for name in os.listdir(os.path.dirname(path))
            if name.startswith("ckpt.data")
        )
        self.assertAlmostEqual(on_disk / expected, 1.0, delta=0.05)

    def test_the_description_names_shape_dtype_and_size(self):
        line = pm.describe_memory(*MNIST, "float32")
        self.assertEqual(line, "Perturbation memory: 60000 x 28x28x1 float32 = 188.2 MB.")


class MemoryBudgetTest(absltest.TestCase):
    def test_a_memory_that_fits_passes(self):
        pm.check_memory_fits(*MNIST, "float32", available=1e9)

    def test_a_memory_over_half_the_available_memory_is_refused_with_the_alternatives(self):
        with self.assertRaises(pm.MemoryBudgetError) as caught:
            pm.check_memory_fits(*IMAGENET, "float32", available=24e9)
        message = str(caught.exception)
        self.assertIn("would need 771.41 GB", message)
        self.assertIn("int8: 192.85 GB", message)
        self.assertIn("free_memory='none'", message)
        self.assertIn("more workers", message)
        self.assertIsInstance(caught.exception, ValueError)

    def test_the_host_reports_some_available_memory(self):
        self.assertGreater(pm.available_host_bytes(), 100e6)


class InitialMemoryTest(parameterized.TestCase):
    @parameterized.parameters("float32", "bfloat16", "int8")
    def test_uniform_start_covers_the_eps_ball(self, dtype):
        stored = pm.initial_memory(500, (28, 28, 1), eps=EPS, dtype=dtype, seed=1)
        delta = pm._decode(stored, EPS).numpy()
        self.assertLessEqual(np.abs(delta).max(), EPS * (1 + 2**-8))
        self.assertAlmostEqual(np.abs(delta).mean(), EPS / 2, delta=0.01)

    def test_unknown_dtype_and_init_are_refused(self):
        with self.assertRaisesRegex(ValueError, "`dtype` must be one of"):
            pm.initial_memory(4, (2, 2, 1), eps=EPS, dtype="float16")
        with self.assertRaisesRegex(ValueError, "`init` must be one of"):
            pm.initial_memory(4, (2, 2, 1), eps=EPS, init="gaussian")


class ReplayStartTest(absltest.TestCase):
    def test_each_step_starts_from_its_own_seeded_point_in_the_eps_ball(self):
        start = pm.ReplayStart(eps=EPS, seed=0)
        images = tf.fill((8, 28, 28, 1), 0.5)
        first = start.start(images, None, tf.constant(1, tf.int64)).numpy()
        again = start.start(images, None, tf.constant(1, tf.int64)).numpy()
        other = start.start(images, None, tf.constant(2, tf.int64)).numpy()
        np.testing.assert_array_equal(first, again)
        self.assertGreater(np.abs(first - other).mean(), 0.05)
        self.assertLessEqual(np.abs(first - 0.5).max(), EPS + 1e-6)
        self.assertAlmostEqual(np.abs(first - 0.5).mean(), EPS / 2, delta=0.01)

    def test_it_keeps_no_state(self):
        start = pm.ReplayStart(eps=EPS, init="zeros")
        self.assertEqual(start.state, {})
        images = tf.fill((2, 4, 4, 1), 0.5)
        np.testing.assert_array_equal(start.start(images, None, 0), images)
        start.store(None, images + 0.1, images)
        np.testing.assert_array_equal(start.start(images, None, 0), images)


if __name__ == "__main__":
    absltest.main()
