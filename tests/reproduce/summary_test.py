"""Tests for sq_keras.reproduce.summary and `python -m apps.summarize`."""

import os
import shutil
import tempfile

from absl.testing import absltest

from sq_keras import jsonio
from sq_keras.reproduce import summary
from tests import testing_utils
from tests.reproduce.fixtures import make_row

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
COMPARISON = "results/mnist.json"


def make_payload(rows, *, selected="b"):
    return {
        "attack_settings": {"pgd_steps": 100, "restarts": 5},
        "selection": {"num_examples": 500, "selected": selected},
        "rows": rows,
    }


def page_with_block(path, body="stale"):
    return "\n".join(
        ["# Title", "", summary.BEGIN.format(path=path), "", body, "", summary.END, "", "After."]
    )


class SummaryTest(absltest.TestCase):
    def test_row_cells(self):
        robust = {"pgd": 93.1, "bpda_identity": 90.1, "bpda_smooth": 90.4, "square": 89.7}
        headline = {"num_examples": 10000, "worst_case_accuracy": 90.123}
        row = make_row(
            "b",
            clean_accuracy=99.5,
            robust_accuracy={**robust, "transfer": 95.4},
            worst_case_accuracy=89.4,
            failed_checks=["gradient_free_not_stronger", "plain_gradients_not_masked"],
            holdout_worst_case_accuracy=88.0,
            speedup_per_epoch_vs_pgd_at=14.104,
            speedup_to_reach_vs_pgd_at=8.46,
            headlines={"autoattack": headline},
        )
        header, rule, line = summary.summary(make_payload([row]))
        self.assertEqual(
            header,
            "| variant | clean | PGD-100 x 5 | BPDA | Square | transfer | **worst case** "
            "(40 images) | `autoattack`, first 10000 images | held-out worst case "
            "| masking checks failed | cost per epoch vs `pgd_at` | speed-up to its robustness |",
        )
        self.assertEqual(rule, "|" + "---|" * 12)
        # BPDA shows the stronger of the two stand-ins.
        self.assertEqual(
            line,
            "| `b` (selected) | 99.5 | 93.1 | 90.1 | 89.7 | 95.4 | **89.4** | 90.12 | 88.0 "
            "| 2 | 1/14.1 | 8.5x |",
        )

    def test_one_column_per_headline_preset(self):
        autoattack = {"num_examples": 10000, "worst_case_accuracy": 92.52}
        strong = {"num_examples": 10000, "worst_case_accuracy": 91.004}
        rows = [
            make_row("b", headlines={"autoattack": autoattack, "strong": strong}),
            make_row("pgd_at", headlines={"autoattack": autoattack}),
        ]
        header, _, selected, reference = summary.summary(make_payload(rows))
        self.assertIn("| `autoattack`, first 10000 images | `strong`, first 10000 images |", header)
        self.assertIn("| **10.0** | 92.52 | 91.00 |", selected)
        # A row without one of the headlines shows a dash there.
        self.assertIn("| **10.0** | 92.52 | - |", reference)

    def test_reference_and_rows_without_a_column(self):
        reference = make_row("pgd_at", speedup_to_reach_vs_pgd_at=0.6)
        plain = make_row("a", speedup_per_epoch_vs_pgd_at=25.6, speedup_to_reach_vs_pgd_at=None)
        lines = summary.summary(make_payload([plain, reference]))
        self.assertEqual(len(lines), 4)
        # No headline or held-out column when no tested row has one.
        self.assertNotIn("autoattack", lines[0])
        self.assertNotIn("held-out", lines[0])
        self.assertEqual(
            lines[2], "| `a` | 99.0 | 10.0 | - | - | - | **10.0** | - | 1/25.6 | never reached |"
        )
        self.assertEqual(
            lines[3], "| `pgd_at` (reference) | 99.0 | 10.0 | - | - | - | **10.0** | - | 1 | 0.6x |"
        )

    def test_candidates_screened_only_follow_in_one_sentence(self):
        screened = make_row(
            "c",
            tested=False,
            holdout_worst_case_accuracy=78.04,
            speedup_per_epoch_vs_pgd_at=21.7,
        )
        lines = summary.summary(make_payload([make_row("b"), screened]))
        self.assertEqual(lines[-2], "")
        self.assertEqual(
            lines[-1],
            "Screened on the 500 held-out images only (worst case %, cost per epoch vs "
            "`pgd_at`): `c` 78.0 (1/21.7).",
        )
        self.assertFalse(any(line.startswith("| `c`") for line in lines))

    def test_rejects_a_payload_without_tested_rows(self):
        with self.assertRaisesRegex(ValueError, "No variant was attacked"):
            summary.summary(make_payload([make_row("a", tested=False)]))
        with self.assertRaisesRegex(ValueError, "Not a comparison.*nor a report"):
            summary.summary({"attacks": {}})

    def test_an_evaluation_report_is_a_table_of_its_attacks(self):
        def result(robust):
            return {"robust_accuracy": robust, "seconds": 1.0, "attacked_examples": 10}

        evaluated = {
            "command": "python -m apps.evaluate --split=test[0:10]",
            "date": "2026-12-07 18:00 UTC",
            "git_commit": "0123456789abcdef",
            "machine": "x86_64, 2 cpus, CPU X",
        }
        report = {
            "model": "runs/m",
            "model_sha256": "ab" * 32,
            "num_examples": 2000,
            "eps": 0.3,
            "clean_accuracy": 99.5,
            "worst_case_only": True,
            "attacks": {
                "fgsm": {"settings": {}, "results": {"0.3": result(96.0), "0.5": result(9.0)}},
                "square": {"settings": {}, "results": {"0.3": result(91.25), "0.5": result(0.0)}},
            },
            "worst_case_accuracy_by_eps": {"0.3": 91.25, "0.5": 0.0},
            "worst_case_accuracy": 91.25,
            "skipped": {"transfer": "no source model"},
            "split": "test[0:2000]",
            "seed": 0,
            "mixed_precision": "float32",
            "settings": {"pgd_steps": 100, "seed": 0},
            "training_config": {
                "method": "sq_free",
                "seed": 0,
                "environment": {"git_commit": "fedcba9876543210", "machine": "CPU Y"},
            },
            "shards": [
                {"split": "test[0:1000]", "evaluated": None},
                {"split": "test[1000:2000]", "evaluated": evaluated},
            ],
        }
        lines = summary.summary(report)
        self.assertEqual(
            lines[:6],
            [
                "| eps = 0.3, `test[0:2000]`: 2,000 images, clean 99.50% | robust after (%) |",
                "|---|---|",
                "| `fgsm` | 96.00 |",
                "| `square` | 91.25 |",
                "| **worst case** | **91.25** |",
                "| worst case at eps = 0.5 | 0.00 |",
            ],
        )
        text = lines[-1]
        for part in (
            "`runs/m` (sha256 `abababababab`)",
            "`--method=sq_free` seed 0 at fedcba9 on CPU Y.",
            "skipped: transfer",
            "`test[0:1000]`: not recorded in its report.",
            "`test[1000:2000]`: `python -m apps.evaluate --split=test[0:10]` at 0123456 on "
            "x86_64, 2 cpus, CPU X, 2026-12-07 18:00 UTC.",
        ):
            self.assertIn(part, text)
        # Not a cascade: each attack's own accuracy.
        own = summary.summary({**report, "worst_case_only": False})
        self.assertTrue(own[0].endswith("| robust (%) |"))

    def test_a_combination_shows_each_evaluation_and_the_worst_case_over_all(self):
        evaluated = {
            "command": "python -m apps.evaluate --attacks=transfer",
            "date": "2026-12-07 22:00 UTC",
            "git_commit": "0123456789abcdef",
            "machine": "CPU X",
        }
        combined = {
            "model_sha256": "ab" * 32,
            "dataset": "mnist",
            "split": "test[0:2000]",
            "eps": 0.3,
            "num_examples": 2000,
            "clean_accuracy": 99.0,
            "worst_case_accuracy": 90.05,
            "robust_examples": [],
            "evaluations": [
                {
                    "report": "strong.json",
                    "split": "test[0:2000]",
                    "attacks": ["fgsm", "pgd", "square", "bpda_identity"],
                    "worst_case_accuracy": 90.1,
                    "breaks_alone": [3, 7, 9],
                    "evaluated": [None, evaluated],
                },
                {
                    "report": "transfer.json",
                    "split": "test[0:10000]",
                    "attacks": ["transfer"],
                    "worst_case_accuracy": 97.0,
                    "breaks_alone": [11],
                    "evaluated": evaluated,
                },
            ],
        }
        lines = summary.summary(combined)
        self.assertEqual(
            lines[:5],
            [
                "| eps = 0.3, `test[0:2000]`: 2,000 images, clean 99.00% | attacks "
                "| worst case (%) | broken by it alone |",
                "|---|---|---|---|",
                "| `strong.json` | 4 | 90.10 | 3 |",
                "| `transfer.json` | `transfer` | 97.00 | 1 |",
                "| **per image, over all** |  | **90.05** |  |",
            ],
        )
        text = lines[-1]
        self.assertIn("sha256 `abababababab`", text)
        self.assertIn("`strong.json` (test[0:2000]): `python -m apps.evaluate", text)
        self.assertIn("1 run(s) not recorded in their reports.", text)
        self.assertIn("`transfer.json` (test[0:10000]): `python -m apps.evaluate", text)
        # Without a report over exactly the range, no clean accuracy is shown.
        self.assertNotIn("clean", summary.summary({**combined, "clean_accuracy": None})[0])

    def test_the_committed_shard_report_shows_every_attack(self):
        path = "results/autoattack/readme_shards/mnist_sq_free_strong_test_0_1000.json"
        report = jsonio.read_json(os.path.join(ROOT, path))
        lines = summary.summary(report)
        for name, entry in report["attacks"].items():
            robust = entry["results"]["0.3"]["robust_accuracy"]
            self.assertIn(f"| `{name}` | {robust:.2f} |", lines)
        self.assertIn(f"| **worst case** | **{report['worst_case_accuracy']:.2f}** |", lines)

    def test_replace_blocks_rewrites_only_the_block(self):
        directory = self.create_tempdir().full_path
        jsonio.write_json(os.path.join(directory, "c.json"), make_payload([make_row("b")]))
        new_page, count = summary.replace_blocks(page_with_block("c.json"), directory)
        self.assertEqual(count, 1)
        self.assertTrue(new_page.startswith("# Title\n\n<!-- generated from c.json"))
        self.assertTrue(new_page.endswith(f"{summary.END}\n\nAfter."))
        self.assertNotIn("stale", new_page)
        [(path, lines)] = summary.blocks(new_page)
        self.assertEqual(path, "c.json")
        self.assertEqual(lines, summary.summary(make_payload([make_row("b")])))
        # Made again from the same JSON, the page does not change.
        self.assertEqual(summary.replace_blocks(new_page, directory), (new_page, 1))

    def test_a_missing_comparison_is_an_error(self):
        with self.assertRaisesRegex(OSError, "missing.json"):
            summary.replace_blocks(page_with_block("missing.json"), self.create_tempdir().full_path)

    def test_a_block_without_its_end_is_an_error(self):
        page = page_with_block("c.json").replace(summary.END, "")
        with self.assertRaisesRegex(ValueError, "has no '<!-- end of generated table -->' line"):
            summary.blocks(page)
        with self.assertRaisesRegex(ValueError, "has no"):
            summary.replace_blocks(page, ".")


def run_app(*flags):
    return testing_utils.run_app("apps.summarize", *flags)


class SummarizeAppTest(absltest.TestCase):
    def test_rewrites_a_page_from_the_committed_comparison(self):
        directory = tempfile.mkdtemp(prefix="summarize_app_test-")
        self.addCleanup(shutil.rmtree, directory, ignore_errors=True)
        os.makedirs(os.path.join(directory, "results"))
        shutil.copy(os.path.join(ROOT, COMPARISON), os.path.join(directory, COMPARISON))
        page = os.path.join(directory, "page.md")
        with open(page, "w") as f:
            f.write(page_with_block(COMPARISON))
        done = run_app(f"--page={page}")
        self.assertEqual(done.returncode, 0, done.stderr)
        self.assertIn("rewrote 1 generated table(s)", done.stdout)
        with open(page) as f:
            [(_, lines)] = summary.blocks(f.read())
        payload = jsonio.read_json(os.path.join(ROOT, COMPARISON))
        tested = [r for r in payload["rows"] if r["tested"]]
        # One line per tested variant, each with its worst case in bold.
        table = [line for line in lines if line.startswith("| `")]
        self.assertLen(table, len(tested))
        for row, line in zip(tested, table, strict=True):
            self.assertTrue(line.startswith(f"| `{row['name']}`"), line)
            self.assertIn(f" **{row['worst_case_accuracy']:.1f}** ", line)
        selected = payload["selection"]["selected"]
        self.assertIn(f"| `{selected}` (selected) |", "\n".join(table))

    def test_a_page_without_a_block_is_a_one_line_error(self):
        directory = self.create_tempdir().full_path
        page = os.path.join(directory, "page.md")
        with open(page, "w") as f:
            f.write("# No block here\n")
        done = run_app(f"--page={page}")
        self.assertEqual(done.returncode, 1)
        self.assertIn("Error: ", done.stderr)
        self.assertIn("has no block beginning with", done.stderr)


if __name__ == "__main__":
    absltest.main()
