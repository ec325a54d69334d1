"""Tests for sq_keras.reproduce: a tiny side-by-side run on real MNIST."""

import json
import os

from absl.testing import absltest
from absl.testing import parameterized

from sq_keras import evaluation
from sq_keras import reproduce


class ReproduceTest(parameterized.TestCase):
    def test_tiny_comparison_writes_table_figures_and_resumes(self):
        root = self.create_tempdir().full_path
        runs, out = os.path.join(root, "runs"), os.path.join(root, "results")
        variants = [
            reproduce.Variant("natural", "natural", note="clean"),
            reproduce.Variant("sq_noisy_sign", "sq_noisy", {"noise": "sign"}, "quantizer"),
            reproduce.Variant("pgd_at", "pgd_at", {"pgd_steps": 3, "pgd_step_size": 0.1}, "AT"),
        ]
        kwargs = dict(
            dataset="mnist",
            epochs=1,
            runs_dir=runs,
            output_dir=out,
            num_examples=40,
            attacks=("fgsm", "pgd", "bpda_identity", "transfer"),
            settings=evaluation.AttackSettings(pgd_steps=5),
            train_examples=600,
            log=lambda line: None,
        )
        payload = reproduce.run(variants, **kwargs)
        rows = {r["name"]: r for r in payload["rows"]}
        self.assertEqual(list(rows), ["natural", "sq_noisy_sign", "pgd_at"])
        self.assertEqual(payload["transfer_source"], "pgd_at")
        self.assertIn("bpda_identity", rows["sq_noisy_sign"]["robust_accuracy"])
        self.assertNotIn("bpda_identity", rows["natural"]["robust_accuracy"])
        self.assertIn("transfer", rows["natural"]["robust_accuracy"])
        self.assertNotIn("transfer", rows["pgd_at"]["robust_accuracy"])
        for r in rows.values():
            worst = r["worst_case_accuracy"]
            self.assertLessEqual(worst, min(r["robust_accuracy"].values()))
            self.assertLessEqual(worst, r["clean_accuracy"])
        self.assertAlmostEqual(rows["pgd_at"]["speedup_per_epoch_vs_pgd_at"], 1.0)
        # PGD-3 adversarial training costs more per epoch than natural training.
        self.assertGreater(rows["natural"]["speedup_per_epoch_vs_pgd_at"], 1.5)
        with open(os.path.join(out, "mnist.md")) as f:
            table = f.read()
        self.assertIn("| sq_noisy_sign |", table)
        for figure in payload["figures"].values():
            self.assertGreater(os.path.getsize(figure), 1000)

        # A rerun neither retrains nor re-attacks.
        report = os.path.join(runs, "natural", "evaluation", "report.json")
        stamp = os.path.getmtime(report)
        lines = []
        again = reproduce.run(variants, **{**kwargs, "log": lines.append})
        self.assertFalse(any(line.startswith("Epoch") for line in lines))
        self.assertFalse(any("attacking" in line for line in lines))
        self.assertEqual(os.path.getmtime(report), stamp)
        with open(os.path.join(out, "mnist.json")) as f:
            self.assertEqual(json.load(f)["rows"], json.loads(json.dumps(again["rows"])))

    def test_duplicate_names_are_refused(self):
        v = reproduce.Variant("a", "natural")
        with self.assertRaisesRegex(ValueError, "unique"):
            reproduce.run(
                [v, v], dataset="mnist", epochs=1, runs_dir="x", output_dir="y", num_examples=1
            )


if __name__ == "__main__":
    absltest.main()
