"""Tests for sq_keras.reproduce.table: rows from hand-made runs and reports."""

from absl.testing import absltest

from sq_keras import reproduce
from sq_keras.reproduce import stages
from sq_keras.reproduce import table


def trained_run(seconds=(10.0, 12.0, 11.0), epochs=3):
    return stages.TrainedRun(
        results={"epochs_done": epochs, "total_train_seconds": sum(seconds)},
        history=[
            {"epoch": i + 1, "seconds": s, "grad_l1": 0.5 / (i + 1)} for i, s in enumerate(seconds)
        ],
        trained_at_commit="abc123",
    )


def report(worst=60.0, clean=98.0, eps=0.3):
    return {
        "eps": eps,
        "clean_accuracy": clean,
        "attacks": {
            "pgd": {"results": {"0.3": {"robust_accuracy": worst + 5}}},
            "fgsm": {"results": {"0.3": {"robust_accuracy": worst + 10}}},
            "square": {"results": {"0.5": {"robust_accuracy": 1.0}}},
        },
        "skipped": {"transfer": "no source"},
        "worst_case_accuracy": worst,
        "worst_case_accuracy_by_eps": {"0.3": worst, "0.5": 1.0},
        "checks": {"large_eps": {"passed": True}, "doubled": {"passed": False}, "x": {}},
        "num_examples": 40,
    }


CURVE = {
    "attacks": ["apgd_ce", "apgd_dlr"],
    "eps": 0.3,
    "points": [
        {"epoch": 1, "train_seconds": 10.0, "robust_accuracy": 50.0},
        {"epoch": 2, "train_seconds": 20.0, "robust_accuracy": 80.0},
        {"epoch": 3, "train_seconds": 30.0, "robust_accuracy": 79.0},
    ],
}


class EpochsToReachTest(absltest.TestCase):
    def test_epochs_to_reach(self):
        curve = {
            "points": [
                {"epoch": 1, "train_seconds": 10.0, "robust_accuracy": 50.0},
                {"epoch": 2, "train_seconds": 20.0, "robust_accuracy": 80.0},
                {"epoch": 3, "train_seconds": 30.0, "robust_accuracy": 79.0},
            ]
        }
        self.assertEqual(reproduce.epochs_to_reach(curve, 40.0), 1)
        self.assertEqual(reproduce.epochs_to_reach(curve, 79.5), 2)
        self.assertIsNone(reproduce.epochs_to_reach(curve, 80.5))

    def test_reaching_exactly_counts(self):
        self.assertEqual(table.epochs_to_reach(CURVE, 80.0), 2)
        self.assertIsNone(table.epochs_to_reach({"points": []}, 0.0))


class RowTest(absltest.TestCase):
    variant = reproduce.Variant("sq_noisy", "sq_noisy", {"noise": "sign"}, "quantizer")

    def test_tested_row_reads_the_report_at_its_eps(self):
        row = table.row(self.variant, trained_run(), step_seconds=0.01, report=report())
        self.assertTrue(row["tested"])
        self.assertEqual(row["robust_accuracy"], {"pgd": 65.0, "fgsm": 70.0})
        self.assertEqual(row["failed_checks"], ["doubled"])
        self.assertEqual(row["skipped"], {"transfer": "no source"})
        self.assertEqual(row["seconds_per_epoch"], 11.0)
        self.assertEqual(row["total_train_seconds"], 33.0)
        self.assertEqual(row["grad_l1"], [0.5, 0.25, 0.5 / 3])
        self.assertEqual(row["trained_at_commit"], "abc123")
        self.assertNotIn("speedup_per_epoch_vs_pgd_at", row)

    def test_keys_keep_their_order(self):
        reference = stages.Reference(seconds_per_epoch=44.0, seconds_per_step=0.04, curve=CURVE)
        row = table.row(
            self.variant,
            trained_run(),
            step_seconds=0.01,
            report=report(),
            reference=reference,
            holdout={"worst_case_accuracy": 70.0, "clean_accuracy": 97.0},
        )
        self.assertEqual(
            list(row),
            [
                "name",
                "method",
                "settings",
                "note",
                "epochs",
                "seconds_per_epoch",
                "total_train_seconds",
                "seconds_per_step",
                "tested",
                "clean_accuracy",
                "robust_accuracy",
                "skipped",
                "worst_case_accuracy",
                "worst_case_accuracy_by_eps",
                "failed_checks",
                "num_examples",
                "grad_l1",
                "trained_at_commit",
                "holdout_worst_case_accuracy",
                "holdout_clean_accuracy",
                "speedup_per_epoch_vs_pgd_at",
                "wall_speedup_per_epoch_vs_pgd_at",
                "pgd_at_epochs_to_reach",
                "speedup_to_reach_vs_pgd_at",
            ],
        )

    def test_speedups_against_the_reference(self):
        reference = stages.Reference(seconds_per_epoch=44.0, seconds_per_step=0.04, curve=CURVE)
        row = table.row(
            self.variant, trained_run(), step_seconds=0.01, report=report(60.0), reference=reference
        )
        self.assertAlmostEqual(row["speedup_per_epoch_vs_pgd_at"], 4.0)
        self.assertAlmostEqual(row["wall_speedup_per_epoch_vs_pgd_at"], 4.0)
        self.assertEqual(row["pgd_at_epochs_to_reach"], 2)
        # Two reference epochs at 0.04 s/step over three epochs at 0.01 s/step.
        self.assertAlmostEqual(row["speedup_to_reach_vs_pgd_at"], 2 * 0.04 / (3 * 0.01))

    def test_never_reached_robustness(self):
        reference = stages.Reference(seconds_per_epoch=44.0, seconds_per_step=0.04, curve=CURVE)
        row = table.row(
            self.variant, trained_run(), step_seconds=0.01, report=report(90.0), reference=reference
        )
        self.assertIsNone(row["pgd_at_epochs_to_reach"])
        self.assertIsNone(row["speedup_to_reach_vs_pgd_at"])

    def test_untested_row_keeps_its_held_out_numbers(self):
        reference = stages.Reference(seconds_per_epoch=44.0, seconds_per_step=0.04, curve=CURVE)
        row = table.row(
            self.variant,
            trained_run(),
            step_seconds=0.02,
            reference=reference,
            holdout={"worst_case_accuracy": 70.0, "clean_accuracy": 97.0},
        )
        self.assertFalse(row["tested"])
        self.assertIsNone(row["worst_case_accuracy"])
        self.assertEqual(row["robust_accuracy"], {})
        self.assertEqual(row["holdout_worst_case_accuracy"], 70.0)
        self.assertEqual(row["holdout_clean_accuracy"], 97.0)
        self.assertAlmostEqual(row["speedup_per_epoch_vs_pgd_at"], 2.0)
        self.assertNotIn("speedup_to_reach_vs_pgd_at", row)

    def test_no_history_has_no_epoch_time(self):
        reference = stages.Reference(seconds_per_epoch=44.0, seconds_per_step=0.04, curve=None)
        row = table.row(
            self.variant, trained_run(seconds=()), step_seconds=0.01, reference=reference
        )
        self.assertIsNone(row["seconds_per_epoch"])
        self.assertNotIn("wall_speedup_per_epoch_vs_pgd_at", row)

    def test_headline_cells_are_the_cascade_after_each_attack(self):
        headline = {
            **report(worst=88.0),
            "attacks": {
                "apgd_ce": {"results": {"0.3": {"robust_accuracy": 90.0}}},
                "square": {"results": {"0.3": {"robust_accuracy": 88.0}}},
            },
            "num_examples": 10000,
        }
        row = table.row(
            self.variant,
            trained_run(),
            step_seconds=0.01,
            report=report(),
            headlines={"autoattack": headline},
        )
        self.assertEqual(
            row["headlines"]["autoattack"],
            {
                "attacks": ["apgd_ce", "square"],
                "num_examples": 10000,
                "clean_accuracy": 98.0,
                "robust_accuracy": {"apgd_ce": 90.0, "square": 88.0},
                "worst_case_accuracy": 88.0,
            },
        )
        # The suite's row keeps its own (fewer) images.
        self.assertEqual((row["worst_case_accuracy"], row["num_examples"]), (60.0, 40))
        without = table.row(self.variant, trained_run(), step_seconds=0.01, report=report())
        self.assertNotIn("headlines", without)

    def test_rows_follow_the_variants(self):
        variants = [reproduce.Variant("a", "natural"), reproduce.Variant("b", "natural")]
        costs = stages.StepCosts(128, 5, 3, "float32", {"a": 0.01, "b": 0.02})
        rows = table.build_rows(
            variants,
            {"a": trained_run(), "b": trained_run()},
            costs,
            reports={"b": report()},
            reference=None,
            holdout=stages.Holdout("train[600:640]", 40, {"a": report(50.0)}),
        )
        self.assertEqual([r["name"] for r in rows], ["a", "b"])
        self.assertEqual([r["tested"] for r in rows], [False, True])
        self.assertEqual([r["seconds_per_step"] for r in rows], [0.01, 0.02])
        self.assertEqual(rows[0]["holdout_worst_case_accuracy"], 50.0)
        self.assertNotIn("holdout_worst_case_accuracy", rows[1])


class HoldoutCurveTest(absltest.TestCase):
    def test_speedup_to_reach_the_final_held_out_value(self):
        reference = stages.Reference(seconds_per_epoch=44.0, seconds_per_step=0.04, curve=None)
        own = {
            "points": [
                {"epoch": 1, "robust_accuracy": 70.0},
                {"epoch": 2, "robust_accuracy": 79.5},
                {"epoch": 3, "robust_accuracy": 79.0},
            ]
        }
        cells = table.row(
            reproduce.Variant("a", "sq_fgsm", candidate=True),
            trained_run(),
            step_seconds=0.002,
            reference=reference,
            holdout_curve=own,
            reference_holdout_curve=CURVE,
        )
        self.assertEqual(cells["holdout_curve"], [70.0, 79.5, 79.0])
        # It ends at 79.0, first reached after epoch 2; pgd_at reaches it
        # after epoch 2 too, at 20x the cost per step.
        self.assertEqual(cells["holdout_epochs_to_reach"], 2)
        self.assertEqual(cells["holdout_pgd_at_epochs_to_reach"], 2)
        self.assertAlmostEqual(cells["holdout_speedup_to_reach_vs_pgd_at"], 20.0)

    def test_never_reached_by_the_reference(self):
        own = {"points": [{"epoch": 1, "robust_accuracy": 90.0}]}
        cells = table.row(
            reproduce.Variant("a", "sq_fgsm", candidate=True),
            trained_run(seconds=(10.0,), epochs=1),
            step_seconds=0.002,
            reference=stages.Reference(44.0, 0.04, None),
            holdout_curve=own,
            reference_holdout_curve=CURVE,
        )
        self.assertIsNone(cells["holdout_pgd_at_epochs_to_reach"])
        self.assertIsNone(cells["holdout_speedup_to_reach_vs_pgd_at"])


if __name__ == "__main__":
    absltest.main()
