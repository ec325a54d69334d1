"""Tests of sq_keras.evaluation.suite: the attack suite on tiny trained models."""

import contextlib
import io

from absl.testing import absltest
from absl.testing import parameterized

from sq_keras import evaluation
from sq_keras.evaluation import registry
from tests.evaluation.fixtures import SMALL
from tests.evaluation.fixtures import TOY
from tests.evaluation.fixtures import examples
from tests.evaluation.fixtures import report_of
from tests.evaluation.fixtures import target_of
from tests.evaluation.fixtures import trained_model


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
            evaluation.evaluate(
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
        text = output.getvalue()
        self.assertNotIn("\r", text)
        self.assertNotIn("\x1b", text)
        lines = text.splitlines()
        self.assertLen(lines, 6)  # fgsm, pgd and the 2x-steps pgd: 2 batches each.
        self.assertTrue(lines[0].startswith("fgsm eps=0.1: batch 1/2 ("), lines)
        self.assertTrue(lines[-1].startswith("pgd_2x_steps eps=0.1: batch 2/2 ("), lines)


if __name__ == "__main__":
    absltest.main()
