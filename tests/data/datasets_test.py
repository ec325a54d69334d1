"""Tests for sq_keras.data.datasets on the canonical MNIST files."""

import dataclasses
import gzip
import os
import shutil
import subprocess
import sys
from unittest import mock

import numpy as np
from absl.testing import absltest
from absl.testing import parameterized

from sq_keras import data
from sq_keras.data import datasets
from tests.testing_utils import write_fake_dataset

SHARED = os.environ["SQ_KERAS_DATA_DIR"]


class LoadLocalTest(parameterized.TestCase):
    def test_mnist_arrays(self):
        images, labels = data.load_arrays("mnist", "test")
        self.assertEqual(images.shape, (10000, 28, 28, 1))
        self.assertEqual(images.dtype, np.uint8)
        self.assertEqual(labels.dtype, np.int64)
        # The first test digits of the canonical file.
        np.testing.assert_array_equal(labels[:8], [7, 2, 1, 0, 4, 1, 4, 9])
        self.assertEqual(sorted(set(labels.tolist())), list(range(10)))
        self.assertEqual(int(images.max()), 255)

    def test_train_split_and_slices(self):
        images, labels = data.load_arrays("mnist", "train[:100]")
        self.assertEqual(images.shape, (100, 28, 28, 1))
        np.testing.assert_array_equal(labels[:5], [5, 0, 4, 1, 9])
        tail, _ = data.load_arrays("mnist", "train[59990:]")
        self.assertEqual(len(tail), 10)

    def test_split_slice_gives_the_bounds_load_arrays_uses(self):
        self.assertEqual(data.split_slice("test[2500:5000]"), ("test", 2500, 5000))
        self.assertEqual(data.split_slice("train[:100]"), ("train", None, 100))
        self.assertEqual(data.split_slice("test"), ("test", None, None))
        _, start, stop = data.split_slice("test[20:30]")
        images, _ = data.load_arrays("mnist", "test")
        np.testing.assert_array_equal(
            data.load_arrays("mnist", "test[20:30]")[0], images[start:stop]
        )
        for split in ("test[a:b]", "test[1:2", None):
            with self.assertRaisesRegex(ValueError, "sliced like 'train\\[:1000\\]'"):
                data.split_slice(split)

    def test_dataset_is_float_in_unit_interval(self):
        ds = data.load("mnist", "test[:64]")
        x, y = next(iter(ds.batch(64)))
        self.assertEqual(x.shape, (64, 28, 28, 1))
        self.assertEqual(x.dtype.name, "float32")
        self.assertAlmostEqual(float(x.numpy().max()), 1.0)
        self.assertGreaterEqual(float(x.numpy().min()), 0.0)
        self.assertEqual(int(y[0]), 7)

    def test_explicit_data_dir_beats_environment(self):
        images, _ = data.load_arrays("mnist", "test[:3]", data_dir=SHARED)
        self.assertEqual(images.shape[0], 3)

    def test_missing_file_fails_fast_naming_files_and_checksums(self):
        root = self.create_tempdir().full_path
        os.makedirs(os.path.join(root, "mnist"))
        # Failing fast means not falling back to a download.
        tfds = self.enter_context(mock.patch.object(datasets, "_read_tfds", autospec=True))
        with self.assertRaises(data.DataError) as ctx:
            data.load_arrays("mnist", "test", data_dir=root)
        tfds.assert_not_called()
        message = str(ctx.exception)
        for f in datasets.DATASETS["mnist"].files["test"]:
            self.assertIn(f.name, message)
            self.assertIn(f.sha256, message)
        self.assertIn("train-images-idx3-ubyte.gz", message)

    def test_corrupt_file_is_rejected(self):
        root = self.create_tempdir().full_path
        os.makedirs(os.path.join(root, "mnist"))
        for name in ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
            shutil.copy(os.path.join(SHARED, "mnist", name), os.path.join(root, "mnist"))
        path = os.path.join(root, "mnist", "t10k-labels-idx1-ubyte.gz")
        with gzip.open(os.path.join(SHARED, "mnist", "t10k-labels-idx1-ubyte.gz")) as f:
            raw = bytearray(f.read())
        raw[100] = (raw[100] + 1) % 10  # one wrong label
        with gzip.open(path, "wb") as f:
            f.write(bytes(raw))
        with self.assertRaisesRegex(data.DataError, "Corrupt .*t10k-labels"):
            data.load_arrays("mnist", "test", data_dir=root)

    @parameterized.named_parameters(
        (
            "dataset",
            "mnistt",
            "test",
            "Valid datasets: cifar10, fashion_mnist, imagenet2012, mnist",
        ),
        ("split", "mnist", "validation", "Valid splits: test, train"),
        ("slice", "mnist", "train[a:b]", "Valid splits"),
    )
    def test_unknown_names_list_valid_ones(self, name, split, pattern):
        with self.assertRaisesRegex(ValueError, pattern):
            data.load_arrays(name, split)

    def test_registry_info(self):
        info = data.get_info("mnist")
        self.assertEqual(info.image_shape, (28, 28, 1))
        self.assertEqual(info.num_classes, 10)
        self.assertEqual(info.eps, 0.3)


class RelativeDataDirTest(absltest.TestCase):
    """A relative directory names the files it named where it was given."""

    def setUp(self):
        super().setUp()
        self.start = self.create_tempdir().full_path
        self.relative = os.path.relpath(SHARED, self.start)
        previous = os.getcwd()
        os.chdir(self.start)
        self.addCleanup(os.chdir, previous)
        self.enter_context(mock.patch.dict(os.environ, {datasets.DATA_DIR_ENV: self.relative}))

    def test_a_relative_directory_reads_the_same_digits_and_resolves_absolute(self):
        _, labels = data.load_arrays("mnist", "test[:3]", data_dir=self.relative)
        np.testing.assert_array_equal(labels, [7, 2, 1])
        self.assertEqual(data.resolve_data_dir(), os.path.normpath(SHARED))
        self.assertEqual(data.resolve_data_dir(self.relative), os.path.normpath(SHARED))

    def test_a_process_started_elsewhere_finds_the_files(self):
        # Deeper than the start, so the relative path points nowhere from it.
        elsewhere = self.create_tempdir().mkdir("nested").full_path
        find = "import os, sys; sys.exit(not os.listdir(os.environ[sys.argv[1]] + '/mnist'))"
        command = [sys.executable, "-c", find, datasets.DATA_DIR_ENV]
        as_given = subprocess.run(command, cwd=elsewhere, capture_output=True)
        self.assertNotEqual(as_given.returncode, 0)
        env = data.environment_for_subprocess(os.environ)
        self.assertEqual(env[datasets.DATA_DIR_ENV], os.path.normpath(SHARED))
        resolved = subprocess.run(command, cwd=elsewhere, env=env, capture_output=True)
        self.assertEqual(resolved.returncode, 0, resolved.stderr)


class GeneratedFilesTest(parameterized.TestCase):
    """Datasets that cannot be downloaded here, read from generated files in
    their real on-disk formats (idx, CIFAR-10 binary tar.gz, SVHN .mat)."""

    @parameterized.named_parameters(
        ("fashion_mnist", "fashion_mnist"), ("cifar10", "cifar10"), ("svhn", "svhn_cropped")
    )
    def test_round_trip(self, name):
        root = self.create_tempdir().full_path
        info, splits = write_fake_dataset(name, root, num_train=50, num_test=20)
        self.enter_context(mock.patch.dict(datasets.DATASETS, {name: info}))
        for split, (x, y) in splits.items():
            images, labels = data.load_arrays(name, split, data_dir=root)
            np.testing.assert_array_equal(images, x)
            np.testing.assert_array_equal(labels, y)
        head, _ = data.load_arrays(name, "train[:7]", data_dir=root)
        self.assertEqual(head.shape, (7, *info.image_shape))

    @parameterized.named_parameters(
        ("fashion_mnist", "fashion_mnist", 0.1, (28, 28, 1), "none"),
        ("cifar10", "cifar10", 8 / 255, (32, 32, 3), "crop_flip"),
        ("svhn", "svhn_cropped", 8 / 255, (32, 32, 3), "crop"),
    )
    def test_registry_defaults(self, name, eps, shape, augment):
        info = data.get_info(name)
        self.assertAlmostEqual(info.eps, eps)
        self.assertEqual(info.image_shape, shape)
        self.assertEqual(info.augment, augment)
        self.assertLen(info.class_names, 10)

    def test_real_checksums_reject_generated_files(self):
        root = self.create_tempdir().full_path
        write_fake_dataset("cifar10", root)
        with self.assertRaisesRegex(data.DataError, "Corrupt .*cifar-10-binary.tar.gz"):
            data.load_arrays("cifar10", "test", data_dir=root)

    def test_truncated_archive_is_a_clear_error(self):
        root = self.create_tempdir().full_path
        info, _ = write_fake_dataset("cifar10", root)
        path = os.path.join(root, "cifar10", "cifar-10-binary.tar.gz")
        with open(path, "rb") as f:
            head = f.read(2000)
        with open(path, "wb") as f:
            f.write(head)
        files = {
            split: (dataclasses.replace(fs[0], sha256=datasets._hash_file(path)),)
            for split, fs in info.files.items()
        }
        patched = dataclasses.replace(info, files=files)
        self.enter_context(mock.patch.dict(datasets.DATASETS, {"cifar10": patched}))
        with self.assertRaisesRegex(data.DataError, "Could not read cifar10"):
            data.load_arrays("cifar10", "train", data_dir=root)


class LoadTfdsTest(parameterized.TestCase):
    """The tensorflow-datasets source, prepared offline from the local files."""

    def setUp(self):
        super().setUp()
        self.tfds_dir = self.create_tempdir().full_path
        # patch.dict restores the whole environment afterwards.
        self.enter_context(mock.patch.dict(os.environ, {"TFDS_DATA_DIR": self.tfds_dir}))
        del os.environ["SQ_KERAS_DATA_DIR"]

    def test_prepared_tfds_copy_matches_local_files(self):
        import tensorflow_datasets as tfds

        tfds.builder("mnist", data_dir=self.tfds_dir).download_and_prepare(
            download_config=tfds.download.DownloadConfig(manual_dir=os.path.join(SHARED, "mnist"))
        )
        images, labels = data.load_arrays("mnist", "test")
        local_images, local_labels = data.load_arrays("mnist", "test", data_dir=SHARED)

        # tfds stores the examples in its own order: compare as multisets.
        def examples(xs, ys):
            return sorted(x.tobytes() + bytes([int(y)]) for x, y in zip(xs, ys))

        self.assertEqual(images.shape, local_images.shape)
        self.assertEqual(examples(images, labels), examples(local_images, local_labels))

    def test_offline_without_local_copy_fails_fast(self):
        unreachable = dataclasses.replace(
            datasets.DATASETS["mnist"], download_host="example.invalid"
        )
        self.enter_context(mock.patch.dict(datasets.DATASETS, {"mnist": unreachable}))
        # Failing fast means never starting a download, which would retry for minutes.
        import tensorflow_datasets as tfds

        download = self.enter_context(
            mock.patch.object(tfds.core.DatasetBuilder, "download_and_prepare", autospec=True)
        )
        with self.assertRaisesRegex(data.DataError, "cannot be reached.*\n.*--data_dir"):
            data.load_arrays("mnist", "test")
        download.assert_not_called()


if __name__ == "__main__":
    absltest.main()
