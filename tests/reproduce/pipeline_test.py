"""Tests for sq_keras.reproduce.pipeline: a tiny side-by-side run on real MNIST."""

import json
import os

from absl.testing import absltest
from absl.testing import parameterized

from sq_keras import evaluation
from sq_keras import reproduce
from sq_keras.reproduce import stages


def _run(variants, log=print, **options):
    return reproduce.run(variants, reproduce.ComparisonConfig(**options), log=log)


class ReproduceTest(parameterized.TestCase):
    def test_tiny_comparison_writes_table_figures_and_resumes(self):
        root = self.create_tempdir().full_path
        runs, out = os.path.join(root, "runs"), os.path.join(root, "results")
        variants = [
            reproduce.Variant("natural", "natural", note="clean", candidate=True),
            reproduce.Variant(
                "sq_noisy_sign", "sq_noisy", {"noise": "sign"}, "quantizer", candidate=True
            ),
            reproduce.Variant("pgd_at", "pgd_at", {"pgd_steps": 3, "pgd_step_size": 0.1}, "AT"),
        ]
        kwargs = dict(
            dataset="mnist",
            epochs=2,
            runs_dir=runs,
            output_dir=out,
            num_examples=40,
            attacks=("fgsm", "pgd", "bpda_identity", "transfer"),
            settings=evaluation.AttackSettings(pgd_steps=5),
            train_examples=600,
            holdout_examples=40,
            curve_examples=20,
            timing_steps=5,
            timing_repeats=3,
            log=lambda line: None,
        )
        # By default the test set attacks only the selected candidate (and the
        # variants that are not candidates).
        first = _run(variants, **kwargs)
        selected = first["selection"]["selected"]
        (unselected,) = {"natural", "sq_noisy_sign"} - {selected}
        first_rows = {r["name"]: r for r in first["rows"]}
        self.assertEqual(first["selection"]["untested"], [unselected])
        self.assertFalse(first_rows[unselected]["tested"])
        self.assertIsNone(first_rows[unselected]["worst_case_accuracy"])
        self.assertTrue(first_rows[selected]["tested"])
        self.assertFalse(
            os.path.exists(os.path.join(runs, unselected, "evaluation", "report.json"))
        )
        with open(os.path.join(out, "mnist.md")) as f:
            self.assertIn("not attacked on the test set", f.read())

        # --test_unselected attacks the rest, reusing every trained model.
        kwargs["test_unselected"] = True
        lines = []
        payload = _run(variants, **{**kwargs, "log": lines.append})
        self.assertFalse(any(line.startswith("Epoch") for line in lines))
        attacked = [line for line in lines if "attacking" in line]
        self.assertEqual(attacked, [f"== {unselected}: attacking 40 test images"])
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
        # PGD-3 adversarial training costs more per step than natural training
        # (~4x the gradient computations), timed round-robin.
        self.assertGreater(rows["natural"]["speedup_per_epoch_vs_pgd_at"], 1.5)
        # The wall-clock figure is the ratio of the runs' seconds per epoch
        # (on 600 images an epoch is mostly fixed costs, so its size is not
        # asserted).
        self.assertAlmostEqual(
            rows["natural"]["wall_speedup_per_epoch_vs_pgd_at"],
            rows["pgd_at"]["seconds_per_epoch"] / rows["natural"]["seconds_per_epoch"],
        )

        # Candidates are ranked on held-out training images, never the test set.
        selection = payload["selection"]
        self.assertEqual(selection["split"], "train[600:640]")
        self.assertEqual(selection["num_examples"], 40)
        held = selection["worst_case_accuracy"]
        self.assertEqual(set(held), {"natural", "sq_noisy_sign"})
        self.assertEqual(held[selection["selected"]], max(held.values()))
        self.assertEqual(rows["natural"]["holdout_worst_case_accuracy"], held["natural"])
        self.assertNotIn("holdout_worst_case_accuracy", rows["pgd_at"])
        with open(os.path.join(runs, "natural", "evaluation", "holdout_report.json")) as f:
            self.assertEqual(json.load(f)["split"], "train[600:640]")

        # The reference is scored after each epoch from its saved weights.
        curve = payload["reference_curve"]
        self.assertEqual([p["epoch"] for p in curve["points"]], [1, 2])
        seconds = [p["train_seconds"] for p in curve["points"]]
        self.assertLess(seconds[0], seconds[1])
        self.assertAlmostEqual(seconds[1], rows["pgd_at"]["total_train_seconds"], places=6)
        for name in ("pgd_at", "natural", "sq_noisy_sign"):
            self.assertTrue(os.path.exists(os.path.join(runs, name, "epochs")), name)
        ref_step = rows["pgd_at"]["seconds_per_step"]
        for r in rows.values():
            reach = reproduce.epochs_to_reach(curve, r["worst_case_accuracy"])
            self.assertEqual(r["pgd_at_epochs_to_reach"], reach)
            if reach is not None:
                self.assertAlmostEqual(
                    r["speedup_to_reach_vs_pgd_at"],
                    reach * ref_step / (r["epochs"] * r["seconds_per_step"]),
                )

        # The candidates and the reference are also scored after each epoch on
        # the held-out images; the quantized one through the BPDA stand-in.
        curves = payload["holdout_curves"]
        self.assertEqual(list(curves), ["natural", "sq_noisy_sign", "pgd_at"])
        for name, held_curve in curves.items():
            self.assertEqual(held_curve["split"], "train[600:640]")
            self.assertEqual([p["epoch"] for p in held_curve["points"]], [1, 2], name)
        self.assertEqual(curves["natural"]["attacks"], ["apgd_ce", "apgd_dlr"])
        self.assertEqual(
            curves["sq_noisy_sign"]["attacks"],
            ["bpda_identity:apgd_ce", "bpda_identity:apgd_dlr"],
        )
        for name in ("natural", "sq_noisy_sign"):
            final = curves[name]["points"][-1]["robust_accuracy"]
            own = reproduce.epochs_to_reach(curves[name], final)
            reach = reproduce.epochs_to_reach(curves["pgd_at"], final)
            self.assertEqual(rows[name]["holdout_epochs_to_reach"], own)
            self.assertEqual(rows[name]["holdout_pgd_at_epochs_to_reach"], reach)
            expected = reach * ref_step / (own * rows[name]["seconds_per_step"]) if reach else None
            self.assertAlmostEqual(rows[name]["holdout_speedup_to_reach_vs_pgd_at"], expected)
        self.assertNotIn("holdout_speedup_to_reach_vs_pgd_at", rows["pgd_at"])

        with open(os.path.join(runs, "step_costs.json")) as f:
            self.assertEqual(
                json.load(f)["seconds_per_step"]["natural"], rows["natural"]["seconds_per_step"]
            )

        with open(os.path.join(out, "mnist.md")) as f:
            table = f.read()
        self.assertIn("| sq_noisy_sign |", table)
        self.assertIn("held-out worst case", table)
        self.assertIn(f"selected: `{selection['selected']}`", table)
        self.assertIn("Held-out robust accuracy after each epoch", table)
        self.assertIn("- `sq_noisy_sign`: 1: ", table)
        self.assertEqual(set(payload["figures"]), {"tradeoff", "sweep", "grad_l1"})
        for figure in payload["figures"].values():
            self.assertGreater(os.path.getsize(figure), 1000)

        # A rerun neither retrains nor re-attacks.
        report = os.path.join(runs, "natural", "evaluation", "report.json")
        stamp = os.path.getmtime(report)
        lines = []
        again = _run(variants, **{**kwargs, "log": lines.append})
        self.assertFalse(any(line.startswith("Epoch") for line in lines))
        self.assertFalse(any("attacking" in line for line in lines))
        self.assertEqual(os.path.getmtime(report), stamp)
        with open(os.path.join(out, "mnist.json")) as f:
            self.assertEqual(json.load(f)["rows"], json.loads(json.dumps(again["rows"])))

        # A selection with other attacks than the cached held-out reports is
        # refused; --select_only stops after the selection.
        with self.assertRaisesRegex(ValueError, "Delete it"):
            _run(variants, **{**kwargs, "selection_attacks": ("fgsm",)})
        lines = []
        selected_only = _run(
            variants,
            **{**kwargs, "output_dir": os.path.join(root, "selection"), "log": lines.append},
            selection_attacks=kwargs["attacks"],
            select_only=True,
        )
        self.assertFalse(any("attacking" in line for line in lines))
        self.assertTrue(selected_only["select_only"])
        for key in ("selected", "worst_case_accuracy"):
            self.assertEqual(selected_only["selection"][key], again["selection"][key])
        self.assertIsNone(again["selection"]["attacks"])
        self.assertEqual(selected_only["selection"]["attacks"], list(kwargs["attacks"]))
        self.assertEqual(selected_only["selection"]["tested_candidates"], [])
        self.assertFalse(any(r["tested"] for r in selected_only["rows"]))
        self.assertIsNone(selected_only["reference_curve"])
        self.assertEqual(set(selected_only["figures"]), {"grad_l1"})

    def test_a_variant_can_set_its_own_epochs(self):
        runs = self.create_tempdir().full_path
        workspace = stages.Workspace("mnist", runs, None, "float32", "float32", lambda _: None)
        short = reproduce.Variant("short", "natural", {"epochs": 1})
        trained = stages.train_all([short], workspace, epochs=3, seed=0, train_examples=256)
        self.assertEqual(trained["short"].results["epochs_done"], 1)
        self.assertLen(trained["short"].history, 1)

    def test_duplicate_names_are_refused(self):
        v = reproduce.Variant("a", "natural")
        with self.assertRaisesRegex(ValueError, "unique"):
            reproduce.run(
                [v, v],
                reproduce.ComparisonConfig(
                    dataset="mnist", epochs=1, runs_dir="x", output_dir="y", num_examples=1
                ),
            )


if __name__ == "__main__":
    absltest.main()
