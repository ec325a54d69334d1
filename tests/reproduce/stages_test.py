"""Tests for sq_keras.reproduce.stages that need no training run."""

import os

import numpy as np
from absl.testing import absltest

from sq_keras import jsonio
from sq_keras import reproduce
from sq_keras.reproduce import attacking
from sq_keras.reproduce import stages

CANDIDATES = [
    reproduce.Variant("a", "natural", candidate=True),
    reproduce.Variant("b", "sq_noisy", candidate=True, baseline=True),
    reproduce.Variant("c", "sq_fgsm", candidate=True),
    reproduce.Variant("d", "sq_noisy", candidate=True),
]
VARIANTS = [*CANDIDATES, reproduce.Variant("pgd_at", "pgd_at")]


def held_out(**worst):
    reports = {n: {"worst_case_accuracy": w, "clean_accuracy": 99.0} for n, w in worst.items()}
    return stages.Holdout("train[600:640]", 40, reports)


class HoldoutTest(absltest.TestCase):
    def test_ranking_is_best_first_and_ties_keep_the_variant_order(self):
        holdout = held_out(a=50.0, b=70.0, c=80.0, d=70.0)
        self.assertEqual(holdout.ranked, ["c", "b", "d", "a"])
        self.assertEqual(holdout.selected, "c")
        self.assertEqual(held_out(a=70.0, b=70.0).selected, "a")

    def test_record(self):
        holdout = held_out(a=50.0, b=70.0, c=80.0, d=60.0)
        tested = stages.choose_tested(VARIANTS, holdout, test_unselected=False)
        record = holdout.record(CANDIDATES, tested)
        self.assertEqual(
            list(record),
            [
                "split",
                "num_examples",
                "worst_case_accuracy",
                "selected",
                "tested_candidates",
                "untested",
            ],
        )
        self.assertEqual(
            list(record["worst_case_accuracy"].items()),
            [("c", 80.0), ("b", 70.0), ("d", 60.0), ("a", 50.0)],
        )
        self.assertEqual(record["selected"], "c")
        self.assertEqual(record["tested_candidates"], ["b", "c"])
        self.assertEqual(record["untested"], ["a", "d"])


class ChooseTestedTest(absltest.TestCase):
    def names(self, holdout, test_unselected=False):
        tested = stages.choose_tested(VARIANTS, holdout, test_unselected=test_unselected)
        return [v.name for v in tested]

    def test_without_selection_every_variant_is_tested(self):
        self.assertEqual(self.names(None), ["a", "b", "c", "d", "pgd_at"])

    def test_selected_and_baseline_candidates_are_tested(self):
        self.assertEqual(self.names(held_out(a=90.0, b=70.0)), ["a", "b", "pgd_at"])
        self.assertEqual(self.names(held_out(a=50.0, b=70.0)), ["b", "pgd_at"])

    def test_unselected_on_request(self):
        self.assertEqual(self.names(held_out(a=90.0), True), ["a", "b", "c", "d", "pgd_at"])


class HeadlineNamesTest(absltest.TestCase):
    def test_the_selected_recipe_and_the_reference(self):
        holdout = held_out(a=50.0, b=70.0, c=80.0, d=60.0)
        tested = stages.choose_tested(VARIANTS, holdout, test_unselected=True)
        self.assertEqual(stages.headline_names(tested, holdout), ["c", "pgd_at"])

    def test_without_a_selection_every_tested_candidate(self):
        tested = stages.choose_tested(VARIANTS, None, test_unselected=False)
        self.assertEqual(stages.headline_names(tested, None), ["a", "b", "c", "d", "pgd_at"])

    def test_none_when_not_asked(self):
        self.assertEqual(
            stages.attack_headlines(None, ["c"], num_examples=0, eps=0.3, data_dir=None), {}
        )


class CachedStagesTest(absltest.TestCase):
    def workspace(self, lines):
        runs = self.create_tempdir().full_path
        return stages.Workspace("mnist", runs, None, "float32", "float32", lines.append)

    def test_step_timing_is_reused_when_it_covers_every_variant(self):
        lines = []
        workspace = self.workspace(lines)
        cached = {
            "batch_size": 128,
            "steps": 5,
            "repeats": 3,
            "policy": "float32",
            "seconds_per_step": {"a": 0.01, "b": 0.02, "c": 0.03},
        }
        jsonio.write_json(os.path.join(workspace.runs_dir, "step_costs.json"), cached)
        costs = stages.time_steps(CANDIDATES[:2], workspace, steps=5, repeats=3)
        self.assertEqual(costs, stages.StepCosts(**cached))
        self.assertEqual(lines, [])
        # Another timing budget times again.
        costs = stages.time_steps(CANDIDATES[:1], workspace, steps=1, repeats=1)
        self.assertEqual((costs.steps, costs.repeats), (1, 1))
        self.assertEqual(list(costs.seconds_per_step), ["a"])
        self.assertTrue(any("round-robin" in line for line in lines))

    def test_no_selection_without_held_out_images_or_candidates(self):
        suite = attacking.Suite("mnist", "x", ["pgd"], None, None, "float32", print)
        self.assertIsNone(
            stages.select_on_holdout(suite, CANDIDATES, 600, 0, eps=0.3, data_dir=None)
        )
        plain = [reproduce.Variant("pgd_at", "pgd_at")]
        self.assertIsNone(stages.select_on_holdout(suite, plain, 600, 40, eps=0.3, data_dir=None))

    def test_rerun_reads_cached_held_out_reports(self):
        lines = []
        workspace = self.workspace(lines)
        suite = attacking.Suite(
            "mnist", workspace.runs_dir, ["pgd"], None, None, "float32", lines.append
        )
        for name, worst in (("a", 60.0), ("b", 75.0)):
            path = os.path.join(workspace.run_dir(name), "evaluation", "holdout_report.json")
            jsonio.write_json(path, {"worst_case_accuracy": worst, "split": "train[600:610]"})
        holdout = stages.select_on_holdout(suite, CANDIDATES[:2], 600, 10, eps=0.3, data_dir=None)
        self.assertEqual(lines, [])
        self.assertEqual(holdout.split, "train[600:610]")
        self.assertEqual(holdout.num_examples, 10)
        self.assertEqual(holdout.selected, "b")
        self.assertEqual(holdout.reports["a"]["worst_case_accuracy"], 60.0)

    def test_rerun_reads_cached_test_reports(self):
        lines = []
        workspace = self.workspace(lines)
        suite = attacking.Suite(
            "mnist", workspace.runs_dir, ["pgd"], None, None, "float32", lines.append
        )
        path = os.path.join(workspace.run_dir("a"), "evaluation", "report.json")
        jsonio.write_json(path, {"worst_case_accuracy": 12.0})
        examples = attacking.Examples("test", np.zeros((3, 28, 28, 1)), np.zeros(3))
        reports = stages.attack_tested(suite, CANDIDATES[:1], examples, eps_values=(0.3,))
        self.assertEqual(reports, {"a": {"worst_case_accuracy": 12.0}})
        self.assertEqual(lines, [])


class MeasureReferenceTest(absltest.TestCase):
    def setUp(self):
        super().setUp()
        self.runs = self.create_tempdir().full_path
        self.suite = attacking.Suite("mnist", self.runs, ["pgd"], None, None, "float32", print)
        history = [{"epoch": 1, "seconds": 3.0}, {"epoch": 2, "seconds": 5.0}]
        run = stages.TrainedRun({"total_train_seconds": 8.0}, history, None)
        self.trained = {"pgd_at": run}
        self.costs = stages.StepCosts(128, 5, 3, "float32", {"pgd_at": 0.25})
        self.examples = attacking.Examples("test", np.zeros((4, 28, 28, 1)), np.zeros(4))

    def test_without_the_reference_variant(self):
        self.assertIsNone(
            stages.measure_reference(
                self.suite, {}, self.costs, self.examples, eps=0.3, curve_examples=0
            )
        )

    def test_curve_skipped(self):
        reference = stages.measure_reference(
            self.suite, self.trained, self.costs, self.examples, eps=0.3, curve_examples=0
        )
        self.assertEqual(reference, stages.Reference(4.0, 0.25, None))

    def test_cached_curve(self):
        curve = {"attacks": ["apgd_ce"], "eps": 0.3, "points": []}
        jsonio.write_json(os.path.join(self.runs, "pgd_at", "evaluation", "curve.json"), curve)
        reference = stages.measure_reference(
            self.suite, self.trained, self.costs, self.examples, eps=0.3, curve_examples=None
        )
        self.assertEqual(reference.curve, curve)


if __name__ == "__main__":
    absltest.main()
