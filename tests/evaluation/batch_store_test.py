"""Tests of sq_keras.evaluation.batch_store: finished batches on disk."""

import os

import numpy as np
from absl.testing import absltest

from sq_keras import evaluation
from sq_keras.evaluation import batch_store


def _record(indices):
    indices = np.asarray(indices, np.int64)
    return {
        "indices": indices,
        "predictions": indices % 10,
        "queries": -np.ones(len(indices), np.int32),
        "seconds": 1.25,
        "adversarial": np.zeros([1, 2, 2, 1], np.float32),
    }


class BatchStoreTest(absltest.TestCase):
    def setUp(self):
        super().setUp()
        self.directory = os.path.join(self.create_tempdir().full_path, "report_batches")

    def test_folder_is_beside_the_report(self):
        self.assertEqual(evaluation.batches_dir("/r/x.json"), "/r/x_batches")

    def test_saved_batch_reads_back_and_no_temporary_file_is_left(self):
        store = evaluation.BatchStore(self.directory)
        store.begin({"seed": 0})
        self.assertIsNone(store.load("bpda_identity:apgd_ce", 0.3, 0))
        store.save("bpda_identity:apgd_ce", 0.3, 0, _record([3, 5, 8]))
        loaded = store.load("bpda_identity:apgd_ce", 0.3, 0)
        for name, value in _record([3, 5, 8]).items():
            np.testing.assert_array_equal(loaded[name], value, err_msg=name)
        self.assertIsNone(store.load("bpda_identity:apgd_ce", 0.5, 0))
        self.assertEqual(
            sorted(os.listdir(self.directory)),
            ["bpda_identity-apgd_ce_eps0.3_batch00000.npz", "manifest.json"],
        )

    def test_another_run_is_refused_then_overwritten(self):
        evaluation.BatchStore(self.directory, run={"model": "a"}).begin({"s": {"seed": 0}})
        evaluation.BatchStore(self.directory, run={"model": "a"}).begin({"s": {"seed": 0}})
        with open(os.path.join(self.directory, "notes.txt"), "w") as f:
            f.write("mine")
        store = evaluation.BatchStore(self.directory, run={"model": "b"}, hint="use --overwrite")
        with self.assertRaisesRegex(evaluation.StoreMismatch, r"model: 'a' -> 'b'\): use --o"):
            store.begin({"s": {"seed": 0}})
        store = evaluation.BatchStore(self.directory, run={"model": "a"})
        store.save("fgsm", 0.3, 0, _record([1]))
        with self.assertRaisesRegex(
            evaluation.StoreMismatch, r"\(s.seed: 0 -> 1; extra: None -> 2\): pass overwrite"
        ):
            store.begin({"s": {"seed": 1}, "extra": 2})
        store = evaluation.BatchStore(self.directory, run={"model": "a"}, overwrite=True)
        store.begin({"s": {"seed": 1}})
        self.assertIsNone(store.load("fgsm", 0.3, 0))
        self.assertEqual(sorted(os.listdir(self.directory)), ["manifest.json", "notes.txt"])

    def test_digests_tell_examples_and_models_apart(self):
        images = np.zeros([2, 2], np.float32)
        labels = np.array([0, 1])
        self.assertEqual(batch_store.digest(images, labels), batch_store.digest(images, labels))
        self.assertNotEqual(
            batch_store.digest(images, labels), batch_store.digest(images, labels[::-1])
        )
        model_dir = self.create_tempdir()
        model_dir.create_file("variables/v", "1")
        before = evaluation.file_digest(model_dir.full_path)
        model_dir.create_file("variables/v", "2")
        self.assertNotEqual(evaluation.file_digest(model_dir.full_path), before)


if __name__ == "__main__":
    absltest.main()
