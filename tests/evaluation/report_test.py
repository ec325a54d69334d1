"""Tests of sq_keras.evaluation.report: eps keys and the JSON dict."""

from absl.testing import absltest

from sq_keras import evaluation
from tests.evaluation.fixtures import fake_report


class ReportTest(absltest.TestCase):
    def test_eps_key(self):
        self.assertEqual(evaluation.eps_key(0.3), "0.3")
        self.assertEqual(evaluation.eps_key(0.0), "0")
        self.assertEqual(evaluation.eps_key(8 / 255), "0.0313725")

    def test_to_json_keeps_field_order_then_metadata_without_examples(self):
        report = fake_report({"pgd": {0.3: 40.0, 0.5: 0.0}})
        report.examples = {"images": "in memory only"}
        report.metadata.update(dataset="mnist", split="test[:100]")
        written = report.to_json()
        self.assertEqual(
            list(written),
            [
                "model",
                "num_examples",
                "num_classes",
                "eps",
                "eps_values",
                "large_eps_added",
                "has_quantizer",
                "clean_accuracy",
                "attacks",
                "skipped",
                "settings",
                "worst_case_only",
                "worst_case_accuracy_by_eps",
                "worst_case_accuracy",
                "robust_examples",
                "zero_gradient_examples_percent",
                "zero_gradient_entries_percent",
                "checks",
                "dataset",
                "split",
            ],
        )
        self.assertEqual(written["split"], "test[:100]")
        self.assertNotIn("examples", written)

    def test_from_json_reads_back_the_written_report(self):
        report = fake_report({"pgd": {0.3: 40.0, 0.5: 0.0}})
        report.metadata.update(dataset="mnist", split="test[:100]")
        written = {**report.to_json(), "files": {"json": "/tmp/report.json"}}
        loaded = evaluation.Report.from_json(written)
        self.assertEqual(loaded.to_json(), report.to_json())
        self.assertEqual(loaded.metadata, {"dataset": "mnist", "split": "test[:100]"})
        self.assertEqual(loaded.robust_accuracy("pgd", 0.3), 40.0)
        self.assertIsNone(loaded.examples)

    def test_percent_counts_examples(self):
        self.assertEqual(evaluation.percent(1, 3), 33.3333)
        self.assertEqual(evaluation.percent(60, 60), 100.0)
        self.assertEqual(evaluation.percent(0, 7), 0.0)

    def test_accessors(self):
        report = fake_report({"pgd": {0.3: 40.0, 0.5: 0.0}})
        self.assertEqual(report.robust_accuracy("pgd", 0.5), 0.0)
        self.assertIsNone(report.robust_accuracy("fgsm", 0.3))
        self.assertIsNone(report.robust_accuracy("pgd", 0.1))
        self.assertEqual(report.worst_case_at(0.3), 40.0)


if __name__ == "__main__":
    absltest.main()
