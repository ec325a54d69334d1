"""Tests for sq_keras.export: TF-Serving-ready SavedModels that serve without sq_keras."""

import json
import os
import shutil
import subprocess
import sys
import tempfile

import keras
import numpy as np
import tensorflow as tf
from absl.testing import absltest
from absl.testing import parameterized

from sq_keras import data
from sq_keras import export
from sq_keras import models
from tests.testing_utils import serve_in_fresh_process


def _trained_model():
    images, labels = data.load_arrays("mnist", "train[:2000]")
    model = models.build(
        "madry_mnist",
        input_shape=(28, 28, 1),
        num_classes=10,
        soft_quantization={"num_thresholds": 1, "alpha": 50.0},
    )
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(images.astype(np.float32) / 255.0, labels, batch_size=100, epochs=1, verbose=0)
    return model


class ExportTest(parameterized.TestCase):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.model = _trained_model()
        # A directory of this class's own: two test runs on one machine share
        # absl's default temporary directory.
        cls.root = tempfile.mkdtemp(prefix="export_test_")
        cls.path = export.export_saved_model(
            cls.model, os.path.join(cls.root, "mnist"), metadata={"dataset": "mnist"}
        )
        raw, cls.labels = data.load_arrays("mnist", "test[:300]")
        cls.raw = raw
        cls.x = raw.astype(np.float32) / 255.0

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.root, ignore_errors=True)
        super().tearDownClass()

    def test_layout_is_tensorflow_serving_versions(self):
        self.assertEqual(self.path, os.path.join(self.root, "mnist", "1"))
        self.assertTrue(os.path.exists(os.path.join(self.path, "saved_model.pb")))
        self.assertEqual(export.latest_version_dir(os.path.join(self.root, "mnist")), self.path)
        with open(os.path.join(self.path, "assets.extra", export.METADATA_FILE)) as f:
            self.assertEqual(json.load(f), {"dataset": "mnist"})

    @parameterized.named_parameters(("float32", "serving_default"), ("uint8", "serve_uint8"))
    def test_served_predictions_match_the_keras_model(self, signature):
        expected = self.model.predict(self.x, verbose=0)
        # The trained model is good enough for prediction equality to matter.
        self.assertGreater(np.mean(expected.argmax(-1) == self.labels), 0.8)
        images = self.x if signature == "serving_default" else self.raw
        out = serve_in_fresh_process(
            self.path, images, self.create_tempdir().full_path, signature=signature
        )
        self.assertEqual(set(out), {"logits", "probabilities", "classes"})
        np.testing.assert_allclose(out["logits"], expected, rtol=1e-4, atol=1e-4)
        np.testing.assert_array_equal(out["classes"], expected.argmax(-1))
        np.testing.assert_allclose(out["probabilities"].sum(-1), 1.0, atol=1e-5)

    @parameterized.named_parameters(
        ("channels", np.zeros((2, 28, 28, 3), np.float32), "serving_default", "shape"),
        ("size", np.zeros((2, 32, 32, 1), np.float32), "serving_default", "shape"),
        ("rank", np.zeros((2, 28, 28), np.float32), "serving_default", "shape"),
        ("range", np.full((2, 28, 28, 1), 255.0, np.float32), "serving_default", "serve_uint8"),
        ("dtype", np.zeros((2, 28, 28, 1), np.uint8), "serving_default", "float"),
        ("uint8_channels", np.zeros((2, 28, 28, 3), np.uint8), "serve_uint8", "shape"),
    )
    def test_bad_input_raises_invalid_argument_naming_the_expected_input(
        self, images, signature, detail
    ):
        served = tf.saved_model.load(self.path)
        with self.assertRaises(tf.errors.InvalidArgumentError) as ctx:
            served.signatures[signature](images=tf.constant(images))
        message = str(ctx.exception)
        self.assertIn(detail, message)
        if detail != "float":
            self.assertIn("[N, 28, 28, 1]", message)

    def test_versions_grow_and_replace_atomically(self):
        base = os.path.join(self.create_tempdir().full_path, "m")
        model = models.build("madry_mnist", input_shape=(28, 28, 1), num_classes=10)
        export.export_saved_model(model, base, metadata={"n": 1})
        export.export_saved_model(model, base, metadata={"n": 2})
        export.export_saved_model(model, base, version=2, metadata={"n": 3})
        self.assertEqual(export.versions(base), [1, 2])
        self.assertEqual(sorted(os.listdir(base)), ["1", "2"])  # no temporary leftovers
        with open(os.path.join(base, "2", "assets.extra", export.METADATA_FILE)) as f:
            self.assertEqual(json.load(f), {"n": 3})
        with self.assertRaisesRegex(ValueError, "positive integer"):
            export.export_saved_model(model, base, version=0)

    def test_saved_model_cli_shows_and_runs_the_signatures(self):
        cli = [sys.executable, "-m", "tensorflow.python.tools.saved_model_cli"]
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
        show = subprocess.run(
            [*cli, "show", "--dir", self.path, "--all"],
            capture_output=True,
            text=True,
            check=True,
            env=env,
            timeout=300,
        )
        for name in ("serving_default", "serve_uint8", "logits", "probabilities", "classes"):
            self.assertIn(name, show.stdout)
        workdir = self.create_tempdir().full_path
        np.save(os.path.join(workdir, "x.npy"), self.x[:5])
        subprocess.run(
            [
                *cli,
                "run",
                "--dir",
                self.path,
                "--tag_set",
                "serve",
                "--signature_def",
                "serving_default",
                "--inputs",
                f"images={os.path.join(workdir, 'x.npy')}",
                "--outdir",
                workdir,
            ],
            capture_output=True,
            text=True,
            check=True,
            env=env,
            timeout=300,
        )
        classes = np.load(os.path.join(workdir, "classes.npy"))
        expected = self.model.predict(self.x[:5], verbose=0).argmax(-1)
        np.testing.assert_array_equal(classes, expected)


if __name__ == "__main__":
    absltest.main()
