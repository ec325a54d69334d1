"""Tests for sq_keras.training.rundir: the run directory, with no model trained."""

import json
import os

import keras
import numpy as np
import tensorflow as tf
from absl.testing import absltest
from absl.testing import parameterized

from sq_keras import training
from sq_keras.training import rundir

_ENV_A = {"git_commit": "a", "tensorflow": "2.21.0"}
_ENV_B = {"git_commit": "b", "tensorflow": "2.21.0"}


def _config(model_dir, **kwargs):
    return training.TrainConfig(**{"model_dir": model_dir, "epochs": 2, **kwargs}).resolved()


def _read(path):
    with open(path) as f:
        return json.load(f)


def _forget_option(model_dir, key):
    """Removes `key` from the run's config.json, as a run from before the option left it."""
    path = os.path.join(model_dir, "config.json")
    record = _read(path)
    del record[key]
    with open(path, "w") as f:
        json.dump(record, f)


def _touch_outputs(model_dir):
    """Stand-ins for the files a finished run leaves."""
    os.makedirs(os.path.join(model_dir, "checkpoints"))
    os.makedirs(os.path.join(model_dir, "logs"))
    os.makedirs(os.path.join(model_dir, "memory_shard_0_of_2"))
    for name in ("history.json", "results.json", "model.keras", "checkpoints/ckpt-1.index"):
        with open(os.path.join(model_dir, name), "w") as f:
            f.write("{}")


def _checkpoint_epochs(model_dir, epochs):
    """Saves a checkpoint holding `epochs` as the training loop's epoch counter."""
    checkpoint = tf.train.Checkpoint(epoch=tf.Variable(epochs, dtype=tf.int64))
    directory = os.path.join(model_dir, "checkpoints")
    tf.train.CheckpointManager(checkpoint, directory, max_to_keep=2).save(epochs)


class PrepareModelDirTest(parameterized.TestCase):
    def test_first_run_records_config_and_environment(self):
        model_dir = os.path.join(self.create_tempdir().full_path, "new", "run")
        config = _config(model_dir)
        record = rundir.prepare_model_dir(config, environment=_ENV_A)
        written = _read(os.path.join(model_dir, "config.json"))
        self.assertEqual(written, record)
        self.assertEqual(written["environment"], _ENV_A)
        self.assertEqual(written["method"], "sq_free")
        self.assertNotIn("resumed_environments", written)

    def test_different_config_is_refused_with_every_difference_listed(self):
        model_dir = self.create_tempdir().full_path
        rundir.prepare_model_dir(_config(model_dir, method="natural"), environment=_ENV_A)
        _touch_outputs(model_dir)
        changed = _config(model_dir, method="noisy", seed=3)
        with self.assertRaises(training.TrainingError) as raised:
            rundir.prepare_model_dir(changed, environment=_ENV_A)
        message = str(raised.exception)
        self.assertIn(f"{model_dir} holds a run with a different configuration", message)
        self.assertIn("  method: was 'natural', now 'noisy'", message)
        self.assertIn("  seed: was 0, now 3", message)
        self.assertIn("--overwrite", message)
        # Nothing of the old run was touched.
        self.assertEqual(_read(os.path.join(model_dir, "config.json"))["method"], "natural")
        self.assertTrue(os.path.exists(os.path.join(model_dir, "results.json")))

    def test_resume_free_keys_do_not_count_as_a_different_run(self):
        model_dir = self.create_tempdir().full_path
        rundir.prepare_model_dir(_config(model_dir), environment=_ENV_A)
        later = _config(
            model_dir,
            epochs=5,
            export_dir="elsewhere",
            data_dir="/data",
            strategy="mirrored",
            keep_epoch_weights=True,
        )
        rundir.prepare_model_dir(later, environment=_ENV_A)
        self.assertEqual(_read(os.path.join(model_dir, "config.json"))["epochs"], 5)

    def test_option_missing_from_an_old_record_counts_as_its_default(self):
        model_dir = self.create_tempdir().full_path
        rundir.prepare_model_dir(_config(model_dir, method="sq_fgsm"), environment=_ENV_A)
        _forget_option(model_dir, "eps_warmup_steps")
        rundir.prepare_model_dir(_config(model_dir, method="sq_fgsm"), environment=_ENV_A)
        with self.assertRaisesRegex(training.TrainingError, "eps_warmup_steps: was 0, now 5"):
            rundir.prepare_model_dir(
                _config(model_dir, method="sq_fgsm", eps_warmup_steps=5), environment=_ENV_A
            )

    def test_run_recorded_before_schedules_existed_trained_at_a_constant_rate(self):
        model_dir = self.create_tempdir().full_path
        rundir.prepare_model_dir(_config(model_dir, lr_schedule="constant"), environment=_ENV_A)
        _forget_option(model_dir, "lr_schedule")
        rundir.prepare_model_dir(_config(model_dir, lr_schedule="constant"), environment=_ENV_A)
        # MNIST's default schedule is now piecewise: not what that run trained with.
        with self.assertRaisesRegex(training.TrainingError, "lr_schedule: was 'constant'"):
            rundir.prepare_model_dir(_config(model_dir), environment=_ENV_A)

    def test_overwrite_clears_the_old_runs_files(self):
        model_dir = self.create_tempdir().full_path
        rundir.prepare_model_dir(_config(model_dir, method="natural"), environment=_ENV_A)
        _touch_outputs(model_dir)
        keep = os.path.join(model_dir, "notes.txt")
        with open(keep, "w") as f:
            f.write("mine")
        rundir.prepare_model_dir(
            _config(model_dir, method="noisy", overwrite=True), environment=_ENV_B
        )
        self.assertEqual(sorted(os.listdir(model_dir)), ["config.json", "notes.txt"])
        record = _read(os.path.join(model_dir, "config.json"))
        self.assertEqual(record["method"], "noisy")
        # A new run: its own environment, no resumption history.
        self.assertEqual(record["environment"], _ENV_B)
        self.assertNotIn("resumed_environments", record)

    def test_overwrite_of_the_same_run_keeps_its_files(self):
        model_dir = self.create_tempdir().full_path
        rundir.prepare_model_dir(_config(model_dir), environment=_ENV_A)
        _touch_outputs(model_dir)
        rundir.prepare_model_dir(_config(model_dir, overwrite=True), environment=_ENV_A)
        self.assertTrue(os.path.exists(os.path.join(model_dir, "checkpoints", "ckpt-1.index")))

    def test_fewer_epochs_than_the_checkpoints_hold_are_refused_unless_overwrite(self):
        model_dir = self.create_tempdir().full_path
        rundir.prepare_model_dir(_config(model_dir, epochs=3), environment=_ENV_A)
        _touch_outputs(model_dir)
        _checkpoint_epochs(model_dir, 3)
        with self.assertRaises(training.TrainingError) as raised:
            rundir.prepare_model_dir(_config(model_dir, epochs=2), environment=_ENV_A)
        message = str(raised.exception)
        self.assertIn(f"{model_dir} holds a run that has already trained 3 epochs", message)
        self.assertIn("Rerun with --epochs=3", message)
        self.assertIn("another --model_dir, or --overwrite", message)
        self.assertEqual(_read(os.path.join(model_dir, "config.json"))["epochs"], 3)
        # As many or more resume it.
        for epochs in (3, 5):
            rundir.prepare_model_dir(_config(model_dir, epochs=epochs), environment=_ENV_A)
            self.assertEqual(rundir.epochs_done(model_dir), 3)
        # --overwrite starts the shorter run afresh.
        rundir.prepare_model_dir(_config(model_dir, epochs=2, overwrite=True), environment=_ENV_A)
        self.assertEqual(rundir.epochs_done(model_dir), 0)
        self.assertEqual(os.listdir(model_dir), ["config.json"])
        self.assertEqual(_read(os.path.join(model_dir, "config.json"))["epochs"], 2)

    def test_resumed_run_keeps_its_environment_and_lists_later_ones_once_in_a_row(self):
        model_dir = self.create_tempdir().full_path
        path = os.path.join(model_dir, "config.json")
        for environment in (_ENV_A, _ENV_A, _ENV_B, _ENV_B, _ENV_A):
            rundir.prepare_model_dir(_config(model_dir), environment=environment)
        record = _read(path)
        self.assertEqual(record["environment"], _ENV_A)
        self.assertEqual(record["resumed_environments"], [_ENV_B, _ENV_A])

    def test_unwritable_model_dir_is_a_training_error(self):
        blocker = os.path.join(self.create_tempdir().full_path, "file")
        with open(blocker, "w") as f:
            f.write("not a directory")
        with self.assertRaisesRegex(training.TrainingError, "Cannot write to --model_dir"):
            rundir.prepare_model_dir(_config(os.path.join(blocker, "run")), environment=_ENV_A)


class CheckWritableParentTest(parameterized.TestCase):
    def test_creates_a_missing_parent(self):
        path = os.path.join(self.create_tempdir().full_path, "a", "b", "export")
        rundir.check_writable_parent(path, "--export_dir")
        self.assertTrue(os.path.isdir(os.path.dirname(path)))
        self.assertEqual(os.listdir(os.path.dirname(path)), [])  # the probe is gone

    def test_parent_under_a_file_is_not_writable(self):
        blocker = os.path.join(self.create_tempdir().full_path, "file")
        with open(blocker, "w") as f:
            f.write("x")
        path = os.path.join(blocker, "export")
        with self.assertRaisesRegex(
            training.TrainingError, f"--export_dir {path} is not writable .*Choose a directory"
        ):
            rundir.check_writable_parent(path, "--export_dir")

    def test_existing_file_at_the_path_is_refused(self):
        path = os.path.join(self.create_tempdir().full_path, "export")
        with open(path, "w") as f:
            f.write("x")
        with self.assertRaisesRegex(training.TrainingError, "exists and is not a directory"):
            rundir.check_writable_parent(path, "--export_dir")


def _tiny_model():
    inputs = keras.Input((2,))
    return keras.Model(inputs, keras.layers.Dense(2)(inputs))


class RunDirTest(parameterized.TestCase):
    def test_history_round_trip_is_truncated_to_the_restored_epoch(self):
        run_dir = training.RunDir(self.create_tempdir().full_path)
        self.assertEqual(run_dir.read_history(epochs_done=3), [])
        history = [{"epoch": 1}, {"epoch": 2}, {"epoch": 3}]
        run_dir.write_history(history)
        # Killed after writing epoch 3's history but before its checkpoint.
        self.assertEqual(run_dir.read_history(epochs_done=2), history[:2])
        self.assertEqual(run_dir.read_history(epochs_done=5), history)

    def test_non_chief_writes_no_run_records(self):
        model_dir = self.create_tempdir().full_path
        worker = os.path.join(model_dir, "workers", "worker_1")
        run_dir = training.RunDir(model_dir, worker)
        self.assertFalse(run_dir.chief)
        self.assertEqual(run_dir.out_dir, worker)
        self.assertEqual(run_dir.logs_dir, os.path.join(worker, "logs"))
        run_dir.write_history([{"epoch": 1}])
        run_dir.write_results({"epochs_done": 1})
        run_dir.save_epoch_weights(_tiny_model(), 1)
        self.assertEqual(os.listdir(model_dir), [])
        self.assertIsNone(run_dir.read_results())

    def test_results_round_trip(self):
        run_dir = training.RunDir(self.create_tempdir().full_path)
        self.assertIsNone(run_dir.read_results())
        run_dir.write_results({"test_accuracy": np.float32(0.5), "export_path": None})
        self.assertEqual(run_dir.read_results(), {"export_path": None, "test_accuracy": 0.5})

    def test_checkpoint_managers_of_chief_and_worker(self):
        model_dir = self.create_tempdir().full_path
        epoch = tf.Variable(0, dtype=tf.int64)
        checkpoint = tf.train.Checkpoint(epoch=epoch)
        restore, save = training.RunDir(model_dir).checkpoint_managers(checkpoint)
        self.assertIs(restore, save)
        for number in (1, 2, 3):
            epoch.assign(number)
            save.save(checkpoint_number=number)
        self.assertLen(save.checkpoints, 2)  # the chief keeps two
        worker = os.path.join(model_dir, "workers", "worker_1")
        restore, save = training.RunDir(model_dir, worker).checkpoint_managers(checkpoint)
        self.assertIsNot(restore, save)
        self.assertTrue(restore.latest_checkpoint.endswith("ckpt-3"))
        self.assertIsNone(save.latest_checkpoint)
        save.save(checkpoint_number=3)
        self.assertTrue(save.latest_checkpoint.startswith(os.path.join(worker, "checkpoints")))

    def test_model_and_epoch_weights_are_written_whole_without_leftovers(self):
        model_dir = self.create_tempdir().full_path
        run_dir = training.RunDir(model_dir)
        model = _tiny_model()
        path = run_dir.save_model(model)
        self.assertEqual(path, os.path.join(model_dir, "model.keras"))
        run_dir.save_epoch_weights(model, 7)
        weights = training.epoch_weights_path(model_dir, 7)
        self.assertEqual(weights, os.path.join(model_dir, "epochs", "epoch_007.weights.h5"))
        self.assertEqual(os.listdir(os.path.join(model_dir, "epochs")), ["epoch_007.weights.h5"])
        self.assertEqual(sorted(os.listdir(model_dir)), ["epochs", "model.keras"])
        loaded = keras.models.load_model(path)
        for a, b in zip(loaded.get_weights(), model.get_weights()):
            np.testing.assert_array_equal(a, b)

    def test_a_failed_save_leaves_the_previous_file(self):
        model_dir = self.create_tempdir().full_path
        run_dir = training.RunDir(model_dir)
        run_dir.save_model(_tiny_model())
        with open(os.path.join(model_dir, "model.keras"), "rb") as f:
            before = f.read()

        class Broken:
            def save(self, path):
                with open(path, "wb") as f:
                    f.write(b"half a fi")
                raise OSError("disk full")

        with self.assertRaisesRegex(OSError, "disk full"):
            run_dir.save_model(Broken())
        with open(os.path.join(model_dir, "model.keras"), "rb") as f:
            self.assertEqual(f.read(), before)


def _save(directory, epochs, **variables):
    """A checkpoint of `variables` numbered `epochs` in `directory`; returns its path."""
    checkpoint = tf.train.Checkpoint(**variables)
    return tf.train.CheckpointManager(checkpoint, directory, max_to_keep=2).save(epochs)


class MemoryShardTest(absltest.TestCase):
    def setUp(self):
        super().setUp()
        self.model_dir = self.create_tempdir().full_path
        self.worker = training.RunDir(
            self.model_dir, os.path.join(self.model_dir, "workers", "worker_1")
        )
        self.run_checkpoint = _save(
            os.path.join(self.model_dir, "checkpoints"), 2, epoch=tf.Variable(2)
        )

    def test_each_worker_resumes_from_its_own_shard_of_the_epoch(self):
        chief = training.RunDir(self.model_dir)
        self.assertEqual(
            chief.memory_dir(0, 2), os.path.join(self.model_dir, "memory_shard_0_of_2")
        )
        directory = self.worker.memory_dir(1, 2)
        self.assertEqual(
            directory, os.path.join(self.model_dir, "workers", "worker_1", "memory_shard_1_of_2")
        )
        for epoch in (1, 2):
            _save(directory, epoch, perturbations=tf.Variable([float(epoch)]))
        path = self.worker.memory_checkpoint(2, 1, 2, self.run_checkpoint)
        self.assertEqual(path, os.path.join(directory, "ckpt-2"))
        self.assertEqual(self.worker.memory_checkpoint(1, 1, 2, self.run_checkpoint)[-6:], "ckpt-1")

    def test_another_number_of_workers_is_refused(self):
        _save(self.worker.memory_dir(1, 2), 2, perturbations=tf.Variable([1.0]))
        with self.assertRaisesRegex(
            training.TrainingError, "sharded over 2 workers, not 3; resume it with 2 worker"
        ):
            self.worker.memory_checkpoint(2, 1, 3, self.run_checkpoint)

    def test_a_run_trained_with_its_memory_whole_is_refused(self):
        whole = _save(os.path.join(self.model_dir, "whole"), 2, perturbations=tf.Variable([1.0]))
        with self.assertRaisesRegex(training.TrainingError, "resume it with 1 worker"):
            self.worker.memory_checkpoint(2, 1, 2, whole)
        rundir.check_whole_memory(whole, self.model_dir)

    def test_a_missing_shard_is_named(self):
        _save(self.worker.memory_dir(1, 2), 1, perturbations=tf.Variable([1.0]))
        with self.assertRaisesRegex(
            training.TrainingError, "No perturbation memory shard of epoch 2 in .*worker_1"
        ):
            self.worker.memory_checkpoint(2, 1, 2, self.run_checkpoint)

    def test_a_sharded_run_is_not_resumed_with_its_memory_whole(self):
        os.makedirs(os.path.join(self.model_dir, "memory_shard_0_of_4"))
        with self.assertRaisesRegex(
            training.TrainingError, "holds no perturbation memory.*resume it with 4 worker"
        ):
            rundir.check_whole_memory(self.run_checkpoint, self.model_dir)


if __name__ == "__main__":
    absltest.main()
