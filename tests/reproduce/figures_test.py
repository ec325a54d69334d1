"""Tests for sq_keras.reproduce.figures: the PNGs of hand-made rows."""

import os

from absl.testing import absltest

from sq_keras.reproduce import figures


def make_row(name, *, tested=True, speedup=None):
    row = {
        "name": name,
        "tested": tested,
        "worst_case_accuracy": 50.0 if tested else None,
        "worst_case_accuracy_by_eps": {"0.3": 50.0, "0.1": 90.0, "0.5": 1.0} if tested else {},
        "grad_l1": [5.0, 2.0, 1.0],
    }
    if speedup is not None:
        row["speedup_per_epoch_vs_pgd_at"] = speedup
    return row


class FiguresTest(absltest.TestCase):
    def test_three_figures_with_speedups(self):
        out = self.create_tempdir().full_path
        rows = [make_row("a", speedup=4.0), make_row("b", tested=False, speedup=2.0)]
        files = figures.write_figures(rows, out, "mnist")
        self.assertEqual(
            files,
            {
                "tradeoff": os.path.join(out, "mnist_cost_vs_robustness.png"),
                "sweep": os.path.join(out, "mnist_robustness_vs_eps.png"),
                "grad_l1": os.path.join(out, "mnist_grad_l1.png"),
            },
        )
        for path in files.values():
            self.assertGreater(os.path.getsize(path), 1000)

    def test_no_tradeoff_without_speedups(self):
        out = self.create_tempdir().full_path
        files = figures.write_figures([make_row("a")], out, "mnist")
        self.assertEqual(set(files), {"sweep", "grad_l1"})
        self.assertFalse(os.path.exists(os.path.join(out, "mnist_cost_vs_robustness.png")))

    def test_sweep_is_sorted_by_eps_and_skips_untested_rows(self):
        curves = figures._sweep_curves([make_row("a"), make_row("b", tested=False)])
        self.assertEqual(curves, [("a", [0.1, 0.3, 0.5], [90.0, 50.0, 1.0], "o")])


if __name__ == "__main__":
    absltest.main()
