"""Tests of sq_keras.evaluation.checks: each masking check flags its failure."""

from absl.testing import absltest
from absl.testing import parameterized

from sq_keras import evaluation
from sq_keras.evaluation import checks
from tests.evaluation.fixtures import fake_report


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
        report = fake_report(accuracies, **kwargs)
        report.checks = evaluation.masking_checks(report)
        self.assertIs(report.checks[check]["passed"], False, report.checks[check])
        self.assertIn(check, dict(evaluation.failed_checks(report)))

    def test_converged_within_one_point(self):
        checks = self._checks({"pgd": {0.3: 40.0, 0.5: 0.0}, evaluation.DOUBLED: {0.3: 39.2}})
        self.assertTrue(checks["pgd_steps_converged"]["passed"])
        self.assertAlmostEqual(checks["pgd_steps_converged"]["change"], -0.8)

    def test_one_function_per_check_in_report_order(self):
        names = [check.__name__ for check in checks.CHECKS]
        self.assertEqual(list(self._checks({"pgd": {0.3: 40.0, 0.5: 0.0}})), names)
        self.assertLen(names, 9)

    def test_messages_and_numbers(self):
        checks = self._checks(
            {
                "fgsm": {0.3: 30.0, 0.5: 0.0},
                "pgd": {0.3: 40.0, 0.5: 0.0},
                "square": {0.3: 38.5, 0.5: 0.0},
            }
        )
        self.assertEqual(
            checks["iterative_beats_single_step"]["message"], "pgd 40.0% > fgsm 30.0% at eps=0.3"
        )
        self.assertEqual(
            checks["gradient_free_not_stronger"],
            {
                "passed": True,
                "message": "square 38.5% vs best plain white-box 30.0% at eps=0.3.",
                "accuracy": 38.5,
                "best_white_box_accuracy": 30.0,
            },
        )
        self.assertEqual(
            checks["transfer_not_stronger"]["message"],
            "Needs transfer and a plain gradient attack.",
        )
        single = self._checks({"pgd": {0.3: 40.0}}, eps_values=(0.3,))
        self.assertEqual(single["chance_at_large_eps"]["message"], "Only one eps: no sweep.")


if __name__ == "__main__":
    absltest.main()
