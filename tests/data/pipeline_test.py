"""Tests for sq_keras.data.pipeline: a training run's batches."""

import numpy as np
import tensorflow as tf
from absl.testing import absltest
from absl.testing import parameterized

from sq_keras import data
from sq_keras import training


class MakeTrainDatasetTest(parameterized.TestCase):
    def test_epoch_datasets_are_reproducible_and_differ_between_epochs(self):
        images = np.arange(20, dtype=np.uint8).reshape(20, 1, 1, 1)
        labels = np.arange(20, dtype=np.int64)
        config = training.TrainConfig(
            method="sq_noisy", batch_size=20, train_examples=1000, seed=0
        ).resolved()

        def epoch_batch(epoch):
            ((x, y),) = list(data.make_train_dataset(images, labels, config, epoch, add_noise=True))
            return x.numpy(), y.numpy()

        x0, y0 = epoch_batch(0)
        x0b, y0b = epoch_batch(0)
        x1, y1 = epoch_batch(1)
        np.testing.assert_array_equal(x0, x0b)
        np.testing.assert_array_equal(y0, y0b)
        self.assertFalse(np.array_equal(y0, y1))
        self.assertFalse(np.array_equal(x0, x1))
        self.assertEqual(sorted(y0.tolist()), list(range(20)))
        clean = images[y0].astype(np.float32) / 255.0
        self.assertLessEqual(np.abs(x0 - clean).max(), 0.3 + 1e-6)
        self.assertGreater(np.abs(x0 - clean).mean(), 0.05)

    def test_without_the_methods_noise_batches_are_the_clean_images(self):
        images = np.arange(20, dtype=np.uint8).reshape(20, 1, 1, 1)
        labels = np.arange(20, dtype=np.int64)
        config = training.TrainConfig(method="natural", batch_size=8).resolved()
        batches = list(data.make_train_dataset(images, labels, config, 0, add_noise=False))
        self.assertEqual([len(y) for _, y in batches], [8, 8, 4])
        for x, y in batches:
            np.testing.assert_array_equal(x.numpy(), images[y.numpy()] / np.float32(255.0))
        dropped = data.make_train_dataset(
            images, labels, config, 0, add_noise=False, drop_remainder=True
        )
        self.assertEqual([len(y) for _, y in dropped], [8, 8])

    @parameterized.parameters(False, True)
    def test_indices_name_each_example_and_leave_the_batches_unchanged(self, drop):
        images = np.arange(20, dtype=np.uint8).reshape(20, 1, 1, 1)
        labels = (np.arange(20, dtype=np.int64) * 7) % 10
        config = training.TrainConfig(method="sq_noisy", batch_size=8).resolved()

        def batches(epoch, **kwargs):
            return list(
                data.make_train_dataset(
                    images, labels, config, epoch, add_noise=True, drop_remainder=drop, **kwargs
                )
            )

        plain, indexed = batches(1), batches(1, with_indices=True)
        self.assertEqual(len(plain), len(indexed))
        seen = []
        for (x, y), (xi, yi, index) in zip(plain, indexed):
            np.testing.assert_array_equal(x.numpy(), xi.numpy())
            np.testing.assert_array_equal(y.numpy(), yi.numpy())
            np.testing.assert_array_equal(yi.numpy(), labels[index.numpy()])
            clean = images[index.numpy()] / np.float32(255.0)
            self.assertLessEqual(np.abs(xi.numpy() - clean).max(), 0.3 + 1e-6)
            self.assertEqual(index.dtype, tf.int64)
            seen.extend(index.numpy().tolist())
        # Each example at most once; all of them unless the last batch is dropped.
        self.assertLen(set(seen), len(seen))
        self.assertLen(seen, 16 if drop else 20)
        self.assertNotEqual(seen, list(range(len(seen))))  # shuffled
        self.assertNotEqual(seen, [int(i) for *_, b in batches(2, with_indices=True) for i in b])

    def test_shards_read_their_own_examples_every_epoch_in_the_epochs_order(self):
        images = np.arange(20, dtype=np.uint8).reshape(20, 1, 1, 1)
        labels = np.arange(20, dtype=np.int64)
        config = training.TrainConfig(method="sq_free", batch_size=8, augment="crop").resolved()

        def indices(epoch, **kwargs):
            batches = data.make_train_dataset(
                images, labels, config, epoch, add_noise=False, with_indices=True, **kwargs
            )
            return [b.numpy().tolist() for *_, b in batches]

        for epoch in (0, 1):
            whole = sum(indices(epoch), [])
            parts = [indices(epoch, shard=(w, 2), batch_size=4) for w in range(2)]
            for w, part in enumerate(parts):
                self.assertEqual([len(b) for b in part], [4, 4, 2])
                flat = sum(part, [])
                self.assertTrue(all(i % 2 == w for i in flat))
                self.assertEqual(flat, [i for i in whole if i % 2 == w])  # the epoch's order
            self.assertEqual(sorted(sum(parts[0] + parts[1], [])), list(range(20)))
        self.assertEqual(indices(0, shard=(0, 1)), indices(0))

    def test_each_shard_augments_with_its_own_key(self):
        blank = np.full((20, 8, 8, 1), 200, np.uint8)
        labels = np.arange(20, dtype=np.int64)
        config = training.TrainConfig(method="sq_free", batch_size=20, augment="crop").resolved()
        first, second = (
            next(
                iter(
                    data.make_train_dataset(
                        blank, labels, config, 0, add_noise=False, shard=(w, 2), batch_size=10
                    )
                )
            )[0].numpy()
            for w in range(2)
        )
        self.assertFalse(np.array_equal(first, second))


class WithIndicesTest(absltest.TestCase):
    def test_each_example_keeps_its_index_through_shuffling_and_batching(self):
        images, labels = data.load_arrays("mnist", "train[:40]")
        ds = data.with_indices(tf.data.Dataset.from_tensor_slices((images, labels)))
        seen = []
        for epoch in range(2):
            for x, y in ds.shuffle(40, seed=epoch).batch(16):
                index = x["indices"].numpy()
                np.testing.assert_array_equal(x["images"].numpy(), images[index])
                np.testing.assert_array_equal(y.numpy(), labels[index])
                self.assertEqual(x["indices"].dtype, tf.int64)
                seen.append(index.tolist())
        first, second = sum(seen[:3], []), sum(seen[3:], [])
        self.assertEqual(sorted(first), list(range(40)))
        self.assertEqual(sorted(second), list(range(40)))
        self.assertNotEqual(first, second)

    def test_elements_that_are_not_pairs_are_refused(self):
        ds = tf.data.Dataset.from_tensor_slices(np.zeros((4, 2, 2, 1), np.float32))
        with self.assertRaisesRegex(ValueError, r"\(image, label\) examples"):
            data.with_indices(ds)


class ResizeAndCropTest(parameterized.TestCase):
    @parameterized.parameters("none", "crop", "crop_flip")
    def test_any_size_becomes_a_square_in_the_unit_range(self, augment):
        image = tf.constant(np.full((40, 60, 3), 255, np.uint8))
        seed = tf.constant([0, 1], tf.int64)
        out = data.resize_and_crop(image, 28, augment=augment, seed=seed)
        self.assertEqual(out.shape, (28, 28, 3))
        self.assertEqual(out.dtype, tf.float32)
        np.testing.assert_allclose(out.numpy(), 1.0)


if __name__ == "__main__":
    absltest.main()
