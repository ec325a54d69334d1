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


class ShardedMemoryTest(parameterized.TestCase):
    @parameterized.parameters("float32", "bfloat16", "int8")
    def test_a_shards_initial_value_is_the_whole_memorys_rows_of_its_examples(self, dtype):
        whole = pm.initial_memory(7, (2, 2, 1), eps=EPS, dtype=dtype, seed=3).numpy()
        for index in range(3):
            part = pm.initial_memory(
                7, (2, 2, 1), eps=EPS, dtype=dtype, seed=3, shard=(index, 3)
            ).numpy()
            np.testing.assert_array_equal(part, whole[index::3])
        zeros = pm.initial_memory(7, (2, 2, 1), eps=EPS, init="zeros", shard=(2, 3))
        self.assertEqual(zeros.shape, (2, 2, 2, 1))
        self.assertEqual(pm.shard_examples(7, 2, 3).tolist(), [2, 5])

    @parameterized.parameters(((2, 2, 1), 4), ((3, 3, 1), 4), ((28, 28, 1), 8))
    def test_the_chunked_draw_is_the_whole_draw(self, image_shape, chunk_rows):
        # Rows drawn a chunk at a time, with the counter advanced, are the
        # rows of one draw of the whole memory: the initial memory does not
        # depend on the chunk size or on how many workers share it.
        seed = tf.constant([3, 7_919], tf.int64)
        rows = np.arange(23)
        for eps in (EPS, 8 / 255, 0.1):
            whole = pm._uniform((23, *image_shape), eps, seed).numpy()
            np.testing.assert_array_equal(
                pm._uniform_rows(23, image_shape, eps, seed, rows, chunk_rows).numpy(), whole
            )
            np.testing.assert_array_equal(
                pm._uniform_rows(23, image_shape, eps, seed, rows[1::3], chunk_rows).numpy(),
                whole[1::3],
            )

    @parameterized.parameters(("float32", 2), ("int8", 64))
    def test_each_shard_takes_at_most_what_the_formula_says(self, dtype, shards):
        num = 1_000
        budget = pm.memory_bytes(num, (28, 28, 1), dtype, shards=shards)
        sizes = [
            pm.initial_memory(
                num, (28, 28, 1), eps=EPS, init="zeros", dtype=dtype, shard=(i, shards)
            )
            .numpy()
            .nbytes
            for i in range(shards)
        ]
        self.assertEqual(max(sizes), budget)
        self.assertEqual(sum(sizes), pm.memory_bytes(num, (28, 28, 1), dtype))

    def test_a_shard_keeps_its_examples_as_rows_index_over_workers(self):
        variable = pm.local_memory_variable(tf.zeros((3, 2, 2, 1)))
        memory = pm.ShardedMemory(variable, eps=EPS, shard=1, shards=2, num_examples=6)
        images = tf.fill((2, 2, 2, 1), 0.5)
        x_adv = images + tf.constant([0.1, -0.2])[:, None, None, None]
        memory.store(tf.constant([5, 1], tf.int64), x_adv, images)
        # Example 5 is row 2, example 1 row 0; row 1 (example 3) is untouched.
        np.testing.assert_allclose(variable.numpy()[:, 0, 0, 0], [-0.2, 0.0, 0.1], atol=1e-6)
        started = memory.start(images, tf.constant([1, 5], tf.int64))
        np.testing.assert_allclose(started.numpy()[:, 0, 0, 0], [0.3, 0.6], atol=1e-6)
        self.assertEqual(memory.state, {})
        self.assertIs(memory.shard_state["perturbations"], variable)

    def test_the_description_names_the_whole_memory_and_this_shard(self):
        variable = pm.local_memory_variable(tf.zeros((30_000, 28, 28, 1)))
        line = pm.ShardedMemory(
            variable, eps=EPS, shard=1, shards=2, num_examples=60_000
        ).describe()
        self.assertEqual(
            line,
            "Perturbation memory: 60000 x 28x28x1 float32 = 94.1 MB per shard of 2. This "
            "worker (shard 1) keeps examples i % 2 == 1: 30000 of them.",
        )

    def test_a_shards_variable_is_this_workers_own_under_a_strategy(self):
        strategy = tf.distribute.MirroredStrategy(["/cpu:0"])
        with strategy.scope():
            own = pm.local_memory_variable(tf.zeros((2, 1)))
            mirrored = pm.memory_variable(tf.zeros((2, 1)))
        self.assertNotIsInstance(own, tf.distribute.DistributedValues)
        self.assertIsInstance(mirrored, tf.distribute.DistributedValues)
        self.assertFalse(own.trainable)


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
