"""Tests of sq_keras.evaluation: suite, report files and masking checks."""

import functools
import json
import os

import keras
import numpy as np
import tensorflow as tf
from absl.testing import absltest
from absl.testing import parameterized

from sq_keras import evaluation
from sq_keras import export
from sq_keras.layers import SoftQuantization

SMALL = evaluation.AttackSettings(pgd_steps=10, restarts=1, square_queries=200)


@functools.lru_cache(maxsize=None)
def examples(num=150):
    return evaluation.load_examples(
        "mnist", "test", num_examples=num, data_dir=os.environ.get("SQ_KERAS_DATA_DIR")
    )


@functools.lru_cache(maxsize=None)
def trained_model(kind):
    """A tiny CNN trained 2 epochs on 5,000 MNIST images.

    "masked" rounds its input to 10 levels at inference (zero gradient almost
    everywhere, not robust); "soft" has a trainable soft quantizer.
    """
    keras.utils.set_random_seed(0)
    inputs = keras.Input((28, 28, 1), name="images")
    x = inputs
    if kind == "masked":
        x = SoftQuantization(
            num_thresholds=9, hard=True, trainable_thresholds=False, name="soft_quantization"
        )(x)
    elif kind == "soft":
        x = SoftQuantization(num_thresholds=1, alpha=10.0, name="soft_quantization")(x)
    x = keras.layers.Conv2D(16, 3, strides=2, activation="relu", name="conv1")(x)
    x = keras.layers.Conv2D(32, 3, strides=2, activation="relu", name="conv2")(x)
    x = keras.layers.Flatten(name="flatten")(x)
    x = keras.layers.Dense(64, activation="relu", name="fc1")(x)
    model = keras.Model(inputs, keras.layers.Dense(10, name="logits")(x))
    model.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    train_images, train_labels = evaluation.load_examples(
        "mnist", "train", num_examples=5000, data_dir=os.environ.get("SQ_KERAS_DATA_DIR")
    )
    model.fit(train_images, train_labels, batch_size=64, epochs=2, verbose=0)
    return model


def target_of(model, path="memory"):
    return evaluation.Target(
        model_fn=lambda images: model(images, training=False),
        path=path,
        keras_model=model,
        has_quantizer=evaluation.attack_lib.has_quantizer(model),
    )


@functools.lru_cache(maxsize=None)
def report_of(kind, attacks=("strong",)):
    images, labels = examples()
    return evaluation.evaluate(
        target_of(trained_model(kind)),
        images,
        labels,
        attacks=evaluation.resolve_attacks(list(attacks)),
        eps_values=[0.3],
        settings=SMALL,
        num_classes=10,
        batch_size=75,
        progress=False,
        source=target_of(trained_model("natural")) if kind != "natural" else None,
    )


def fake_report(accuracies, *, eps_values=(0.3, 0.5), worst=None, zero=0.0, quantizer=False):
    """A minimal report for the checks: {attack: {eps: accuracy}}."""
    attacks = {}
    for name, by_eps in accuracies.items():
        attacks[name] = {
            "settings": {"doubles": "pgd"} if name == evaluation.DOUBLED else {},
            "results": {f"{e:g}": {"robust_accuracy": a} for e, a in by_eps.items()},
        }
    worst = worst or {
        e: min(by_eps[e] for by_eps in accuracies.values() if e in by_eps) for e in eps_values
    }
    return {
        "eps": eps_values[0],
        "eps_values": list(eps_values),
        "num_classes": 10,
        "has_quantizer": quantizer,
        "attacks": attacks,
        "worst_case_accuracy_by_eps": {f"{e:g}": a for e, a in worst.items()},
        "zero_gradient_examples_percent": zero,
        "zero_gradient_entries_percent": zero,
    }


class ResolveTest(parameterized.TestCase):
    def test_strong_preset_is_every_attack_in_suite_order(self):
        self.assertEqual(evaluation.resolve_attacks(["strong"]), list(evaluation.ATTACKS))
        self.assertEqual(evaluation.resolve_attacks(["square", "fgsm", "fgsm"]), ["fgsm", "square"])

    def test_unknown_attack_lists_valid_names(self):
        with self.assertRaisesRegex(ValueError, "Unknown attack 'cw2'.*pgd.*square.*strong"):
            evaluation.resolve_attacks(["pgd", "cw2"])

    def test_sweep_adds_large_eps_and_sorts(self):
        self.assertEqual(evaluation.sweep_eps([0.3, 0.1]), [0.1, 0.3, 0.5])
        self.assertEqual(evaluation.sweep_eps([0.3], add_large_eps=False), [0.3])
        self.assertEqual(evaluation.sweep_eps([0.6]), [0.6])

    @parameterized.named_parameters(("negative", -0.1), ("above_one", 1.2))
    def test_sweep_rejects_eps_outside_unit_interval(self, eps):
        with self.assertRaisesRegex(ValueError, r"\[0, 1\]"):
            evaluation.sweep_eps([eps])

    @parameterized.named_parameters(
        ("steps", {"pgd_steps": 0}),
        ("restarts", {"restarts": -1}),
        ("queries", {"square_queries": 0}),
    )
    def test_settings_reject_non_positive(self, kwargs):
        with self.assertRaisesRegex(ValueError, list(kwargs)[0]):
            evaluation.AttackSettings(**kwargs)

    def test_step_size_follows_eps(self):
        settings = evaluation.AttackSettings(pgd_steps=100)
        self.assertAlmostEqual(
            evaluation.attack_settings("pgd", 0.3, settings)["step_size"], 0.0075
        )
        self.assertEqual(evaluation.attack_settings("apgd_dlr", 0.3, settings)["loss"], "dlr")


class ChecksTest(parameterized.TestCase):
    def _checks(self, *args, **kwargs):
        return evaluation.masking_checks(fake_report(*args, **kwargs))

    def test_healthy_report_passes_everything_that_applies(self):
        checks = self._checks(
            {
                "fgsm": {0.3: 60.0, 0.5: 5.0},
                "pgd": {0.3: 40.0, 0.5: 0.0},
                "square": {0.3: 41.0, 0.5: 0.0},
                evaluation.DOUBLED: {0.3: 39.5},
            }
        )
        for name in (
            "accuracy_decreases_with_eps",
            "chance_at_large_eps",
            "iterative_beats_single_step",
            "pgd_steps_converged",
            "gradient_free_not_stronger",
            "zero_gradients",
        ):
            self.assertTrue(checks[name]["passed"], (name, checks[name]))
        self.assertIsNone(checks["bpda_run"]["passed"])
        self.assertIsNone(checks["transfer_not_stronger"]["passed"])

    @parameterized.named_parameters(
        ("rising_accuracy", {"pgd": {0.3: 40.0, 0.5: 45.0}}, {}, "accuracy_decreases_with_eps"),
        ("above_chance", {"pgd": {0.3: 40.0, 0.5: 30.0}}, {}, "chance_at_large_eps"),
        (
            "fgsm_stronger",
            {"fgsm": {0.3: 30.0, 0.5: 0.0}, "pgd": {0.3: 40.0, 0.5: 0.0}},
            {},
            "iterative_beats_single_step",
        ),
        (
            "not_converged",
            {"pgd": {0.3: 40.0, 0.5: 0.0}, evaluation.DOUBLED: {0.3: 37.0}},
            {},
            "pgd_steps_converged",
        ),
        (
            "square_stronger",
            {"pgd": {0.3: 40.0, 0.5: 0.0}, "square": {0.3: 30.0, 0.5: 0.0}},
            {},
            "gradient_free_not_stronger",
        ),
        (
            "transfer_stronger",
            {"pgd": {0.3: 40.0, 0.5: 0.0}, "transfer": {0.3: 20.0, 0.5: 0.0}},
            {},
            "transfer_not_stronger",
        ),
        ("quantizer_without_bpda", {"pgd": {0.3: 40.0, 0.5: 0.0}}, {"quantizer": True}, "bpda_run"),
        (
            "bpda_stronger",
            {"pgd": {0.3: 40.0, 0.5: 0.0}, "bpda_identity": {0.3: 20.0, 0.5: 0.0}},
            {"quantizer": True},
            "plain_gradients_not_masked",
        ),
        ("zero_gradients", {"pgd": {0.3: 40.0, 0.5: 0.0}}, {"zero": 12.0}, "zero_gradients"),
    )
    def test_failure_is_flagged(self, accuracies, kwargs, check):
        checks = self._checks(accuracies, **kwargs)
        self.assertIs(checks[check]["passed"], False, checks[check])
        self.assertIn(check, dict(evaluation.failed_checks({"checks": checks})))

    def test_converged_within_one_point(self):
        checks = self._checks({"pgd": {0.3: 40.0, 0.5: 0.0}, evaluation.DOUBLED: {0.3: 39.2}})
        self.assertTrue(checks["pgd_steps_converged"]["passed"])
        self.assertAlmostEqual(checks["pgd_steps_converged"]["change"], -0.8)


class EvaluateTest(parameterized.TestCase):
    def test_natural_model_report(self):
        report = report_of("natural")
        self.assertGreater(report["clean_accuracy"], 85.0)
        self.assertEqual(report["eps_values"], [0.3, 0.5])
        self.assertEqual(report["large_eps_added"], 0.5)
        for name in ("transfer", "bpda_identity", "bpda_smooth"):
            self.assertIn(name, report["skipped"])
        self.assertLess(report["attacks"]["pgd"]["results"]["0.3"]["robust_accuracy"], 5.0)
        # Worst case is the per-example AND: at most the best attack.
        best = min(e["results"]["0.3"]["robust_accuracy"] for e in report["attacks"].values())
        self.assertLessEqual(report["worst_case_accuracy"], best)
        checks = report["checks"]
        self.assertTrue(checks["chance_at_large_eps"]["passed"])
        self.assertTrue(checks["zero_gradients"]["passed"])
        self.assertTrue(checks["iterative_beats_single_step"]["passed"])
        self.assertIsNone(checks["bpda_run"]["passed"])
        square = report["attacks"]["square"]["results"]["0.3"]
        self.assertLessEqual(square["mean_queries"], SMALL.square_queries)
        self.assertGreater(report["attacks"]["pgd"]["results"]["0.3"]["images_per_second"], 0)

    def test_masked_toy_is_flagged(self):
        report = report_of("masked")
        attacks = report["attacks"]
        self.assertGreater(attacks["pgd"]["results"]["0.3"]["robust_accuracy"], 70.0)
        self.assertLess(attacks["bpda_identity"]["results"]["0.3"]["robust_accuracy"], 5.0)
        self.assertLess(report["worst_case_accuracy"], 5.0)
        failed = dict(evaluation.failed_checks(report))
        for check in ("gradient_free_not_stronger", "plain_gradients_not_masked", "zero_gradients"):
            self.assertIn(check, failed)
        self.assertTrue(report["checks"]["bpda_run"]["passed"])
        self.assertEqual(report["zero_gradient_examples_percent"], 100.0)

    def test_worst_case_is_per_example(self):
        images, labels = examples(40)
        model = trained_model("natural")
        report = evaluation.evaluate(
            target_of(model),
            images,
            labels,
            attacks=["fgsm"],
            eps_values=[0.0, 0.05],
            settings=SMALL,
            num_classes=10,
            progress=False,
            add_large_eps=False,
        )
        self.assertEqual(report["worst_case_accuracy_by_eps"]["0"], report["clean_accuracy"])
        fgsm = report["attacks"]["fgsm"]["results"]["0.05"]["robust_accuracy"]
        self.assertEqual(report["worst_case_accuracy_by_eps"]["0.05"], fgsm)
        self.assertEqual(len(report["robust_examples"]), round(report["clean_accuracy"] * 40 / 100))

    def test_write_report_files_and_tensorboard(self):
        report = report_of("natural")
        directory = self.create_tempdir().full_path
        output = os.path.join(directory, "sub", "report.json")
        logdir = os.path.join(directory, "tb")
        written = evaluation.write_report(report, output, logdir=logdir)
        with open(output) as f:
            loaded = json.load(f)
        for key in ("clean_accuracy", "attacks", "worst_case_accuracy", "checks", "files"):
            self.assertIn(key, loaded)
        self.assertNotIn("_examples", loaded)
        for key in ("sweep_plot", "examples_plot"):
            self.assertTrue(os.path.getsize(written["files"][key]) > 1000)
            with open(written["files"][key], "rb") as f:
                self.assertEqual(f.read(8), b"\x89PNG\r\n\x1a\n")
        self.assertTrue(any(name.startswith("events.out.tfevents") for name in os.listdir(logdir)))
        table = evaluation.format_table(report)
        self.assertIn("worst case", table)
        self.assertIn("masking checks", table)


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
        self.assertIn("SavedModel", report["skipped"]["bpda_identity"])
        self.assertIs(report["checks"]["bpda_run"]["passed"], False)

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
        mixed = evaluation._to_policy(model, "mixed_bfloat16", weights_in_compute_dtype=False)
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


if __name__ == "__main__":
    absltest.main()
