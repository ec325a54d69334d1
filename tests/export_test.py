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

from sq_keras import attacks
from sq_keras import data
from sq_keras import evaluation
from sq_keras import export
from sq_keras import models
from sq_keras import precision
from tests.testing_utils import serve_in_fresh_process


def _trained_model(*, quantizer=True):
    """The Madry CNN, with or without its quantizer, one float32 epoch on 2000 MNIST images."""
    keras.utils.set_random_seed(0)
    images, labels = data.load_arrays("mnist", "train[:2000]")
    model = models.build(
        "madry_mnist",
        input_shape=(28, 28, 1),
        num_classes=10,
        soft_quantization={"num_thresholds": 1, "alpha": 50.0} if quantizer else None,
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


# (the policy a run trained under, the `policy` it is exported under: None
# as trained, the default of apps.train, or "float32", --export_policy=float32).
_EXACT_EXPORTS = (
    ("float32_run", "float32", None),
    ("mixed_bfloat16_run_exported_float32", "mixed_bfloat16", "float32"),
)


class ServedEqualsEvaluatedTest(parameterized.TestCase):
    """The served model classifies adversarial images as the model apps.evaluate attacked."""

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.root = tempfile.mkdtemp(prefix="served_equals_evaluated_test_")
        # Without a quantizer, which keeps most digits robust at eps 0.3:
        # here nearly every image is fooled.
        cls.float32_model = _trained_model(quantizer=False)
        images, cls.labels = data.load_arrays("mnist", "test[:200]")
        cls.x = images.astype(np.float32) / 255.0
        # The evaluator's model: the float32 copy of a run's model.keras, as
        # `apps.evaluate` loads it. Its adversarial images end just past a
        # decision boundary (the first misclassified iterate is kept): where
        # a served graph that rounds differently would disagree first.
        evaluated = evaluation.load_target(cls._saved(cls.float32_model), policy="float32")
        cls.x_adv = attacks.pgd(
            evaluated.model_fn,
            tf.constant(cls.x),
            tf.constant(cls.labels),
            eps=0.3,
            step_size=0.01,
            num_steps=20,
            seed=0,
        ).numpy()

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.root, ignore_errors=True)
        super().tearDownClass()

    @classmethod
    def _saved(cls, model):
        """Saves `model` as a run's model.keras; returns the run directory."""
        run_dir = tempfile.mkdtemp(dir=cls.root)
        model.save(os.path.join(run_dir, "model.keras"))
        return run_dir

    def _trained_under(self, policy):
        """The model as a run under `policy` leaves it (float32 weights, `policy` compute)."""
        if policy == "float32":
            return self.float32_model
        return precision.to_policy(self.float32_model, policy, weights_in_compute_dtype=False)

    def _evaluated_and_served(self, trained_policy, export_policy):
        """`(evaluated logits, served outputs)` on the adversarial images."""
        model = self._trained_under(trained_policy)
        evaluated = evaluation.load_target(self._saved(model), policy="float32")
        path = export.export_saved_model(
            model, os.path.join(self.root, "export"), policy=export_policy
        )
        served = tf.saved_model.load(path).signatures["serving_default"]
        out = served(images=tf.constant(self.x_adv))
        return evaluated.model_fn(self.x_adv).numpy(), {k: v.numpy() for k, v in out.items()}

    def test_the_images_are_adversarial(self):
        logits = self.float32_model.predict(self.x_adv, verbose=0)
        clean = self.float32_model.predict(self.x, verbose=0)
        robust = np.mean(logits.argmax(-1) == self.labels)
        self.assertGreater(np.mean(clean.argmax(-1) == self.labels), 0.8)
        self.assertLess(robust, 0.1)

    @parameterized.named_parameters(*_EXACT_EXPORTS)
    def test_a_float32_export_serves_the_evaluated_predictions_exactly(
        self, trained_policy, export_policy
    ):
        expected, out = self._evaluated_and_served(trained_policy, export_policy)
        np.testing.assert_array_equal(out["classes"], expected.argmax(-1))
        np.testing.assert_allclose(out["logits"], expected, rtol=1e-5, atol=1e-5)

    def test_a_mixed_bfloat16_export_agrees_on_almost_every_adversarial_image(self):
        expected, out = self._evaluated_and_served("mixed_bfloat16", None)
        # bfloat16 rounds each layer's products to 8 mantissa bits: logits
        # move by up to a few hundredths, which flips the rare image whose two
        # highest logits are closer than that (1 of 1000 PGD images of a
        # naturally trained Madry CNN). --export_policy=float32 serves the
        # evaluated predictions exactly.
        self.assertLess(np.abs(out["logits"] - expected).max(), 0.1)
        self.assertGreater(np.abs(out["logits"] - expected).max(), 0.0)
        self.assertLessEqual(np.sum(out["classes"] != expected.argmax(-1)), 2)


if __name__ == "__main__":
    absltest.main()
