"""Tests of sq_keras.evaluation.target: loading models and examples."""

import json
import os

import numpy as np
import tensorflow as tf
from absl.testing import absltest
from absl.testing import parameterized

from sq_keras import evaluation
from sq_keras import export
from tests.evaluation.fixtures import SMALL
from tests.evaluation.fixtures import examples
from tests.evaluation.fixtures import trained_model


class LoadTest(parameterized.TestCase):
    def test_keras_file_model_dir_and_saved_model_agree(self):
        model = trained_model("soft")
        directory = self.create_tempdir().full_path
        model.save(os.path.join(directory, "model.keras"))
        with open(os.path.join(directory, "config.json"), "w") as f:
            json.dump({"dataset": "mnist", "eps": 0.3}, f)
        version_dir = export.export_saved_model(model, os.path.join(directory, "export"))
        images, _ = examples(20)
        expected = model(images).numpy()

        from_file = evaluation.load_target(os.path.join(directory, "model.keras"))
        from_dir = evaluation.load_target(directory)
        saved = evaluation.load_target(os.path.join(directory, "export"))
        version = evaluation.load_target(version_dir)
        self.assertEqual(saved.path, version_dir)
        for target in (from_file, from_dir, saved, version):
            np.testing.assert_allclose(target.model_fn(images), expected, atol=1e-4)
            self.assertTrue(target.has_quantizer)
        self.assertEqual(from_dir.config["eps"], 0.3)
        self.assertIsNone(saved.keras_model)
        # Gradients flow through the SavedModel signature (white-box attacks).
        x = tf.constant(images)
        with tf.GradientTape() as tape:
            tape.watch(x)
            logits = saved.model_fn(x)
        self.assertGreater(float(tf.reduce_max(tf.abs(tape.gradient(logits, x)))), 0.0)
        report = evaluation.evaluate(
            saved,
            *examples(20),
            attacks=["fgsm", "bpda_identity"],
            eps_values=[0.1],
            settings=SMALL,
            num_classes=10,
            progress=False,
            add_large_eps=False,
        )
        self.assertIn("SavedModel", report.skipped["bpda_identity"])
        self.assertIs(report.checks["bpda_run"]["passed"], False)

    def test_mixed_precision_keeps_quantizer_and_logits_float32(self):
        model = trained_model("soft")
        path = os.path.join(self.create_tempdir().full_path, "model.keras")
        model.save(path)
        target = evaluation.load_target(path, policy="mixed_bfloat16")
        policies = {layer.name: layer.dtype_policy.name for layer in target.keras_model.layers}
        self.assertEqual(policies["soft_quantization"], "float32")
        self.assertEqual(policies["logits"], "float32")
        # Convolution and Dense weights are stored in bfloat16 (attacks never
        # update them); their outputs equal the mixed policy's exactly.
        self.assertEqual(policies["conv1"], "bfloat16")
        mixed = evaluation.to_policy(model, "mixed_bfloat16", weights_in_compute_dtype=False)
        self.assertEqual(mixed.get_layer("conv1").dtype_policy.name, "mixed_bfloat16")
        images, _ = examples(50)
        np.testing.assert_array_equal(target.keras_model(images), mixed(images))
        images, labels = examples(100)
        agree = np.mean(np.argmax(target.model_fn(images), -1) == np.argmax(model(images), -1))
        self.assertGreater(agree, 0.95)

    def test_missing_path_raises(self):
        with self.assertRaisesRegex(FileNotFoundError, "does not exist"):
            evaluation.load_target("/nonexistent/model.keras")
        with self.assertRaisesRegex(FileNotFoundError, "No model"):
            evaluation.load_target(self.create_tempdir().full_path)

    def test_load_examples_scales_to_unit_interval(self):
        images, labels = examples(20)
        self.assertEqual(images.shape, (20, 28, 28, 1))
        self.assertEqual(images.dtype, np.float32)
        self.assertEqual(labels.dtype, np.int64)
        self.assertLessEqual(float(images.max()), 1.0)
        self.assertGreater(float(images.max()), 0.5)


if __name__ == "__main__":
    absltest.main()
