"""Tests for attacking a comparison's saved runs: the headline cascades and
the suite's report of each variant, all resumable."""

import glob
import os

import keras
from absl.testing import absltest

from sq_keras import evaluation
from sq_keras import jsonio
from sq_keras import reproduce
from sq_keras.layers import SoftQuantization
from sq_keras.reproduce import attacking
from tests import testing_utils


def _quantized_run(runs_dir, name):
    """A small quantized CNN trained briefly on real MNIST, saved as a run."""
    images, labels = evaluation.load_examples("mnist", "train", num_examples=2000)
    keras.utils.set_random_seed(0)
    inputs = keras.Input((28, 28, 1))
    x = SoftQuantization(num_thresholds=1, alpha=20.0)(inputs)
    x = keras.layers.Conv2D(8, 3, strides=2, activation="relu")(x)
    x = keras.layers.Flatten()(x)
    model = keras.Model(inputs, keras.layers.Dense(10)(x))
    model.compile(
        optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    )
    model.fit(images, labels, batch_size=64, epochs=1, verbose=0)
    run_dir = os.path.join(runs_dir, name)
    os.makedirs(run_dir)
    model.save(os.path.join(run_dir, "model.keras"))
    jsonio.write_json(
        os.path.join(run_dir, "config.json"),
        {"dataset": "mnist", "eps": 0.3, "environment": {"git_commit": "abc"}},
    )
    return run_dir


class HeadlineTest(absltest.TestCase):
    def test_cascade_through_bpda_resumes_from_its_batches(self):
        runs = self.create_tempdir().full_path
        run_dir = _quantized_run(runs, "q")
        suite = attacking.Suite(
            "mnist", runs, ["strong"], attacking.DEFAULT_SETTINGS, None, "float32", print
        )
        examples = attacking.load_split("mnist", "test", num_examples=20)
        report = attacking.attack_headline(suite, "q", examples, eps=0.3)

        # AutoAttack's standard attacks, through BPDA on a quantized model,
        # each on the images every earlier one failed on.
        self.assertEqual(
            list(report["attacks"]),
            ["bpda_identity:apgd_ce", "bpda_identity:apgd_t", "bpda_identity:fab_t", "square"],
        )
        self.assertTrue(report["worst_case_only"])
        self.assertEqual((report["split"], report["num_examples"]), ("test", 20))
        self.assertEqual(report["settings"]["restarts"], 1)
        self.assertEqual(report["settings"]["square_queries"], 5000)
        after = [e["results"]["0.3"]["robust_accuracy"] for e in report["attacks"].values()]
        self.assertEqual(after, sorted(after, reverse=True))
        self.assertLessEqual(report["worst_case_accuracy"], report["clean_accuracy"])
        self.assertEqual(report["worst_case_accuracy"], after[-1])

        # The batches are described as apps.evaluate describes its runs.
        batches = os.path.join(runs, "q", "evaluation", "headline_autoattack_report_batches")
        manifest = jsonio.read_json(os.path.join(batches, "manifest.json"))
        target = evaluation.load_target(run_dir)
        described = evaluation.model_run(target, dataset="mnist", split="test", policy="float32")
        self.assertEqual({k: manifest[k] for k in described}, described)

        # Without its report, the stage reads every batch back: nothing is attacked.
        os.remove(os.path.join(runs, "q", "evaluation", "headline_autoattack_report.json"))
        files = sorted(glob.glob(os.path.join(batches, "*.npz")))
        self.assertNotEmpty(files)
        stamps = [os.path.getmtime(f) for f in files]
        again = attacking.attack_headline(suite, "q", examples, eps=0.3)
        self.assertEqual([os.path.getmtime(f) for f in files], stamps)
        self.assertEqual(again["worst_case_accuracy"], report["worst_case_accuracy"])

        # A cached report on other images is refused.
        with self.assertRaisesRegex(ValueError, "holds a report on 20 test images.*Delete it"):
            attacking.attack_headline(suite, "q", examples.first(10), eps=0.3)


class HeadlinePresetTest(absltest.TestCase):
    def test_batches_of_apps_evaluate_resume_a_preset_with_transfer(self):
        runs = self.create_tempdir().full_path
        run_dir = _quantized_run(runs, "q")
        source_dir = _quantized_run(runs, "pgd_at")
        out = self.create_tempdir().full_path
        result = testing_utils.run_app(
            "apps.evaluate",
            f"--model={run_dir}",
            "--attacks=transfer",
            f"--source_model={source_dir}",
            "--eps=0.3",
            "--noadd_large_eps",
            "--worst_case_only",
            "--num_examples=20",
            "--seed=0",
            f"--output={os.path.join(out, 'transfer.json')}",
            "--noprogress",
        )
        self.assertEqual(result.returncode, 0, result.stderr[-3000:])
        app_report = jsonio.read_json(os.path.join(out, "transfer.json"))
        filename = attacking.headline_filename("transfer")
        os.makedirs(os.path.join(run_dir, "evaluation"))
        batches = os.path.join(run_dir, "evaluation", os.path.splitext(filename)[0] + "_batches")
        os.rename(os.path.join(out, "transfer_batches"), batches)
        files = sorted(glob.glob(os.path.join(batches, "*.npz")))
        self.assertNotEmpty(files)
        stamps = [os.path.getmtime(f) for f in files]

        suite = attacking.Suite(
            "mnist",
            runs,
            ["strong"],
            attacking.DEFAULT_SETTINGS,
            evaluation.load_target(source_dir),
            "float32",
            print,
        )
        examples = attacking.load_split("mnist", "test", num_examples=20)
        report = attacking.attack_headline(suite, "q", examples, eps=0.3, preset="transfer")
        # Every batch was read back, none attacked again.
        self.assertEqual([os.path.getmtime(f) for f in files], stamps)
        self.assertEqual(report["worst_case_accuracy"], app_report["worst_case_accuracy"])
        self.assertEqual(report["robust_examples"], app_report["robust_examples"])
        self.assertEqual(list(report["eps_values"]), [0.3])
        self.assertEqual(report["requested_attacks"], ["transfer"])

        # The reference is the source: it is not attacked with itself.
        own = attacking.attack_headline(suite, "pgd_at", examples, eps=0.3, preset="transfer")
        self.assertIn("transfer", own["skipped"])
        manifest = jsonio.read_json(
            os.path.join(
                source_dir,
                "evaluation",
                os.path.splitext(filename)[0] + "_batches",
                "manifest.json",
            )
        )
        self.assertIsNone(manifest["source_model"])

        # A cached headline of another preset is refused.
        os.rename(
            os.path.join(run_dir, "evaluation", filename),
            os.path.join(run_dir, "evaluation", attacking.headline_filename("square")),
        )
        with self.assertRaisesRegex(ValueError, "report of the attacks transfer, not of square"):
            attacking.attack_headline(suite, "q", examples, eps=0.3, preset="square")


class VariantReportTest(absltest.TestCase):
    def test_suite_report_resumes_from_its_batches(self):
        runs = self.create_tempdir().full_path
        _quantized_run(runs, "q")
        source_dir = _quantized_run(runs, "src")
        settings = evaluation.AttackSettings(pgd_steps=10, restarts=1, seed=0)
        suite = attacking.Suite(
            "mnist",
            runs,
            ["pgd", "transfer"],
            settings,
            evaluation.load_target(source_dir),
            "float32",
            print,
        )
        examples = attacking.load_split("mnist", "test", num_examples=20)
        variant = reproduce.Variant("q", "sq_noisy")
        report = attacking.attack_variant(suite, variant, examples, eps_values=[0.3])
        self.assertEqual(list(report["eps_values"]), [0.3, 0.5])
        self.assertIn("transfer", report["attacks"])

        batches = os.path.join(runs, "q", "evaluation", "report_batches")
        files = sorted(glob.glob(os.path.join(batches, "*.npz")))
        self.assertNotEmpty(files)
        manifest = jsonio.read_json(os.path.join(batches, "manifest.json"))
        self.assertEqual(manifest["source_model"], source_dir)

        # The source's own reports appear beside its model while the
        # comparison runs; they do not make its batches another run's.
        jsonio.write_json(os.path.join(source_dir, "evaluation", "report.json"), {})
        os.remove(os.path.join(runs, "q", "evaluation", "report.json"))
        stamps = [os.path.getmtime(f) for f in files]
        again = attacking.attack_variant(suite, variant, examples, eps_values=[0.3])
        self.assertEqual([os.path.getmtime(f) for f in files], stamps)
        self.assertEqual(again["worst_case_accuracy_by_eps"], report["worst_case_accuracy_by_eps"])
        self.assertEqual(again["robust_examples"], report["robust_examples"])

        # A retrained source is another run: its batches are refused.
        os.remove(os.path.join(runs, "q", "evaluation", "report.json"))
        with open(os.path.join(source_dir, "model.keras"), "ab") as f:
            f.write(b"retrained")
        with self.assertRaisesRegex(evaluation.StoreMismatch, "source_model_sha256.*delete it"):
            attacking.attack_variant(suite, variant, examples, eps_values=[0.3])


if __name__ == "__main__":
    absltest.main()
