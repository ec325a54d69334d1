"""Tests for sq_keras.training.loop: short real trainings on MNIST subsets."""

import glob
import json
import os
import shutil
from unittest import mock

import keras
import numpy as np
import tensorflow as tf
from absl.testing import absltest
from absl.testing import parameterized
from tensorboard.backend.event_processing import event_accumulator

from sq_keras import data
from sq_keras import provenance
from sq_keras import training
from sq_keras.data import datasets
from tests.testing_utils import write_fake_dataset
from tests.training.fixtures import small_config as _config


def _scalars(model_dir):
    acc = event_accumulator.EventAccumulator(
        os.path.join(model_dir, "logs"), size_guidance={"tensors": 0, "histograms": 0}
    )
    acc.Reload()
    return acc


def _file_bytes(model_dir, *names):
    contents = []
    for name in names:
        with open(os.path.join(model_dir, name), "rb") as f:
            contents.append(f.read())
    return contents


class TrainTest(parameterized.TestCase):
    def test_natural_training_learns_and_writes_outputs(self):
        model_dir = self.create_tempdir().full_path
        lines = []
        results = training.train(
            _config(model_dir, method="natural", epochs=2, train_examples=2000),
            log=lines.append,
        )
        self.assertEqual(results["epochs_done"], 2)
        self.assertGreater(results["test_accuracy"], 0.85)
        self.assertLen(results["seconds_per_epoch"], 2)
        self.assertEqual(results["thresholds"], [])
        for name in ("config.json", "results.json", "history.json", "model.keras"):
            self.assertTrue(os.path.exists(os.path.join(model_dir, name)), name)
        with open(os.path.join(model_dir, "config.json")) as f:
            config = json.load(f)
        self.assertEqual(config["method"], "natural")
        self.assertEqual(config["eps"], 0.3)
        self.assertEqual(config["noise_scale"], 0.3)
        self.assertIn("tensorflow", config["environment"])
        # The machine record names the CPU model, as the benchmarks' do.
        self.assertEqual(config["environment"]["machine"], provenance.machine_description())
        if os.path.exists("/proc/cpuinfo"):
            with open("/proc/cpuinfo") as f:
                cpus = [ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")]
            if cpus:
                self.assertIn(f", {cpus[0]}, ", config["environment"]["machine"])
        loaded = keras.models.load_model(os.path.join(model_dir, "model.keras"))
        self.assertEqual(loaded.count_params(), 3274634)
        # One summary line per epoch, whatever the output is.
        epoch_lines = [line for line in lines if line.startswith("Epoch ")]
        self.assertLen(epoch_lines, 2)
        for number, line in enumerate(epoch_lines, start=1):
            self.assertRegex(
                line, rf"^Epoch {number}/2: [\d.]+s  train loss [\d.]+  .*test acc 0\.\d+  "
            )

    def test_sq_noisy_logs_gradient_norms_alpha_and_thresholds(self):
        model_dir = self.create_tempdir().full_path
        results = training.train(
            _config(model_dir, method="sq_noisy", epochs=2, alpha_start=10.0, alpha_end=40.0)
        )
        self.assertEqual(results["alpha"], [40.0])
        (thresholds,) = results["thresholds"]
        self.assertLen(thresholds, 1)
        self.assertTrue(0.0 < thresholds[0] < 1.0)
        acc = _scalars(model_dir)
        tags = acc.Tags()
        grad_tags = [t for t in tags["tensors"] if "grad_l1" in t]
        self.assertEqual(grad_tags, ["input_gradient/grad_l1"])
        events = acc.Tensors("input_gradient/grad_l1")
        self.assertEqual([e.step for e in events], [1, 2])
        values = [float(tf.make_ndarray(e.tensor_proto)) for e in events]
        self.assertTrue(all(v > 0 for v in values))
        alphas = [float(tf.make_ndarray(e.tensor_proto)) for e in acc.Tensors("quantizer_0/alpha")]
        np.testing.assert_allclose(alphas, [10.0, 40.0], rtol=1e-6)
        self.assertIn("quantizer_0/thresholds", tags["tensors"])
        for tag in ("train/loss", "train/accuracy", "test/accuracy"):
            self.assertIn(tag, tags["tensors"])

    def test_rerun_resumes_from_last_epoch(self):
        model_dir = self.create_tempdir().full_path
        export_dir = os.path.join(model_dir, "export")
        first = training.train(_config(model_dir, method="noisy", epochs=1, export_dir=export_dir))
        lines = []
        second = training.train(
            _config(model_dir, method="noisy", epochs=2, export_dir=export_dir),
            log=lines.append,
        )
        # Each run that trained exports a new version, as TF Serving expects.
        self.assertEqual(first["export_path"], os.path.join(export_dir, "1"))
        self.assertEqual(second["export_path"], os.path.join(export_dir, "2"))
        self.assertTrue(any(line.startswith("Resumed from") for line in lines))
        self.assertEqual(second["epochs_done"], 2)
        with open(os.path.join(model_dir, "history.json")) as f:
            history = json.load(f)
        self.assertEqual([h["epoch"] for h in history], [1, 2])
        # Epoch 1 was not trained again.
        self.assertEqual(history[0]["seconds"], first["seconds_per_epoch"][0])
        self.assertEqual(sum("Epoch " in line for line in lines), 1)
        # A finished run rerun as is trains nothing more and keeps its files:
        # the model file's bytes (which resumable evaluations digest) too.
        outputs = _file_bytes(model_dir, "model.keras", "results.json")
        lines = []
        third = training.train(
            _config(model_dir, method="noisy", epochs=2, export_dir=export_dir),
            log=lines.append,
        )
        self.assertFalse(any("Epoch " in line for line in lines))
        self.assertEqual(sorted(os.listdir(export_dir)), ["1", "2"])
        self.assertEqual(third["export_path"], second["export_path"])
        self.assertEqual(_file_bytes(model_dir, "model.keras", "results.json"), outputs)
        self.assertEqual(third, second)
        self.assertLen(glob.glob(os.path.join(model_dir, "checkpoints", "ckpt-*.index")), 2)
        # It says so, naming the export that serves it.
        self.assertRegex(
            lines[-1], f"already finished after 2 epochs .*SavedModel is {second['export_path']}"
        )
        # Fewer epochs than it trained are refused, and nothing changes.
        outputs = _file_bytes(model_dir, "model.keras", "results.json", "config.json")
        with self.assertRaisesRegex(
            training.TrainingError, "already trained 2 epochs; --epochs=1 asks for fewer"
        ):
            training.train(_config(model_dir, method="noisy", epochs=1, export_dir=export_dir))
        self.assertEqual(sorted(os.listdir(export_dir)), ["1", "2"])
        self.assertEqual(
            _file_bytes(model_dir, "model.keras", "results.json", "config.json"), outputs
        )

    def test_finished_run_without_export_exports_when_asked_and_keeps_its_model(self):
        model_dir = self.create_tempdir().full_path
        export_dir = os.path.join(model_dir, "export")
        first = training.train(_config(model_dir, method="natural", epochs=1))
        self.assertIsNone(first["export_path"])
        model_bytes = _file_bytes(model_dir, "model.keras")
        lines = []
        second = training.train(
            _config(model_dir, method="natural", epochs=1, export_dir=export_dir),
            log=lines.append,
        )
        self.assertFalse(any("Epoch " in line for line in lines))
        self.assertEqual(second["export_path"], os.path.join(export_dir, "1"))
        self.assertEqual(_file_bytes(model_dir, "model.keras"), model_bytes)
        with open(os.path.join(model_dir, "results.json")) as f:
            self.assertEqual(json.load(f)["export_path"], second["export_path"])
        # The export serves the finished run's model.
        raw = np.random.default_rng(0).integers(0, 256, (4, 28, 28, 1), dtype=np.uint8)
        served = tf.saved_model.load(second["export_path"])
        out = served.signatures["serve_uint8"](images=tf.constant(raw))
        model = keras.models.load_model(os.path.join(model_dir, "model.keras"))
        expected = model.predict(raw.astype(np.float32) / 255.0, verbose=0)
        np.testing.assert_allclose(out["logits"], expected, rtol=1e-3, atol=1e-3)

    def test_finished_run_exports_again_where_its_export_is_missing(self):
        model_dir = self.create_tempdir().full_path
        export_dir = os.path.join(model_dir, "export")
        first = training.train(
            _config(model_dir, method="natural", epochs=1, export_dir=export_dir)
        )
        model_bytes = _file_bytes(model_dir, "model.keras")
        shutil.rmtree(first["export_path"])  # Deleted by hand.
        again = training.train(
            _config(model_dir, method="natural", epochs=1, export_dir=export_dir)
        )
        self.assertEqual(again["export_path"], os.path.join(export_dir, "1"))
        self.assertTrue(os.path.isdir(again["export_path"]))
        # Asked for another export_dir, it exports there too; nothing is trained or saved.
        other = os.path.join(model_dir, "other_export")
        lines = []
        moved = training.train(
            _config(model_dir, method="natural", epochs=1, export_dir=other), log=lines.append
        )
        self.assertEqual(moved["export_path"], os.path.join(other, "1"))
        self.assertTrue(os.path.isdir(moved["export_path"]))
        self.assertFalse(any("Epoch " in line for line in lines))
        self.assertEqual(_file_bytes(model_dir, "model.keras"), model_bytes)

    def test_longer_run_killed_before_saving_its_model_is_finished_on_rerun(self):
        model_dir = self.create_tempdir().full_path
        export_dir = os.path.join(model_dir, "export")
        training.train(_config(model_dir, method="natural", epochs=1, export_dir=export_dir))
        longer = _config(model_dir, method="natural", epochs=2, export_dir=export_dir)
        # Dies after its last checkpoint, leaving the one-epoch run's results.
        with mock.patch.object(training.RunDir, "save_model", side_effect=RuntimeError("killed")):
            with self.assertRaisesRegex(RuntimeError, "killed"):
                training.train(longer)
        results = training.train(longer)
        self.assertEqual(results["epochs_done"], 2)
        self.assertEqual(results["export_path"], os.path.join(export_dir, "2"))
        with open(os.path.join(model_dir, "results.json")) as f:
            self.assertEqual(json.load(f)["epochs_done"], 2)

    def test_resumed_run_keeps_the_environment_it_was_started_in(self):
        model_dir = self.create_tempdir().full_path
        training.train(_config(model_dir, method="natural", epochs=1))
        path = os.path.join(model_dir, "config.json")
        with open(path) as f:
            record = json.load(f)
        record["environment"]["git_commit"] = "started-here"
        with open(path, "w") as f:
            json.dump(record, f)
        for _ in range(2):  # Resumed, then rerun as is.
            training.train(_config(model_dir, method="natural", epochs=2))
        with open(path) as f:
            record = json.load(f)
        self.assertEqual(record["environment"]["git_commit"], "started-here")
        self.assertEqual(record["resumed_environments"], [provenance.environment()])

    def test_different_run_in_model_dir_is_refused_unless_overwrite(self):
        model_dir = self.create_tempdir().full_path
        training.train(_config(model_dir, method="natural", train_examples=200))
        with self.assertRaisesRegex(training.TrainingError, "method: was 'natural', now 'noisy'"):
            training.train(_config(model_dir, method="noisy", train_examples=200))
        lines = []
        results = training.train(
            _config(model_dir, method="noisy", train_examples=200, overwrite=True),
            log=lines.append,
        )
        self.assertFalse(any(line.startswith("Resumed") for line in lines))
        self.assertEqual(results["method"], "noisy")

    def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(self):
        model_dir = self.create_tempdir().full_path
        steps_per_epoch = 10  # 1000 examples, batch 100

        def diverging_step(model, optimizer, config, strategy):
            step = training.build_standard_step(model, optimizer, config, strategy)
            calls = []

            def run(images, labels):
                calls.append(1)
                loss_sum, correct, n = step(images, labels)
                if len(calls) == steps_per_epoch + 3:  # epoch 2, step 3
                    loss_sum = loss_sum * float("nan")
                return loss_sum, correct, n

            return run

        method = training.Method(False, False, "diverging", "test")
        with mock.patch.dict(training.STEP_BUILDERS, {"diverging": diverging_step}):
            with mock.patch.dict(training.METHODS, {"diverging": method}):
                with self.assertRaisesRegex(
                    training.TrainingError, "Loss became nan at epoch 2, step 3.*ckpt-1"
                ):
                    training.train(_config(model_dir, method="diverging", epochs=3))
        checkpoints = tf.train.get_checkpoint_state(os.path.join(model_dir, "checkpoints"))
        self.assertTrue(checkpoints.model_checkpoint_path.endswith("ckpt-1"))
        self.assertFalse(os.path.exists(os.path.join(model_dir, "results.json")))
        # The kept checkpoint holds finite weights, and a rerun resumes from it.
        lines = []
        with mock.patch.dict(training.METHODS, {"diverging": training.METHODS["natural"]}):
            results = training.train(
                _config(model_dir, method="diverging", epochs=2), log=lines.append
            )
        self.assertIn("Resumed from", lines[0])
        self.assertTrue(np.isfinite(results["train_loss"]))
        self.assertGreater(results["test_accuracy"], 0.7)

    def test_same_seed_gives_identical_results(self):
        def run(seed):
            return training.train(
                _config(
                    self.create_tempdir().full_path,
                    method="sq_noisy",
                    seed=seed,
                    epochs=2,
                    deterministic=True,
                )
            )

        keys = ("test_accuracy", "train_loss", "train_accuracy", "grad_l1", "thresholds")
        a, b, c = run(5), run(5), run(6)
        self.assertEqual({k: a[k] for k in keys}, {k: b[k] for k in keys})
        self.assertNotEqual(a["train_loss"], c["train_loss"])

    def test_every_method_trains_with_finite_loss(self):
        for method in training.METHODS:
            with self.subTest(method=method):
                results = training.train(
                    _config(
                        self.create_tempdir().full_path,
                        method=method,
                        train_examples=200,
                        pgd_steps=3,
                        adv_fraction=0.5,
                    )
                )
                self.assertTrue(np.isfinite(results["train_loss"]))
                self.assertEqual(bool(results["thresholds"]), training.METHODS[method].quantizer)

    @parameterized.named_parameters(
        ("int8_memory", {"free_memory_dtype": "int8"}, "1000 x 28x28x1 int8 = 0.8 MB", "int8"),
        ("no_memory", {"free_memory": "none", "free_replays": 2}, "memory: none", None),
    )
    def test_free_training_logs_and_checkpoints_its_memory(self, settings, logged, stored):
        lines = []
        model_dir = self.create_tempdir().full_path
        results = training.train(_config(model_dir, method="sq_free", **settings), log=lines.append)
        self.assertTrue(np.isfinite(results["train_loss"]))
        self.assertTrue(any(logged in line for line in lines), lines)
        checkpoint = tf.train.load_checkpoint(os.path.join(model_dir, "checkpoints"))
        shapes = checkpoint.get_variable_to_dtype_map()
        key = "perturbations/.ATTRIBUTES/VARIABLE_VALUE"
        if stored is None:
            self.assertNotIn(key, shapes)
        else:
            self.assertEqual(shapes[key].name, stored)
            self.assertEqual(checkpoint.get_tensor(key).shape, (1000, 28, 28, 1))

    def test_adversarial_and_penalised_methods_do_what_they_claim(self):
        def run(method, **kwargs):
            return training.train(
                _config(
                    self.create_tempdir().full_path,
                    method=method,
                    epochs=2,
                    train_examples=1000,
                    pgd_steps=5,
                    pgd_step_size=0.1,
                    **kwargs,
                )
            )

        natural = run("natural")
        pgd_at = run("pgd_at")
        gradnorm = run("gradnorm", gradnorm_weight=3.0)
        ramped = run("pgd_at", eps_warmup_steps=1000)
        # PGD-AT's training batches are adversarial: much higher loss on them.
        self.assertGreater(pgd_at["train_loss"], natural["train_loss"] + 0.5)
        # Over the first of 1000 warm-up steps eps is tiny: the batches are
        # nearly clean.
        self.assertLess(ramped["train_loss"], pgd_at["train_loss"] - 0.5)
        # The penalty shrinks the input-gradient norm it penalises.
        self.assertLess(gradnorm["grad_l1"], 0.5 * natural["grad_l1"])


class OtherDatasetsTest(parameterized.TestCase):
    @parameterized.named_parameters(
        ("cifar10", "cifar10", "crop_flip"), ("svhn", "svhn_cropped", "crop")
    )
    def test_pipeline_end_to_end_on_generated_files(self, name, augment):
        root = self.create_tempdir().full_path
        info, splits = write_fake_dataset(name, root, num_train=64, num_test=32)
        model_dir = os.path.join(root, "run")
        with mock.patch.dict(datasets.DATASETS, {name: info}):
            results = training.train(
                _config(
                    model_dir,
                    dataset=name,
                    data_dir=root,
                    train_examples=None,
                    batch_size=32,
                    grad_examples=16,
                    export_dir=os.path.join(root, "export"),
                )
            )
        with open(os.path.join(model_dir, "config.json")) as f:
            config = json.load(f)
        self.assertEqual(config["model"], "preact_resnet18")
        self.assertEqual(config["augment"], augment)
        self.assertAlmostEqual(config["eps"], 8 / 255)
        self.assertEqual(results["epochs_done"], 1)
        self.assertLen(results["thresholds"], 1)
        served = tf.saved_model.load(results["export_path"])
        raw = splits["test"][0]
        out = served.signatures["serve_uint8"](images=tf.constant(raw))
        model = keras.models.load_model(os.path.join(model_dir, "model.keras"))
        expected = model.predict(raw.astype(np.float32) / 255.0, verbose=0)
        np.testing.assert_allclose(out["logits"], expected, rtol=1e-3, atol=1e-3)


class ImageNetTest(parameterized.TestCase):
    def test_fine_tuning_resnet50_on_mock_imagenet(self):
        import tensorflow_datasets as tfds

        root = self.create_tempdir().full_path
        manual = os.path.join(root, "imagenet2012")
        os.makedirs(manual)
        for name in ("ILSVRC2012_img_train.tar", "ILSVRC2012_img_val.tar"):
            open(os.path.join(manual, name), "wb").close()
        # Stand-in "pretrained" weights: a ResNet50 with its own random init.
        keras.utils.set_random_seed(123)
        pretrained = keras.applications.ResNet50(
            weights=None, input_shape=(224, 224, 3), classifier_activation=None
        )
        weights = os.path.join(root, "resnet50.weights.h5")
        pretrained.save_weights(weights)
        model_dir = os.path.join(root, "run")
        with tfds.testing.mock_data(num_examples=8, policy=tfds.testing.MockPolicy.USE_CODE):
            results = training.train(
                _config(
                    model_dir,
                    dataset="imagenet2012",
                    method="sq_noisy",
                    data_dir=root,
                    train_examples=None,
                    batch_size=4,
                    grad_examples=4,
                    init_weights=weights,
                    export_dir=os.path.join(root, "export"),
                )
            )
        self.assertEqual(results["epochs_done"], 1)
        self.assertTrue(np.isfinite(results["train_loss"]))
        self.assertLen(results["thresholds"][0], 15)
        with open(os.path.join(model_dir, "config.json")) as f:
            config = json.load(f)
        self.assertEqual(config["model"], "resnet50")
        self.assertAlmostEqual(config["eps"], 4 / 255)
        # Fine-tuned from the given weights: one Adam step (lr 1e-3) away from them.
        tuned = keras.models.load_model(os.path.join(model_dir, "model.keras"))
        kernel = tuned.get_layer("resnet50").get_layer("conv1_conv").kernel.numpy()
        start = pretrained.get_layer("conv1_conv").kernel.numpy()
        self.assertLess(np.abs(kernel - start).max(), 0.01)
        served = tf.saved_model.load(results["export_path"])
        raw = np.random.default_rng(0).integers(0, 256, (2, 224, 224, 3), dtype=np.uint8)
        out = served.signatures["serve_uint8"](images=tf.constant(raw))
        self.assertEqual(out["probabilities"].shape, (2, 1000))
        with open(
            os.path.join(results["export_path"], "assets.extra", "sq_keras_metadata.json")
        ) as f:
            self.assertEqual(json.load(f)["class_names"][0], "n01440764")

    def test_missing_manual_download_names_the_files(self):
        root = self.create_tempdir().full_path
        with self.assertRaisesRegex(data.DataError, "ILSVRC2012_img_train.tar"):
            data.load_stream("imagenet2012", "train", data_dir=root)
        with self.assertRaisesRegex(ValueError, "load_stream"):
            data.load_arrays("imagenet2012", "train", data_dir=root)


if __name__ == "__main__":
    absltest.main()
