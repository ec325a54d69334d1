"""Tests for sq_keras.export: the SavedModel serves without sq_keras."""

import json
import os

import keras
import numpy as np
from absl.testing import absltest
from absl.testing import parameterized

from sq_keras import data
from sq_keras import export
from sq_keras import models
from tests.testing_utils import serve_in_fresh_process


class ExportTest(parameterized.TestCase):
    def test_served_predictions_match_the_keras_model(self):
        images, labels = data.load_arrays("mnist", "train[:2000]")
        x = images.astype(np.float32) / 255.0
        model = models.build(
            "madry_mnist",
            input_shape=(28, 28, 1),
            num_classes=10,
            soft_quantization={"num_thresholds": 1, "alpha": 50.0},
        )
        model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        model.fit(x, labels, batch_size=100, epochs=1, verbose=0)
        test_images, test_labels = data.load_arrays("mnist", "test[:300]")
        test_x = test_images.astype(np.float32) / 255.0
        expected = model.predict(test_x, verbose=0)
        # The trained model is good enough for prediction equality to matter.
        self.assertGreater(np.mean(expected.argmax(-1) == test_labels), 0.8)

        export_dir = os.path.join(self.create_tempdir().full_path, "export")
        export.export_saved_model(model, export_dir, metadata={"dataset": "mnist"})
        out = serve_in_fresh_process(export_dir, test_x, self.create_tempdir().full_path)
        self.assertEqual(set(out), {"logits", "probabilities", "classes"})
        np.testing.assert_array_equal(out["classes"], expected.argmax(-1))
        np.testing.assert_allclose(out["logits"], expected, rtol=1e-4, atol=1e-4)
        np.testing.assert_array_equal(out["logits"].argmax(-1), expected.argmax(-1))
        np.testing.assert_allclose(out["probabilities"].sum(-1), 1.0, atol=1e-5)
        with open(os.path.join(export_dir, "assets.extra", export.METADATA_FILE)) as f:
            self.assertEqual(json.load(f), {"dataset": "mnist"})

    def test_reexport_replaces_atomically(self):
        root = self.create_tempdir().full_path
        export_dir = os.path.join(root, "export")
        model = models.build("madry_mnist", input_shape=(28, 28, 1), num_classes=10)
        export.export_saved_model(model, export_dir, metadata={"version": 1})
        export.export_saved_model(model, export_dir, metadata={"version": 2})
        self.assertEqual(os.listdir(root), ["export"])  # no temporary leftovers
        with open(os.path.join(export_dir, "assets.extra", export.METADATA_FILE)) as f:
            self.assertEqual(json.load(f), {"version": 2})


if __name__ == "__main__":
    absltest.main()
