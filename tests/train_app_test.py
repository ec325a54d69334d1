"""End-to-end tests of `python -m apps.train`, run the way a user runs it."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import keras
import numpy as np
from absl.testing import absltest
from absl.testing import parameterized
from tensorboard.backend.event_processing import event_accumulator

import sq_keras.layers  # noqa: F401  (registers SoftQuantization for load_model)
from sq_keras import data
from tests.testing_utils import serve_in_fresh_process

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_train(*flags, timeout=600):
    return subprocess.run(
        [sys.executable, "-m", "apps.train", *flags],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


class TrainAppTest(parameterized.TestCase):
    def test_smoke_run_leaves_results_logs_and_a_servable_export(self):
        tmp = self.create_tempdir().full_path
        model_dir = os.path.join(tmp, "smoke")
        export_dir = os.path.join(tmp, "smoke_export")
        proc = run_train(
            "--dataset=mnist",
            "--epochs=1",
            "--train_examples=2000",
            f"--model_dir={model_dir}",
            f"--export_dir={export_dir}",
            "--seed=0",
        )
        self.assertEqual(proc.returncode, 0, proc.stderr[-3000:])
        # Not a terminal (a log file): one plain line per epoch, no redrawn progress bar.
        (epoch_line,) = [line for line in proc.stdout.splitlines() if "Epoch" in line]
        self.assertRegex(epoch_line, r"^Epoch 1/1 \(alpha [\d.]+\): .*train loss .*test acc 0\.\d+")
        self.assertNotIn("\r", proc.stdout)
        self.assertNotIn("\x1b[", proc.stdout)

        with open(os.path.join(model_dir, "results.json")) as f:
            results = json.load(f)
        with open(os.path.join(model_dir, "config.json")) as f:
            config = json.load(f)
        # The MNIST default: the recipe chosen on held-out data.
        self.assertEqual(
            (config["method"], config["free_step_size"], config["lr_schedule"]),
            ("sq_free", 0.375, "piecewise"),
        )
        self.assertEqual(config["train_examples"], 2000)
        self.assertEqual(results["epochs_done"], 1)
        self.assertGreater(results["test_accuracy"], 0.7)

        acc = event_accumulator.EventAccumulator(os.path.join(model_dir, "logs"))
        acc.Reload()
        self.assertTrue(any("grad_l1" in tag for tag in acc.Tags()["tensors"]))

        test_images, _ = data.load_arrays("mnist", "test[:200]")
        x = test_images.astype(np.float32) / 255.0
        model = keras.models.load_model(os.path.join(model_dir, "model.keras"))
        expected = model.predict(x, verbose=0)
        self.assertEqual(results["export_path"], os.path.join(export_dir, "1"))
        out = serve_in_fresh_process(results["export_path"], x, tmp)
        np.testing.assert_allclose(out["logits"], expected, rtol=1e-3, atol=1e-3)
        np.testing.assert_array_equal(out["logits"].argmax(-1), expected.argmax(-1))
        self.assertEqual(os.listdir(export_dir), ["1"])

    @parameterized.named_parameters(
        ("unknown_method", ["--method=pgd"], "should be one of .*pgd_at.*sq_noisy"),
        ("unknown_dataset", ["--dataset=imagenet"], "should be one of .*cifar10.*mnist"),
        ("eps_above_one", ["--eps=2"], "eps must be in \\[0, 1\\]"),
        ("negative_eps", ["--eps=-0.1"], "eps must be in \\[0, 1\\]"),
        ("zero_epochs", ["--epochs=0"], "epochs must be >= 1"),
        ("zero_batch", ["--batch_size=0"], "batch_size must be >= 1"),
        ("zero_pgd_steps", ["--method=pgd_at", "--pgd_steps=0"], "pgd_steps must be >= 1"),
        ("stray_argument", ["oops"], "Unexpected arguments: oops"),
    )
    def test_bad_flags_fail_with_a_clear_message(self, flags, pattern):
        tmp = self.create_tempdir().full_path
        proc = run_train(f"--model_dir={tmp}/run", *flags, timeout=120)
        self.assertNotEqual(proc.returncode, 0)
        self.assertRegex(proc.stdout + proc.stderr, pattern)
        self.assertNotIn("Traceback", proc.stderr)
        self.assertNotIn("Epoch 1", proc.stdout)  # refused before any training

    def test_corrupt_data_file_fails_fast(self):
        tmp = self.create_tempdir().full_path
        shared = os.path.join(os.environ["SQ_KERAS_DATA_DIR"], "mnist")
        os.makedirs(os.path.join(tmp, "mnist"))
        for name in os.listdir(shared):
            if name.endswith(".gz"):
                shutil.copy(os.path.join(shared, name), os.path.join(tmp, "mnist"))
        with open(os.path.join(tmp, "mnist", "train-labels-idx1-ubyte.gz"), "ab") as f:
            f.write(b"garbage")
        proc = run_train(f"--model_dir={tmp}/run", f"--data_dir={tmp}", timeout=120)
        self.assertNotEqual(proc.returncode, 0)
        self.assertIn("Corrupt", proc.stderr)
        self.assertIn(
            "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c", proc.stderr
        )
        self.assertNotIn("Traceback", proc.stderr)

    def test_model_dir_of_another_run_is_refused_unless_overwrite(self):
        tmp = self.create_tempdir().full_path
        common = [
            f"--model_dir={tmp}/run",
            f"--export_dir={tmp}/export",
            "--epochs=1",
            "--train_examples=200",
        ]
        self.assertEqual(run_train(*common, "--method=natural").returncode, 0)
        proc = run_train(*common, "--method=noisy")
        self.assertNotEqual(proc.returncode, 0)
        self.assertIn("holds a run with a different configuration", proc.stderr)
        self.assertIn("--overwrite", proc.stderr)
        self.assertEqual(run_train(*common, "--method=noisy", "--overwrite").returncode, 0)

    def test_rerun_of_a_finished_run_exports_nothing_and_fewer_epochs_are_refused(self):
        tmp = self.create_tempdir().full_path
        common = [
            "--method=natural",
            "--train_examples=200",
            "--eval_examples=100",
            f"--model_dir={tmp}/run",
            f"--export_dir={tmp}/export",
            "--export_policy=float32",
        ]
        self.assertEqual(run_train(*common, "--epochs=2").returncode, 0)
        export = os.path.join(tmp, "export", "1")
        with open(os.path.join(export, "assets.extra", "sq_keras_metadata.json")) as f:
            self.assertEqual(json.load(f)["policy"], "float32")
        same = run_train(*common, "--epochs=2")
        self.assertEqual(same.returncode, 0, same.stderr[-3000:])
        self.assertIn("already finished after 2 epochs", same.stdout)
        self.assertIn(f"its SavedModel is {export} (policy float32)", same.stdout)
        self.assertNotIn("Epoch ", same.stdout)
        fewer = run_train(*common, "--epochs=1")
        self.assertNotEqual(fewer.returncode, 0)
        self.assertIn("Error: ", fewer.stderr)
        self.assertIn("already trained 2 epochs; --epochs=1 asks for fewer", fewer.stderr)
        self.assertIn("--overwrite", fewer.stderr)
        self.assertNotIn("Traceback", fewer.stderr)
        # Serving sees one model: no second, identical version.
        self.assertEqual(os.listdir(os.path.join(tmp, "export")), ["1"])
        with open(os.path.join(tmp, "run", "config.json")) as f:
            self.assertEqual(json.load(f)["epochs"], 2)

    def test_sigkill_mid_epoch_then_rerun_matches_an_uninterrupted_run(self):
        tmp = self.create_tempdir().full_path
        flags = [
            "--method=sq_noisy",
            "--epochs=3",
            "--train_examples=6000",
            "--batch_size=50",
            # The per-epoch test pass is compared too; 1000 images suffice.
            "--eval_examples=1000",
            "--seed=3",
            "--deterministic",
            "--mixed_precision=float32",
        ]

        def run_flags(name):
            return [
                *flags,
                f"--model_dir={tmp}/{name}",
                f"--export_dir={tmp}/{name}_export",
            ]

        straight = run_train(*run_flags("straight"))
        self.assertEqual(straight.returncode, 0, straight.stderr[-3000:])

        model_dir = os.path.join(tmp, "killed")
        proc = subprocess.Popen(
            [sys.executable, "-m", "apps.train", *run_flags("killed")],
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        first = os.path.join(model_dir, "checkpoints", "ckpt-1.index")
        deadline = time.time() + 300
        while not os.path.exists(first) and proc.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)  # into epoch 2
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
        self.assertEqual(proc.returncode, -signal.SIGKILL)
        self.assertFalse(os.path.exists(os.path.join(model_dir, "results.json")))
        with open(os.path.join(model_dir, "history.json")) as f:
            self.assertLess(len(json.load(f)), 3)  # killed before the last epoch ended

        resumed = run_train(*run_flags("killed"))
        self.assertEqual(resumed.returncode, 0, resumed.stderr[-3000:])
        self.assertIn("Resumed from", resumed.stdout)
        self.assertNotIn("Epoch 1/3", resumed.stdout)

        def metrics(name):
            with open(os.path.join(tmp, name, "results.json")) as f:
                r = json.load(f)
            return {
                k: r[k]
                for k in (
                    "epochs_done",
                    "test_accuracy",
                    "train_loss",
                    "train_accuracy",
                    "grad_l1",
                    "thresholds",
                )
            }

        self.assertEqual(metrics("killed"), metrics("straight"))

    def test_diverging_loss_stops_with_a_clear_message(self):
        tmp = self.create_tempdir().full_path
        proc = run_train(
            "--method=natural",
            "--learning_rate=1e8",
            "--train_examples=500",
            f"--model_dir={tmp}/run",
            f"--export_dir={tmp}/export",
            timeout=120,
        )
        self.assertNotEqual(proc.returncode, 0)
        self.assertRegex(proc.stderr, r"Loss became (nan|inf) at epoch 1")
        self.assertIn("--learning_rate", proc.stderr)
        self.assertNotIn("Traceback", proc.stderr)
        self.assertFalse(os.path.exists(os.path.join(tmp, "run", "results.json")))
        self.assertFalse(os.path.exists(os.path.join(tmp, "export")))

    def test_unwritable_export_dir_fails_before_training(self):
        tmp = self.create_tempdir().full_path
        blocker = os.path.join(tmp, "file")
        with open(blocker, "w") as f:
            f.write("not a directory")
        proc = run_train(f"--model_dir={tmp}/run", f"--export_dir={blocker}/export", timeout=120)
        self.assertNotEqual(proc.returncode, 0)
        self.assertIn("--export_dir", proc.stderr)
        self.assertIn("not writable", proc.stderr)
        self.assertNotIn("Epoch 1", proc.stdout)

    def test_missing_data_files_fail_fast(self):
        tmp = self.create_tempdir().full_path
        proc = run_train(f"--model_dir={tmp}/run", f"--data_dir={tmp}", timeout=120)
        self.assertNotEqual(proc.returncode, 0)
        self.assertIn("train-images-idx3-ubyte.gz", proc.stderr)
        self.assertNotIn("Traceback", proc.stderr)
        self.assertNotIn("Epoch 1", proc.stdout)


if __name__ == "__main__":
    absltest.main()
