"""Tests of sq_keras.evaluation.suite: the attack suite on tiny trained models."""

import contextlib
import dataclasses
import io
import os

import numpy as np
import tensorflow as tf
from absl.testing import absltest
from absl.testing import parameterized

from sq_keras import evaluation
from sq_keras.evaluation import registry
from tests.evaluation.fixtures import SMALL
from tests.evaluation.fixtures import TOY
from tests.evaluation.fixtures import CallLog
from tests.evaluation.fixtures import examples
from tests.evaluation.fixtures import logged_registry
from tests.evaluation.fixtures import report_of
from tests.evaluation.fixtures import target_of
from tests.evaluation.fixtures import trained_model
from tests.evaluation.fixtures import without_timings


class EvaluateTest(parameterized.TestCase):
    def test_natural_model_report(self):
        report = report_of("natural")
        self.assertGreater(report.clean_accuracy, 85.0)
        self.assertEqual(report.eps_values, [0.3, 0.5])
        self.assertEqual(report.large_eps_added, 0.5)
        for name in ("transfer", "bpda_identity", "bpda_smooth"):
            self.assertIn(name, report.skipped)
        self.assertLess(report.attacks["pgd"]["results"]["0.3"]["robust_accuracy"], 5.0)
        # Worst case is the per-example AND: at most the best attack.
        best = min(e["results"]["0.3"]["robust_accuracy"] for e in report.attacks.values())
        self.assertLessEqual(report.worst_case_accuracy, best)
        checks = report.checks
        self.assertTrue(checks["chance_at_large_eps"]["passed"])
        self.assertTrue(checks["zero_gradients"]["passed"])
        self.assertTrue(checks["iterative_beats_single_step"]["passed"])
        self.assertIsNone(checks["bpda_run"]["passed"])
        square = report.attacks["square"]["results"]["0.3"]
        self.assertLessEqual(square["mean_queries"], SMALL.square_queries)
        self.assertGreater(report.attacks["pgd"]["results"]["0.3"]["images_per_second"], 0)

    def test_masked_toy_is_flagged(self):
        report = report_of("masked")
        attacks = report.attacks
        self.assertGreater(attacks["pgd"]["results"]["0.3"]["robust_accuracy"], 70.0)
        self.assertLess(attacks["bpda_identity"]["results"]["0.3"]["robust_accuracy"], 5.0)
        self.assertLess(report.worst_case_accuracy, 5.0)
        failed = dict(evaluation.failed_checks(report))
        for check in ("gradient_free_not_stronger", "plain_gradients_not_masked", "zero_gradients"):
            self.assertIn(check, failed)
        self.assertTrue(report.checks["bpda_run"]["passed"])
        self.assertEqual(report.zero_gradient_examples_percent, 100.0)

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
        self.assertEqual(report.worst_case_accuracy_by_eps["0"], report.clean_accuracy)
        fgsm = report.attacks["fgsm"]["results"]["0.05"]["robust_accuracy"]
        self.assertEqual(report.worst_case_accuracy_by_eps["0.05"], fgsm)
        self.assertEqual(len(report.robust_examples), round(report.clean_accuracy * 40 / 100))

    def test_doubled_steps_run_records_what_it_doubles(self):
        report = report_of("natural")
        doubled = report.attacks[evaluation.DOUBLED]
        self.assertEqual(list(doubled["results"]), ["0.3"])
        self.assertEqual(doubled["settings"]["doubles"], "pgd")
        self.assertEqual(doubled["settings"]["num_steps"], 2 * SMALL.pgd_steps)
        self.assertNotIn("step_size", doubled["results"]["0.3"])
        self.assertEqual(list(report.attacks)[-1], evaluation.DOUBLED)
        self.assertEqual(report.settings["pgd_steps"], SMALL.pgd_steps)
        self.assertIn(evaluation.DOUBLED, report.examples["adversarial"])

    def test_rejects_bad_batch_size(self):
        with self.assertRaisesRegex(ValueError, "batch_size"):
            evaluation.evaluate(
                None, *examples(40), attacks=["fgsm"], eps_values=[0.1], batch_size=0
            )

    def test_registry_entry_runs_through_evaluate(self):
        images, labels = examples(40)
        source_only = evaluation.AttackSpec(
            "toy_on_source",
            TOY.attack,
            TOY.kwargs,
            kind=registry.TRANSFER,
            model=registry.OnSource(),
        )
        extended = evaluation.REGISTRY.extended(TOY, source_only)
        report = evaluation.evaluate(
            target_of(trained_model("natural")),
            images,
            labels,
            attacks=evaluation.resolve_attacks(["fgsm", "toy", "toy_on_source"], registry=extended),
            eps_values=[0.3],
            settings=SMALL,
            num_classes=10,
            progress=False,
            registry=extended,
        )
        self.assertEqual(list(report.attacks), ["fgsm", "toy_grey"])
        self.assertEqual(
            report.attacks["toy_grey"]["settings"], {"attack": "shift_to_grey", "toward": 0.5}
        )
        self.assertEqual(set(report.attacks["toy_grey"]["results"]), {"0.3", "0.5"})
        self.assertIn("no source model given", report.skipped["toy_on_source"])
        toy = report.attacks["toy_grey"]["results"]["0.3"]["robust_accuracy"]
        self.assertLessEqual(report.worst_case_accuracy, toy)
        # The gradient-free check compares the toy entry with FGSM.
        self.assertEqual(report.checks["gradient_free_not_stronger"]["accuracy"], toy)
        self.assertTrue(report.checks["gradient_free_not_stronger"]["message"].startswith("toy"))

    def test_progress_in_a_log_file_is_plain_lines(self):
        images, labels = examples(40)
        output = io.StringIO()  # Not a terminal, as stdout redirected to a file.
        with contextlib.redirect_stdout(output):
            report = evaluation.evaluate(
                target_of(trained_model("natural")),
                images,
                labels,
                attacks=["fgsm", "pgd"],
                eps_values=[0.1],
                settings=SMALL,
                num_classes=10,
                batch_size=20,
                add_large_eps=False,
            )
        # The last line of each attack counts the examples it misclassified.
        for name in ("fgsm", "pgd"):
            robust = report.attacks[name]["results"]["0.1"]["robust_accuracy"]
            wrong = 40 - round(robust * 40 / 100)
            last = [
                line for line in output.getvalue().splitlines() if line.startswith(f"{name} eps=")
            ][-1]
            self.assertTrue(last.endswith(f"; {wrong} of 40 attacked misclassified)"), last)
        text = output.getvalue()
        self.assertNotIn("\r", text)
        self.assertNotIn("\x1b", text)
        lines = text.splitlines()
        self.assertLen(lines, 6)  # fgsm, pgd and the 2x-steps pgd: 2 batches each.
        self.assertTrue(lines[0].startswith("fgsm eps=0.1: batch 1/2 ("), lines)
        self.assertTrue(lines[-1].startswith("pgd_2x_steps eps=0.1: batch 2/2 ("), lines)


def _fgsm_then_pgd(registry, num=30, **options):
    """FGSM then PGD on the natural model at eps 0.1, one example per batch."""
    images, labels = examples(num)
    return evaluation.evaluate(
        target_of(trained_model("natural")),
        images,
        labels,
        attacks=["fgsm", "pgd"],
        eps_values=[0.1],
        settings=SMALL,
        num_classes=10,
        progress=False,
        add_large_eps=False,
        registry=registry,
        **options,
    )


class CascadeTest(absltest.TestCase):
    def test_cascade_worst_case_equals_per_attack_mode(self):
        # One example per batch: each example's result depends on it alone.
        fgsm, pgd = CallLog(), CallLog()
        registry = logged_registry(fgsm=fgsm, pgd=pgd)
        full = _fgsm_then_pgd(registry, batch_size=1)
        del fgsm.sizes[:], pgd.sizes[:]
        cascade = _fgsm_then_pgd(registry, batch_size=1, worst_case_only=True)
        self.assertEqual(cascade.worst_case_accuracy_by_eps, full.worst_case_accuracy_by_eps)
        self.assertEqual(cascade.robust_examples, full.robust_examples)
        self.assertTrue(cascade.worst_case_only)
        self.assertFalse(full.worst_case_only)
        results = {n: cascade.attacks[n]["results"]["0.1"] for n in ("fgsm", "pgd")}
        # Each attack ran only on the survivors of the earlier ones.
        self.assertEqual(results["fgsm"]["attacked_examples"], round(full.clean_accuracy * 0.3))
        self.assertEqual(len(fgsm.sizes), results["fgsm"]["attacked_examples"])
        self.assertEqual(len(pgd.sizes), results["pgd"]["attacked_examples"])
        self.assertLess(len(pgd.sizes), len(fgsm.sizes))
        fgsm_alone = full.attacks["fgsm"]["results"]["0.1"]["robust_accuracy"]
        self.assertEqual(results["fgsm"]["robust_accuracy"], fgsm_alone)
        self.assertEqual(results["pgd"]["robust_accuracy"], cascade.worst_case_accuracy)
        self.assertLess(cascade.worst_case_accuracy, fgsm_alone)
        self.assertNotIn(evaluation.DOUBLED, cascade.attacks)
        self.assertIsNone(cascade.checks["iterative_beats_single_step"]["passed"])
        self.assertIn("robust after", evaluation.format_table(cascade))


class ResumeTest(absltest.TestCase):
    def test_killed_run_resumes_and_equals_an_uninterrupted_one(self):
        directory = os.path.join(self.create_tempdir().full_path, "batches")
        fgsm, pgd = CallLog(), CallLog(fail_at=2)  # Killed in PGD's 2nd batch.
        registry = logged_registry(fgsm=fgsm, pgd=pgd)
        options = {"num": 40, "batch_size": 10, "registry": registry}
        with self.assertRaisesRegex(tf.errors.OpError, "killed"):
            _fgsm_then_pgd(store=evaluation.BatchStore(directory), **options)
        self.assertEqual((len(fgsm.sizes), len(pgd.sizes)), (4, 2))
        resumed = _fgsm_then_pgd(store=evaluation.BatchStore(directory), **options)
        # FGSM's 4 batches and PGD's first were read back; PGD's other 3 and
        # the 2x-steps PGD's 4 ran.
        self.assertEqual((len(fgsm.sizes), len(pgd.sizes)), (4, 2 + 3 + 4))
        uninterrupted = _fgsm_then_pgd(**options)
        self.assertEqual(without_timings(resumed), without_timings(uninterrupted))
        for name, (images, predictions) in uninterrupted.examples["adversarial"].items():
            np.testing.assert_array_equal(images, resumed.examples["adversarial"][name][0])
            self.assertEqual(list(predictions), list(resumed.examples["adversarial"][name][1]))
        del fgsm.sizes[:], pgd.sizes[:]
        again = _fgsm_then_pgd(store=evaluation.BatchStore(directory), **options)
        self.assertEqual((fgsm.sizes, pgd.sizes), ([], []))
        self.assertEqual(again.to_json(), resumed.to_json())  # Timings included.

    def test_other_settings_are_refused_with_the_differences(self):
        directory = os.path.join(self.create_tempdir().full_path, "batches")
        images, labels = examples(20)
        run = {
            "attacks": ["fgsm"],
            "eps_values": [0.1],
            "settings": SMALL,
            "num_classes": 10,
            "progress": False,
            "add_large_eps": False,
        }
        target = target_of(trained_model("natural"))
        evaluation.evaluate(target, images, labels, store=evaluation.BatchStore(directory), **run)
        changed = {**run, "settings": dataclasses.replace(SMALL, seed=1), "batch_size": 10}
        store = evaluation.BatchStore(directory, hint="use --overwrite")
        with self.assertRaisesRegex(
            evaluation.StoreMismatch,
            r"settings.seed: 0 -> 1; batch_size: 250 -> 10\): use --overwrite",
        ):
            evaluation.evaluate(target, images, labels, store=store, **changed)
        overwritten = evaluation.evaluate(
            target,
            images,
            labels,
            store=evaluation.BatchStore(directory, overwrite=True),
            **changed,
        )
        self.assertEqual(overwritten.settings["seed"], 1)
        self.assertLen([f for f in os.listdir(directory) if f.endswith(".npz")], 2)


if __name__ == "__main__":
    absltest.main()
