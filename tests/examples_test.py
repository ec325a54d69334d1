"""Runs examples/robust_fit.py on a small MNIST subset, as a user would."""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import tensorflow as tf
from absl.testing import absltest
from tensorboard.backend.event_processing import event_accumulator

from sq_keras import RobustModel
from sq_keras import data
from sq_keras import training

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class RobustFitExampleTest(absltest.TestCase):
    def test_trains_attacks_and_exports_a_small_run(self):
        out = self.create_tempdir().full_path
        proc = subprocess.run(
            [
                sys.executable,
                os.path.join(ROOT, "examples", "robust_fit.py"),
                "--train_examples=512",
                "--test_examples=64",
                "--epochs=2",
                "--pgd_steps=5",
                f"--output_dir={out}",
            ],
            capture_output=True,
            text=True,
            cwd=ROOT,
            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
            timeout=600,
        )
        self.assertEqual(proc.returncode, 0, proc.stderr[-3000:])
        self.assertIn("worst case", proc.stdout)

        with open(os.path.join(out, "evaluation.json")) as f:
            report = json.load(f)
        self.assertEqual(report["num_examples"], 64)
        self.assertTrue(report["has_quantizer"])
        self.assertGreater(report["clean_accuracy"], 30.0)  # chance is 10%
        results = {name: entry["results"]["0.3"] for name, entry in report["attacks"].items()}
        self.assertContainsSubset({"fgsm", "pgd", "bpda_identity"}, set(results))
        for result in results.values():
            self.assertLessEqual(result["robust_accuracy"], report["clean_accuracy"])

        robust = keras.models.load_model(os.path.join(out, "robust.keras"))
        self.assertIsInstance(robust, RobustModel)
        self.assertEqual((robust.method, robust.eps, robust.num_train), ("sq_free", 0.3, 512))
        # The per-example memory was saved with the model: every example moved
        # from its initial perturbation.
        initial = training.perturbation_memory.initial_memory(512, (28, 28, 1), eps=0.3)
        moved = np.abs(robust.perturbations.numpy() - initial.numpy()).max(axis=(1, 2, 3))
        self.assertTrue(np.all(moved > 0.1), moved)
        images, _ = data.load_arrays("mnist", "test[:32]")
        x = images.astype(np.float32) / 255.0
        served = tf.saved_model.load(os.path.join(out, "export", "1"))
        classes = served.signatures["serving_default"](images=tf.constant(x))["classes"]
        np.testing.assert_array_equal(classes.numpy(), robust.predict(x, verbose=0).argmax(axis=-1))

        acc = event_accumulator.EventAccumulator(
            os.path.join(out, "logs", "train"), size_guidance={"tensors": 0}
        )
        acc.Reload()
        for tag in ("epoch_loss", "epoch_alpha", "epoch_grad_l1"):
            self.assertLen(acc.Tensors(tag), 2, tag)


if __name__ == "__main__":
    absltest.main()
