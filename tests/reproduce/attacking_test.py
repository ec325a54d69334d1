"""Tests for sq_keras.reproduce.attacking, on cached files and a tiny hand-made run."""

import dataclasses
import os
import shutil

import keras
import numpy as np
from absl.testing import absltest

from sq_keras import evaluation
from sq_keras import jsonio
from sq_keras import reproduce
from sq_keras import training
from sq_keras.reproduce import attacking

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def make_run(run_dir, epochs):
    """A run directory as `keep_epoch_weights` leaves it: a small CNN
    trained one epoch on 600 MNIST images per kept epoch."""
    images, labels = evaluation.load_examples(
        "mnist", "train", num_examples=600, data_dir=os.environ.get("SQ_KERAS_DATA_DIR")
    )
    keras.utils.set_random_seed(0)
    inputs = keras.Input((28, 28, 1), name="images")
    x = keras.layers.Conv2D(8, 3, strides=2, activation="relu")(inputs)
    x = keras.layers.Flatten()(x)
    model = keras.Model(inputs, keras.layers.Dense(10, name="logits")(x))
    model.compile(
        optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    )
    os.makedirs(os.path.join(run_dir, "epochs"))
    for epoch in range(1, epochs + 1):
        model.fit(images, labels, batch_size=64, epochs=1, verbose=0)
        model.save_weights(training.epoch_weights_path(run_dir, epoch))
    model.save(os.path.join(run_dir, "model.keras"))
    config = {"dataset": "mnist", "method": "natural", "eps": 0.3, "seed": 0}
    jsonio.write_json(os.path.join(run_dir, "config.json"), config)


class AttackingTest(absltest.TestCase):
    def test_default_settings_are_the_published_ones(self):
        published = jsonio.read_json(os.path.join(ROOT, "results", "mnist.json"))
        self.assertEqual(
            dataclasses.asdict(attacking.DEFAULT_SETTINGS), published["attack_settings"]
        )
        self.assertIs(reproduce.DEFAULT_SETTINGS, attacking.DEFAULT_SETTINGS)

    def test_eps_key(self):
        self.assertEqual(attacking.eps_key(0.3), "0.3")
        self.assertEqual(attacking.eps_key(1.0), "1")
        self.assertEqual(attacking.eps_key(8 / 255), f"{8 / 255:g}")

    def test_attacks_and_columns(self):
        names = attacking.resolve_attacks(("pgd", "fgsm"))
        self.assertEqual(names, ["fgsm", "pgd"])
        self.assertEqual(attacking.table_columns(names), ["fgsm", "pgd", evaluation.DOUBLED])
        with self.assertRaisesRegex(ValueError, "Unknown attack"):
            attacking.resolve_attacks(["nope"])

    def test_columns_hold_both_kinds_of_model(self):
        # The autoattack members run plain on a variant without a quantizer
        # and through BPDA on one with it: the table has a column for each.
        self.assertEqual(
            attacking.resolve_attacks(["autoattack"]),
            [
                "apgd_ce",
                "bpda_identity:apgd_ce",
                "apgd_t",
                "bpda_identity:apgd_t",
                "fab_t",
                "bpda_identity:fab_t",
                "square",
            ],
        )

    def test_first_examples_keep_the_split(self):
        examples = attacking.Examples("train[0:5]", np.arange(5.0), np.arange(5))
        first = examples.first(2)
        self.assertEqual(first.split, "train[0:5]")
        np.testing.assert_array_equal(first.labels, [0, 1])

    def test_load_split(self):
        examples = attacking.load_split("mnist", "train[600:610]")
        self.assertEqual(examples.split, "train[600:610]")
        self.assertEqual(examples.images.shape[0], 10)
        self.assertEqual(examples.images.dtype, np.float32)
        self.assertLessEqual(float(examples.images.max()), 1.0)

    def test_cached_report_is_read_back_without_attacking(self):
        runs = self.create_tempdir().full_path
        lines = []
        suite = attacking.Suite("mnist", runs, ["pgd"], None, None, "float32", lines.append)
        path = os.path.join(runs, "a", "evaluation", "holdout_report.json")
        jsonio.write_json(path, {"split": "train[0:3]", "worst_case_accuracy": 1.0})
        examples = attacking.Examples("train[0:3]", np.zeros((3, 28, 28, 1)), np.zeros(3))
        report = attacking.attack_variant(
            suite,
            reproduce.Variant("a", "natural"),
            examples,
            eps_values=[0.3],
            filename="holdout_report.json",
        )
        self.assertEqual(report, {"split": "train[0:3]", "worst_case_accuracy": 1.0})
        self.assertEqual(lines, [])

    def test_cached_report_of_other_attacks_is_refused(self):
        runs = self.create_tempdir().full_path
        suite = attacking.Suite("mnist", runs, ["pgd"], None, None, "float32", print)
        path = os.path.join(runs, "a", "evaluation", "holdout_report.json")
        jsonio.write_json(path, {"requested_attacks": ["fgsm"], "worst_case_accuracy": 1.0})
        examples = attacking.Examples("train[0:3]", np.zeros((3, 28, 28, 1)), np.zeros(3))
        with self.assertRaisesRegex(ValueError, "attacks fgsm, not of pgd. Delete it"):
            attacking.attack_variant(
                suite,
                reproduce.Variant("a", "natural"),
                examples,
                eps_values=[0.3],
                filename="holdout_report.json",
            )

    def test_cached_curve_is_read_back(self):
        run_dir = self.create_tempdir().full_path
        curve = {"attacks": list(reproduce.CURVE_ATTACKS), "eps": 0.3, "points": []}
        jsonio.write_json(os.path.join(run_dir, "evaluation", "curve.json"), curve)
        lines = []
        got = attacking.robustness_curve(
            run_dir,
            [{"epoch": 1, "seconds": 1.0}],
            None,
            dataset="mnist",
            eps=0.3,
            settings=None,
            eval_policy="float32",
            log=lines.append,
        )
        self.assertEqual(got, curve)
        self.assertEqual(lines, [])

    def test_a_stopped_curve_resumes_at_its_first_unscored_epoch(self):
        run_dir = self.create_tempdir().full_path
        make_run(run_dir, epochs=2)
        history = [{"epoch": 1, "seconds": 2.0}, {"epoch": 2, "seconds": 3.0}]
        examples = attacking.load_split("mnist", "test", num_examples=20)
        settings = evaluation.AttackSettings(pgd_steps=10, seed=0)
        evaluation_dir = os.path.join(run_dir, "evaluation")

        def curve(lines):
            return attacking.robustness_curve(
                run_dir,
                history,
                examples,
                dataset="mnist",
                eps=0.05,
                settings=settings,
                eval_policy="float32",
                log=lines.append,
            )

        first = curve([])
        self.assertEqual([p["train_seconds"] for p in first["points"]], [2.0, 5.0])
        # Stopped after scoring epoch 1: no curve yet, epoch 1's score kept.
        os.remove(os.path.join(evaluation_dir, "curve.json"))
        os.remove(os.path.join(evaluation_dir, "curve_epochs", "epoch_002.json"))
        lines = []
        self.assertEqual(curve(lines), first)
        self.assertTrue(lines[1].endswith("(read back)"), lines)
        self.assertFalse(lines[2].endswith("(read back)"), lines)
        # Other weights after epoch 1 (here epoch 2's): scored again, not read back.
        os.remove(os.path.join(evaluation_dir, "curve.json"))
        shutil.copy(
            training.epoch_weights_path(run_dir, 2), training.epoch_weights_path(run_dir, 1)
        )
        lines = []
        again = curve(lines)
        self.assertFalse(lines[1].endswith("(read back)"), lines)
        self.assertTrue(lines[2].endswith("(read back)"), lines)
        self.assertEqual(
            again["points"][0]["robust_accuracy"], first["points"][1]["robust_accuracy"]
        )


if __name__ == "__main__":
    absltest.main()
