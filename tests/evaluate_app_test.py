"""End-to-end tests of `python -m apps.evaluate`, run as a user would."""

import atexit
import functools
import json
import os
import shutil
import tempfile

import keras
from absl.testing import absltest
from absl.testing import parameterized

from sq_keras import evaluation
from sq_keras.layers import SoftQuantization
from tests import testing_utils


@functools.lru_cache(maxsize=None)
def saved_models():
    """Saves a tiny quantized model and a tiny natural surrogate as .keras."""
    directory = tempfile.mkdtemp(prefix="evaluate_app_test-")
    atexit.register(shutil.rmtree, directory, ignore_errors=True)
    images, labels = evaluation.load_examples(
        "mnist", "train", num_examples=3000, data_dir=os.environ.get("SQ_KERAS_DATA_DIR")
    )
    paths = {}
    for kind in ("quantized", "natural"):
        keras.utils.set_random_seed(0)
        inputs = keras.Input((28, 28, 1), name="images")
        x = inputs
        if kind == "quantized":
            x = SoftQuantization(num_thresholds=1, alpha=20.0, name="soft_quantization")(x)
        x = keras.layers.Conv2D(8, 3, strides=2, activation="relu")(x)
        x = keras.layers.Flatten()(x)
        model = keras.Model(inputs, keras.layers.Dense(10, name="logits")(x))
        model.compile(
            optimizer="adam",
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        )
        model.fit(images, labels, batch_size=64, epochs=1, verbose=0)
        model_dir = os.path.join(directory, kind)
        os.makedirs(model_dir)
        model.save(os.path.join(model_dir, "model.keras"))
        with open(os.path.join(model_dir, "config.json"), "w") as f:
            json.dump({"dataset": "mnist", "method": kind, "eps": 0.3, "seed": 0}, f)
        paths[kind] = model_dir
    return paths


def run_app(*flags):
    return testing_utils.run_app("apps.evaluate", *flags)


class EvaluateAppTest(parameterized.TestCase):
    def test_strong_preset_end_to_end(self):
        models = saved_models()
        out = self.create_tempdir().full_path
        output = os.path.join(out, "report.json")
        logdir = os.path.join(out, "tb")
        result = run_app(
            f"--model={models['quantized']}",
            f"--source_model={models['natural']}/model.keras",
            "--split=test[:200]",
            "--num_examples=60",
            "--eps=0.3,0.1",
            "--attacks=strong",
            "--pgd_steps=5",
            "--restarts=1",
            "--square_queries=30",
            "--batch_size=32",
            f"--output={output}",
            f"--logdir={logdir}",
            "--noprogress",
        )
        self.assertEqual(result.returncode, 0, result.stderr[-3000:])
        strong = evaluation.REGISTRY.resolve(
            ["strong"], target=evaluation.load_target(models["quantized"])
        )
        with open(output) as f:
            report = json.load(f)
        for key in (
            "clean_accuracy",
            "attacks",
            "worst_case_accuracy",
            "worst_case_accuracy_by_eps",
            "checks",
            "settings",
            "files",
        ):
            self.assertIn(key, report)
        self.assertEqual(report["num_examples"], 60)
        self.assertEqual(report["eps"], 0.3)
        self.assertEqual(report["eps_values"], [0.1, 0.3, 0.5])
        self.assertEqual(report["dataset"], "mnist")
        # Float32 attacks stay float32 on GPUs that would use TF32.
        self.assertIs(report["tensor_float_32"], False)
        # AutoAttack's gradient attacks through BPDA beside the plain ones.
        self.assertIn("bpda_identity:apgd_t", strong)
        self.assertIn("apgd_ce", strong)
        self.assertEqual(set(report["attacks"]), set(strong) | {evaluation.DOUBLED})
        self.assertFalse(report["worst_case_only"])
        for name in strong:
            results = report["attacks"][name]["results"]
            self.assertEqual(set(results), {"0.1", "0.3", "0.5"}, name)
            self.assertLessEqual(results["0.3"]["robust_accuracy"], report["clean_accuracy"])
            self.assertGreater(results["0.3"]["images_per_second"], 0)
        self.assertEqual(report["attacks"]["pgd"]["settings"]["num_steps"], 5)
        self.assertEqual(report["attacks"]["square"]["settings"]["max_queries"], 30)
        self.assertTrue(report["checks"]["bpda_run"]["passed"])
        for check in report["checks"].values():
            self.assertIn(check["passed"], (True, False, None))
        for key in ("sweep_plot", "examples_plot"):
            self.assertTrue(os.path.isfile(report["files"][key]))
        self.assertTrue(os.listdir(logdir))
        self.assertIn("worst case", result.stdout)
        self.assertIn("masking checks", result.stdout)
        # A sliced split cut short by --num_examples says so.
        self.assertIn("--num_examples=60 attacks the first 60 of the 200 images", result.stdout)
        for name, check in report["checks"].items():
            if check["passed"] is False:
                self.assertIn(f"Masking check {name} failed", result.stderr)

    def test_progress_in_a_log_file_is_plain_lines(self):
        output = os.path.join(self.create_tempdir().full_path, "report.json")
        result = run_app(
            f"--model={saved_models()['natural']}",
            "--num_examples=20",
            "--attacks=fgsm",
            "--eps=0.1",
            "--batch_size=10",
            f"--output={output}",
        )
        self.assertEqual(result.returncode, 0, result.stderr[-3000:])
        # The whole test split is not a slice: --num_examples cuts it without a note.
        self.assertNotIn("Note: --num_examples", result.stdout)
        # stdout is a pipe here, as when redirected to a log file.
        self.assertNotIn("\r", result.stdout)
        self.assertNotIn("\x1b", result.stdout)
        for line in ("fgsm eps=0.1: batch 1/2 (", "fgsm eps=0.5: batch 2/2 ("):
            self.assertIn(line, result.stdout)

    def test_autoattack_cascade_resumes_and_refuses_other_settings(self):
        output = os.path.join(self.create_tempdir().full_path, "report.json")
        flags = [
            f"--model={saved_models()['quantized']}",
            "--num_examples=24",
            "--attacks=autoattack",
            "--eps=0.3",
            "--noadd_large_eps",
            "--pgd_steps=5",
            "--square_queries=20",
            "--batch_size=8",
            f"--output={output}",
        ]
        first = run_app(*flags)
        self.assertEqual(first.returncode, 0, first.stderr[-3000:])
        with open(output) as f:
            report = json.load(f)
        self.assertTrue(report["worst_case_only"])
        self.assertEqual(
            list(report["attacks"]),
            ["bpda_identity:apgd_ce", "bpda_identity:apgd_t", "bpda_identity:fab_t", "square"],
        )
        square = report["attacks"]["square"]
        self.assertEqual(square["settings"]["max_queries"], 20)  # Given explicitly.
        self.assertEqual(square["results"]["0.3"]["robust_accuracy"], report["worst_case_accuracy"])
        self.assertLessEqual(
            square["results"]["0.3"]["attacked_examples"],
            report["attacks"]["bpda_identity:fab_t"]["results"]["0.3"]["attacked_examples"],
        )
        self.assertIn("robust after", first.stdout)
        self.assertIn("bpda_identity:apgd_ce eps=0.3: batch 2/", first.stdout)
        batches = os.path.join(os.path.dirname(output), "report_batches")
        self.assertIn("manifest.json", os.listdir(batches))
        refused = run_app(*flags, "--seed=1")
        self.assertNotEqual(refused.returncode, 0)
        self.assertIn("settings.seed: 0 -> 1", refused.stderr)
        self.assertIn("--overwrite", refused.stderr)
        again = run_app(*flags)
        self.assertEqual(again.returncode, 0, again.stderr[-3000:])
        for name in report["attacks"]:
            self.assertRegex(again.stdout, rf"{name} eps=0.3: (\d+)/\1 batches read from")
        self.assertNotIn("batch 1/", again.stdout)
        with open(output) as f:
            rerun = json.load(f)
        # The same report, but for the record of the run that wrote it (its date).
        first_run, second_run = report.pop("evaluated"), rerun.pop("evaluated")
        self.assertEqual(rerun, report)
        self.assertEqual(second_run["command"], first_run["command"])
        self.assertEqual(second_run["git_commit"], first_run["git_commit"])
        for record in (first_run, second_run):  # Started, then finished.
            self.assertLessEqual(record["date"], record["finished"])

    @parameterized.named_parameters(
        (
            "unknown_attack",
            ["--attacks=pgd,deepfool"],
            "Unknown attack 'deepfool'. Valid attacks: fgsm, pgd",
        ),
        ("eps_above_one", ["--eps=1.5"], "in [0, 1]"),
        ("negative_eps", ["--eps=-0.1"], "in [0, 1]"),
        ("zero_steps", ["--pgd_steps=0"], "--pgd_steps must be a positive integer"),
        ("zero_batch", ["--batch_size=0"], "--batch_size must be a positive integer"),
        ("negative_threads", ["--inter_op_threads=-1"], "--inter_op_threads must be >= 0"),
        ("missing_model", ["--model=/nonexistent/model.keras"], "does not exist"),
        (
            "model_for_another_dataset",
            ["--dataset=cifar10"],
            "takes images of shape (28, 28, 1) but cifar10 images are (32, 32, 3)",
        ),
    )
    def test_bad_flags_fail_with_a_clear_message(self, flags, message):
        model = (
            []
            if any(f.startswith("--model=") for f in flags)
            else [f"--model={saved_models()['natural']}"]
        )
        result = run_app(*model, *flags, "--num_examples=5", "--noprogress")
        self.assertNotEqual(result.returncode, 0)
        self.assertIn(message, result.stderr)


if __name__ == "__main__":
    absltest.main()
