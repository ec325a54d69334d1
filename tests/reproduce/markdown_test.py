"""Tests for sq_keras.reproduce.markdown: the page of a hand-made set of rows."""

from absl.testing import absltest

from sq_keras.reproduce import markdown
from tests.reproduce.fixtures import make_row


def table_lines(page):
    return [line for line in page.splitlines() if line.startswith("|")]


class MarkdownTest(absltest.TestCase):
    def test_header_leaves_out_attacks_no_row_has(self):
        page = markdown.markdown([make_row("a")], ["fgsm", "pgd", "pgd_2x_steps"], 0.3)
        header, rule, line = table_lines(page)
        self.assertEqual(
            header,
            "| variant | clean | pgd | worst case | failed checks | s/step | s/epoch (wall) "
            "| epochs | speed-up/epoch vs pgd_at | speed-up to its robustness vs pgd_at |",
        )
        self.assertEqual(rule, "|" + "---|" * 10)
        self.assertEqual(line, "| a | 99.00 | 10.00 | 10.00 | none | 0.012 | 12.3 | 2 | - | - |")
        self.assertIn("Robust accuracy (%) at eps = 0.3 on 40 test images.", page)
        self.assertTrue(page.endswith("- `a`: a note (`--method=natural`)\n"))

    def test_headline_table_states_each_rows_image_count(self):
        headline = {
            "attacks": ["apgd_ce", "square"],
            "num_examples": 10000,
            "clean_accuracy": 99.3,
            "robust_accuracy": {"apgd_ce": 92.0, "square": 91.5},
            "worst_case_accuracy": 91.5,
        }
        rows = [make_row("a", headlines={"autoattack": headline}), make_row("b")]
        page = markdown.markdown(rows, ["pgd"], 0.3)
        lines = table_lines(page)
        self.assertEqual(
            lines[4], "| variant | N | clean | after apgd_ce | after square | worst case |"
        )
        self.assertEqual(lines[6], "| a | 10000 | 99.30 | 92.00 | 91.50 | 91.50 |")
        self.assertEqual(len(lines), 7)
        self.assertIn("`autoattack` as a cascade", page)
        no_headline = markdown.markdown([make_row("b")], ["pgd"], 0.3)
        self.assertNotIn("as a cascade", no_headline)

    def test_one_headline_table_per_preset(self):
        def head(attacks, worst, count):
            return {
                "attacks": attacks,
                "num_examples": count,
                "clean_accuracy": 99.0,
                "robust_accuracy": {a: worst for a in attacks},
                "worst_case_accuracy": worst,
            }

        rows = [
            make_row(
                "a",
                headlines={
                    "autoattack": head(["apgd_ce"], 92.5, 10000),
                    "strong": head(["fgsm", "pgd"], 90.0, 10000),
                },
            ),
            make_row("pgd_at", headlines={"strong": head(["fgsm", "pgd"], 89.0, 5000)}),
        ]
        page = markdown.markdown(rows, ["pgd"], 0.3)
        autoattack = page.index("`autoattack` as a cascade")
        strong = page.index("`strong` as a cascade")
        self.assertLess(autoattack, strong)
        # Each table has the rows that have its preset, with their own counts.
        first = table_lines(page[autoattack:strong])
        self.assertEqual(first[2:], ["| a | 10000 | 99.00 | 92.50 | 92.50 |"])
        second = table_lines(page[strong:])
        self.assertEqual(second[0], "| variant | N | clean | after fgsm | after pgd | worst case |")
        self.assertEqual(
            second[2:],
            [
                "| a | 10000 | 99.00 | 90.00 | 90.00 | 90.00 |",
                "| pgd_at | 5000 | 99.00 | 89.00 | 89.00 | 89.00 |",
            ],
        )

    def test_speedup_cells(self):
        rows = [
            make_row(
                "fast",
                speedup_per_epoch_vs_pgd_at=4.04,
                speedup_to_reach_vs_pgd_at=2.66,
                failed_checks=["doubled", "large_eps"],
            ),
            make_row("weak", speedup_per_epoch_vs_pgd_at=1.0, speedup_to_reach_vs_pgd_at=None),
        ]
        fast, weak = table_lines(markdown.markdown(rows, ["pgd"], 0.3))[2:]
        self.assertTrue(fast.endswith("| doubled, large_eps | 0.012 | 12.3 | 2 | 4.0x | 2.7x |"))
        self.assertTrue(weak.endswith("| 1.0x | pgd_at never as robust |"))

    def test_held_out_column_and_untested_rows(self):
        rows = [
            make_row("picked", holdout_worst_case_accuracy=12.5),
            make_row("other", tested=False, holdout_worst_case_accuracy=8.25),
            make_row("reference"),
        ]
        header, _, picked, other, reference = table_lines(markdown.markdown(rows, ["pgd"], 0.3))
        self.assertIn("| worst case | held-out worst case | failed checks |", header)
        self.assertIn("| 10.00 | 12.50 | none |", picked)
        self.assertEqual(
            other,
            "| other | - | - | - | 8.25 | not attacked on the test set "
            "| 0.012 | 12.3 | 2 | - | - |",
        )
        self.assertIn("| 10.00 | - | none |", reference)

    def test_selection_names_the_tested_candidates(self):
        selection = {
            "split": "train[600:640]",
            "num_examples": 40,
            "selected": "picked",
            "tested_candidates": ["picked", "paper"],
            "untested": ["other"],
        }
        page = markdown.markdown([make_row("picked")], ["pgd"], 0.3, selection=selection)
        self.assertIn(
            "Recipe selection: worst case over the suite on 40 held-out training images "
            "(`train[600:640]`, never trained on); selected: `picked`. Of the candidates, "
            "only `picked`, `paper` (the selected one and the paper's recipe) are attacked "
            "on the test set; the others keep their held-out numbers.",
            page,
        )
        selection["untested"] = []
        page = markdown.markdown([make_row("picked")], ["pgd"], 0.3, selection=selection)
        self.assertIn("selected: `picked`.\n", page)
        self.assertNotIn("Of the candidates", page)

    def test_a_selection_only_page(self):
        rows = [make_row("a", tested=False, holdout_worst_case_accuracy=91.2)]
        selection = {
            "split": "train[50000:50500]",
            "num_examples": 500,
            "selected": "a",
            "tested_candidates": [],
            "untested": ["a"],
            "attacks": ["bpda_identity:apgd_ce", "bpda_identity:apgd_dlr"],
        }
        page = markdown.markdown(rows, ["pgd"], 0.3, selection=selection)
        self.assertIn("nothing was attacked on the test set (a selection only).", page)
        self.assertIn(
            "Recipe selection: worst case over bpda_identity:apgd_ce + bpda_identity:apgd_dlr "
            "on 500 held-out training images (`train[50000:50500]`, never trained on); "
            "selected: `a`. No candidate is attacked on the test set (a selection only).",
            page,
        )
        self.assertIn("| a | - | - | 91.20 | not attacked on the test set |", page)

    def test_curve_and_provenance(self):
        curve = {
            "attacks": ["apgd_ce", "apgd_dlr"],
            "points": [{"epoch": 1, "robust_accuracy": 50.04}, {"epoch": 2, "robust_accuracy": 80}],
        }
        page = markdown.markdown(
            [make_row("a")], ["pgd"], 0.1, curve=curve, provenance="Made by me."
        )
        self.assertTrue(page.startswith("Made by me.\n\nRobust accuracy (%) at eps = 0.1 on"))
        self.assertIn(
            "`pgd_at` robust accuracy after each epoch (apgd_ce + apgd_dlr, worst case, "
            "same test images): 1: 50.0, 2: 80.0.",
            page,
        )

    def test_holdout_curves(self):
        curve = {
            "attacks": ["bpda_identity:apgd_ce", "bpda_identity:apgd_dlr"],
            "split": "train[50000:50500]",
            "points": [{"epoch": 1, "robust_accuracy": 70.0}, {"epoch": 2, "robust_accuracy": 88}],
        }
        row = make_row("sq")
        row["holdout_speedup_to_reach_vs_pgd_at"] = 12.34
        never = make_row("other")
        never["holdout_speedup_to_reach_vs_pgd_at"] = None
        page = markdown.markdown(
            [row, never], ["pgd"], 0.3, holdout_curves={"sq": curve, "other": curve}
        )
        self.assertIn(
            "Held-out robust accuracy after each epoch (bpda_identity:apgd_ce / "
            "bpda_identity:apgd_dlr, worst case, `train[50000:50500]`)",
            page,
        )
        self.assertIn("- `sq`: 1: 70.0, 2: 88.0; 12.3x\n", page)
        self.assertIn("- `other`: 1: 70.0, 2: 88.0; pgd_at never as robust\n", page)

    def test_variant_lines_spell_the_flags(self):
        row = make_row("sq", method="sq_fgsm", settings={"adv_fraction": 0.5, "noise": "sign"})
        page = markdown.markdown([row], ["pgd"], 0.3)
        self.assertIn("- `sq`: sq note (`--method=sq_fgsm` --adv_fraction=0.5 --noise=sign)", page)

    def test_provenance_line(self):
        payload = {
            "command": None,
            "seed": 0,
            "policy": "float32",
            "environment": {
                "git_commit": "c0ffee",
                "machine": "x86_64, 2 cpus",
                "tensorflow": "2.21.0",
                "keras": "3.0",
            },
            "rows": [
                {"trained_at_commit": "b"},
                {"trained_at_commit": None},
                {"trained_at_commit": "a"},
                {"trained_at_commit": "b"},
            ],
        }
        self.assertEqual(
            markdown.provenance_line(payload),
            "Made by `sq_keras.reproduce.run` (seed 0, training policy float32) at commit "
            "c0ffee, models trained at a, b; x86_64, 2 cpus, TensorFlow 2.21.0, Keras 3.0.",
        )


if __name__ == "__main__":
    absltest.main()
