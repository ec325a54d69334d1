"""Tests of sq_keras.evaluation.combine: the per-image worst case over
separate evaluations of the same images."""

import functools

from absl.testing import absltest

from sq_keras import evaluation
from tests.evaluation.fixtures import range_report

SETTINGS = evaluation.AttackSettings(pgd_steps=5, restarts=1, seed=3)
NUM_EXAMPLES = 80
BATCH_SIZE = 20
MODEL_SHA256 = "7" * 64


@functools.lru_cache(maxsize=None)
def _report_json(attacks, start=0, stop=NUM_EXAMPLES, eps=0.15):
    """One evaluation of the "soft" model over test[start:stop], as JSON."""
    return range_report(
        start,
        stop,
        attacks,
        settings=SETTINGS,
        model_sha256=MODEL_SHA256,
        num_examples=NUM_EXAMPLES,
        batch_size=BATCH_SIZE,
        eps=eps,
        add_large_eps=False,
    ).to_json()


def report(attacks, start=0, stop=NUM_EXAMPLES, eps=0.15):
    """A fresh `Report` (tests may edit it)."""
    return evaluation.Report.from_json(_report_json(tuple(attacks), start, stop, eps))


class CombineTest(absltest.TestCase):
    def test_two_evaluations_combine_to_the_run_with_both_attacks(self):
        # PGD and Square run apart, then together: per attack, each attack
        # sees the same batches either way, so the per-image worst case over
        # the two reports is exactly the joint run's. At eps = 0.15 each
        # breaks an image the other leaves.
        pgd, square, both = report(["pgd"]), report(["square"]), report(["pgd", "square"])
        combined = evaluation.combine_reports([pgd, square], names=["pgd.json", "square.json"])
        self.assertEqual(combined["split"], f"test[0:{NUM_EXAMPLES}]")
        self.assertEqual(combined["num_examples"], NUM_EXAMPLES)
        self.assertEqual(combined["clean_accuracy"], both.clean_accuracy)
        self.assertEqual(combined["worst_case_accuracy"], both.worst_case_accuracy)
        self.assertEqual(combined["robust_examples"], both.robust_examples)
        # Not trivial: the attacks broke some images, not all, and the
        # minimum of the two percentages would overstate the worst case.
        self.assertGreater(combined["worst_case_accuracy"], 0)
        self.assertLess(combined["worst_case_accuracy"], combined["clean_accuracy"])
        self.assertLess(
            combined["worst_case_accuracy"],
            min(pgd.worst_case_accuracy, square.worst_case_accuracy),
        )
        by_pgd, by_square = combined["evaluations"]
        self.assertEqual(by_pgd["report"], "pgd.json")
        self.assertEqual(by_pgd["worst_case_accuracy"], pgd.worst_case_accuracy)
        self.assertEqual(by_square["attacks"], ["square"])
        only_pgd = set(square.robust_examples) - set(pgd.robust_examples)
        only_square = set(pgd.robust_examples) - set(square.robust_examples)
        self.assertEqual(by_pgd["breaks_alone"], sorted(only_pgd))
        self.assertEqual(by_square["breaks_alone"], sorted(only_square))
        self.assertTrue(only_pgd and only_square)

    def test_common_images_of_other_ranges(self):
        whole, part = report(["fgsm"]), report(["pgd"], 20, 60)
        combined = evaluation.combine_reports([whole, part], names=["whole.json", "part.json"])
        self.assertEqual(combined["split"], "test[20:60]")
        self.assertEqual(combined["num_examples"], 40)
        self.assertEqual(combined["clean_accuracy"], part.clean_accuracy)  # Exactly its range.
        in_window = {i - 20 for i in whole.robust_examples if 20 <= i < 60}
        expected = sorted(in_window & set(part.robust_examples))
        self.assertEqual(combined["robust_examples"], expected)
        self.assertEqual(combined["worst_case_accuracy"], evaluation.percent(len(expected), 40))
        self.assertEqual(
            combined["evaluations"][0]["worst_case_accuracy"],
            evaluation.percent(len(in_window), 40),
        )

    def test_clean_accuracy_is_none_when_no_report_covers_exactly_the_range(self):
        left, right = report(["fgsm"], 0, 60), report(["pgd"], 20, 80)
        combined = evaluation.combine_reports([left, right])
        self.assertEqual(combined["split"], "test[20:60]")
        self.assertIsNone(combined["clean_accuracy"])

    def assert_refused(self, reports, *fragments):
        with self.assertRaises(evaluation.MergeError) as caught:
            evaluation.combine_reports(reports, names=[f"r{i}.json" for i in range(len(reports))])
        for fragment in fragments:
            self.assertIn(fragment, str(caught.exception))

    def test_another_model_is_refused(self):
        other = report(["pgd"])
        other.metadata["model_sha256"] = "8" * 64
        self.assert_refused([report(["fgsm"]), other], "r0.json and r1.json", "model_sha256")

    def test_another_eps_is_refused(self):
        self.assert_refused([report(["fgsm"]), report(["fgsm"], eps=0.2)], "eps: 0.15 -> 0.2")

    def test_a_cut_robust_list_is_refused(self):
        cut = report(["fgsm"])
        cut.robust_examples = cut.robust_examples[:10]
        self.assert_refused([cut, report(["pgd"])], "r0.json lists 10 robust images", "was cut")

    def test_ranges_without_common_images_are_refused(self):
        self.assert_refused(
            [report(["fgsm"], 0, 20), report(["pgd"], 20, 60)], "share no image", "test[0:20]"
        )

    def test_one_report_is_refused(self):
        self.assert_refused([report(["fgsm"])], "two or more reports")


if __name__ == "__main__":
    absltest.main()
