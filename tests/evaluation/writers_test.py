"""Tests of sq_keras.evaluation.writers: JSON, figures, table, TensorBoard."""

import json
import os

from absl.testing import absltest

from sq_keras import evaluation
from tests.evaluation.fixtures import report_of


class WriteReportTest(absltest.TestCase):
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
        self.assertNotIn("examples", loaded)
        self.assertEqual(written, loaded)
        self.assertFalse(os.path.exists(output + ".tmp"))
        for key in ("sweep_plot", "examples_plot"):
            self.assertTrue(os.path.getsize(written["files"][key]) > 1000)
            with open(written["files"][key], "rb") as f:
                self.assertEqual(f.read(8), b"\x89PNG\r\n\x1a\n")
        self.assertTrue(any(name.startswith("events.out.tfevents") for name in os.listdir(logdir)))
        table = evaluation.format_table(report)
        self.assertIn("worst case", table)
        self.assertIn("masking checks", table)

    def test_report_read_back_from_json_writes_without_examples_figure(self):
        report = evaluation.Report.from_json(report_of("natural").to_json())
        output = os.path.join(self.create_tempdir().full_path, "again.json")
        written = evaluation.write_report(report, output)
        self.assertEqual(sorted(written["files"]), ["json", "sweep_plot"])
        self.assertTrue(os.path.getsize(written["files"]["sweep_plot"]) > 1000)
        self.assertFalse(os.path.exists(output.replace(".json", "_examples.png")))
        self.assertEqual({k: v for k, v in written.items() if k != "files"}, report.to_json())

    def test_metadata_keys_are_top_level_after_the_report(self):
        report = report_of("natural")
        report.metadata["split"] = "test"
        try:
            output = os.path.join(self.create_tempdir().full_path, "report.json")
            written = evaluation.write_report(report, output)
        finally:
            report.metadata.clear()  # The report is shared by other tests.
        self.assertEqual(list(written)[-2:], ["split", "files"])
        self.assertEqual(written["split"], "test")

    def test_table_rows(self):
        report = report_of("natural")
        lines = evaluation.format_table(report).splitlines()
        self.assertTrue(lines[0].startswith("model: memory  examples: 150  clean accuracy: "))
        self.assertEqual(lines[1].split(), ["attack", "eps=0.3", "eps=0.5", "img/s"])
        self.assertTrue(lines[3].startswith("fgsm "))
        self.assertIn("skipped transfer: no source model given (--source_model)", lines)
        self.assertEqual(lines[-10], "masking checks:")


if __name__ == "__main__":
    absltest.main()
