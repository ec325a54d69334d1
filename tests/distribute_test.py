"""Tests for sq_keras.distribute and distributed training on CPU."""

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from unittest import mock

import keras
import numpy as np
import tensorflow as tf
from absl.testing import absltest
from absl.testing import parameterized

import sq_keras.layers  # noqa: F401  (registers SoftQuantization for load_model)
from sq_keras import data
from sq_keras import distribute
from sq_keras import training
from sq_keras.training import perturbation_memory
from tests.testing_utils import run_mirrored_probe

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _env(**extra):
    return {**os.environ, "PYTHONPATH": ROOT, "TF_CPP_MIN_LOG_LEVEL": "2", **extra}


def _free_ports(n):
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def _run_workers(workers, model_dir, *flags, timeout=480):
    """Runs `apps.train` as `workers` `multi_worker` processes on loopback; returns their outputs.

    Raises:
        AssertionError: A process failed (with the end of its output).
    """
    ports = _free_ports(workers)
    cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
    procs = []
    for index in range(workers):
        tf_config = json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})
        procs.append(
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "apps.train",
                    "--strategy=multi_worker",
                    f"--model_dir={model_dir}",
                    *flags,
                ],
                cwd=ROOT,
                env=_env(TF_CONFIG=tf_config),
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
        )
    outputs = []
    try:
        for proc in procs:
            outputs.append(proc.communicate(timeout=timeout)[0])
    finally:
        for proc in procs:
            proc.kill()
    for proc, output in zip(procs, outputs):
        if proc.returncode:
            raise AssertionError(f"exit status {proc.returncode}:\n{output[-3000:]}")
    return outputs


class StrategyTest(parameterized.TestCase):
    def _probe(self, *args):
        """Runs tests/mirrored_step_probe.py and returns the JSON it prints."""
        return run_mirrored_probe(self, *args)

    def test_mirrored_step_equals_single_device_step(self):
        result = self._probe()
        self.assertEqual(result["replicas"], 2)
        self.assertEqual(result["examples"], [64, 64])
        self.assertAlmostEqual(result["single_loss"], result["mirrored_loss"], places=5)
        self.assertGreater(result["max_weight_change"], 1e-4)  # the step did something
        self.assertLess(result["max_weight_diff"], 1e-5)

    def test_mirrored_attacks_match_single_device(self):
        result = self._probe("attack")
        single, mirrored = result["default"], result["mirrored"]
        self.assertEqual(single["fgsm"], mirrored["fgsm"])  # deterministic attack
        # PGD's random starts differ between a whole batch and its two halves.
        self.assertAlmostEqual(single["pgd"], mirrored["pgd"], delta=3.0)
        self.assertLess(single["pgd"], single["fgsm"])  # the attacks did work

    def test_two_workers_on_loopback_train_and_agree(self):
        tmp = self.create_tempdir().full_path
        model_dir = os.path.join(tmp, "run")
        outputs = _run_workers(
            2,
            model_dir,
            "--method=sq_natural",
            "--epochs=2",
            "--train_examples=512",
            "--batch_size=64",
            "--mixed_precision=float32",
            f"--export_dir={tmp}/export",
        )
        self.assertIn("2 replica(s)", outputs[0])
        with open(os.path.join(model_dir, "results.json")) as f:
            results = json.load(f)
        self.assertEqual(results["epochs_done"], 2)
        self.assertTrue(os.path.isdir(os.path.join(tmp, "export", "1")))
        # Only the chief wrote the run's checkpoints; the worker kept its own.
        self.assertTrue(os.path.exists(os.path.join(model_dir, "checkpoints", "checkpoint")))
        worker = os.path.join(model_dir, "workers", "worker_1")
        self.assertFalse(os.path.exists(os.path.join(worker, "results.json")))
        chief_model = keras.models.load_model(os.path.join(model_dir, "model.keras"))
        worker_model = keras.models.load_model(os.path.join(worker, "model.keras"))
        for a, b in zip(chief_model.get_weights(), worker_model.get_weights()):
            np.testing.assert_allclose(a, b, atol=1e-6)

    @parameterized.named_parameters(
        ("no_cluster", None, True),
        ("worker_0", {"cluster": {"worker": ["a:1", "b:1"]}}, True),
        ("worker_1", {"cluster": {"worker": ["a:1", "b:1"]}}, False),
        ("chief_present", {"cluster": {"chief": ["c:1"], "worker": ["a:1"]}}, False),
    )
    def test_is_chief(self, tf_config, expected):
        index = 1 if expected is False and tf_config and "chief" not in tf_config["cluster"] else 0
        resolver = mock.Mock(task_type="worker" if tf_config else None, task_id=index)
        strategy = mock.Mock(cluster_resolver=resolver)
        env = {"TF_CONFIG": json.dumps(tf_config)} if tf_config else {}
        with mock.patch.dict(os.environ, env):
            self.assertEqual(distribute.is_chief(strategy), expected)

    @parameterized.named_parameters(
        ("worker_0", {"worker": ["a:1", "b:1"]}, "worker", 0, (0, 2)),
        ("worker_1", {"worker": ["a:1", "b:1"]}, "worker", 1, (1, 2)),
        ("chief", {"chief": ["c:1"], "worker": ["a:1", "b:1"]}, "chief", 0, (0, 3)),
        ("worker_after_chief", {"chief": ["c:1"], "worker": ["a:1", "b:1"]}, "worker", 1, (2, 3)),
    )
    def test_each_worker_reads_its_own_shard(self, cluster, task_type, task_id, expected):
        resolver = mock.Mock(task_type=task_type, task_id=task_id)
        resolver.cluster_spec.return_value = tf.train.ClusterSpec(cluster)
        strategy = mock.Mock(spec=tf.distribute.MultiWorkerMirroredStrategy)
        strategy.cluster_resolver = resolver
        self.assertEqual(distribute.worker_shard(strategy), expected)

    def test_one_process_reads_all_the_data(self):
        self.assertEqual(distribute.worker_shard(tf.distribute.get_strategy()), (0, 1))
        evaluator = mock.Mock(spec=tf.distribute.MultiWorkerMirroredStrategy)
        evaluator.cluster_resolver = mock.Mock(task_type="evaluator", task_id=0)
        evaluator.cluster_resolver.cluster_spec.return_value = tf.train.ClusterSpec(
            {"worker": ["a:1"], "evaluator": ["e:1"]}
        )
        with self.assertRaisesRegex(ValueError, "reads no training data"):
            distribute.worker_shard(evaluator)

    def test_multi_worker_without_tf_config_is_a_clear_error(self):
        with mock.patch.dict(os.environ, {}, clear=False):
            os.environ.pop("TF_CONFIG", None)
            with self.assertRaisesRegex(ValueError, "needs the TF_CONFIG"):
                distribute.make_strategy("multi_worker")
        with self.assertRaisesRegex(ValueError, "Valid: default, mirrored"):
            distribute.make_strategy("horovod")


# A 2-worker sq_free run whose memory starts at zero and moves 0.1 per visit:
# after one epoch every stored value is 0 or +-0.1 (less where [0, 1] clips).
_FREE_FLAGS = (
    "--method=sq_free",
    "--free_init=zeros",
    "--free_step_size=0.1",
    "--train_examples=512",
    "--eval_examples=200",
    "--batch_size=64",
    "--mixed_precision=float32",
)
_NUM_TRAIN, _STEP, _EPS = 512, 0.1, 0.3
_MEMORY_KEY = "perturbations/.ATTRIBUTES/VARIABLE_VALUE"


def _shard_dir(model_dir, worker):
    own = model_dir if worker == 0 else os.path.join(model_dir, "workers", f"worker_{worker}")
    return os.path.join(own, f"memory_shard_{worker}_of_2")


def _shard(model_dir, worker, epoch):
    path = os.path.join(_shard_dir(model_dir, worker), f"ckpt-{epoch}")
    return tf.train.load_checkpoint(path).get_tensor(_MEMORY_KEY)


def _merged(model_dir, epoch):
    """The two workers' shards interleaved back into the training set's order."""
    shards = [_shard(model_dir, w, epoch) for w in range(2)]
    merged = np.zeros((_NUM_TRAIN, *shards[0].shape[1:]), shards[0].dtype)
    for w, shard in enumerate(shards):
        merged[w::2] = shard
    return merged


def _one_worker_reference():
    """One device trained on the 2-worker run's global batches: `(model, memory)`.

    Step k's global batch is the union of each worker's batch k (worker w's
    examples, i % 2 == w, in the order of the epoch's shuffle); one device
    takes it whole, with the whole memory.
    """
    config = training.TrainConfig(
        dataset="mnist",
        method="sq_free",
        free_init="zeros",
        free_step_size=_STEP,
        train_examples=_NUM_TRAIN,
        eval_examples=200,
        batch_size=64,
        mixed_precision="float32",
        epochs=1,
    ).resolved()
    info = data.get_info("mnist")
    keras.utils.set_random_seed(config.seed)
    source = data.load_training_data(config, info, add_noise=False, with_indices=True)
    model, _, step = training.build_components(
        config, info, tf.distribute.get_strategy(), num_train=_NUM_TRAIN, steps_per_epoch=8
    )
    parts = [list(source.train_batches(0, True, shard=(w, 2), batch_size=32)) for w in range(2)]
    for first, second in zip(*parts):
        step(*(tf.concat([a, b], axis=0) for a, b in zip(first, second)))
    return model, step.memory.variable.numpy()


class ShardedMemoryTest(absltest.TestCase):
    """Two `multi_worker` processes train sq_free for one epoch, each keeping its shard."""

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.tmp = tempfile.mkdtemp()
        cls.model_dir = os.path.join(cls.tmp, "run")
        cls.flags = (*_FREE_FLAGS, f"--export_dir={cls.tmp}/export")
        cls.outputs = _run_workers(2, cls.model_dir, "--epochs=1", *cls.flags)
        # What the epoch left, kept as it is while other tests train on.
        cls.epoch_one = shutil.copytree(cls.model_dir, os.path.join(cls.tmp, "epoch_one"))

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.tmp, ignore_errors=True)
        super().tearDownClass()

    def test_each_worker_keeps_half_the_memory_as_the_formula_says(self):
        expected = perturbation_memory.memory_bytes(_NUM_TRAIN, (28, 28, 1), "float32", shards=2)
        self.assertEqual(expected, _NUM_TRAIN * 784 * 4 // 2)
        for w, output in enumerate(self.outputs):
            self.assertIn(f"This worker (shard {w}) keeps examples i % 2 == {w}: 256", output)
            shard = _shard(self.epoch_one, w, 1)
            self.assertEqual(shard.shape, (256, 28, 28, 1))
            self.assertEqual(shard.nbytes, expected)
        # The run's own checkpoint holds no memory: each worker keeps its shard.
        run_checkpoint = os.path.join(self.epoch_one, "checkpoints", "ckpt-1")
        names = [name for name, _ in tf.train.list_variables(run_checkpoint)]
        self.assertFalse(any("perturbations" in name for name in names))

    def test_every_perturbation_is_in_the_eps_ball_and_the_image_range(self):
        merged = _merged(self.epoch_one, 1)
        images, _ = data.load_arrays("mnist", f"train[:{_NUM_TRAIN}]")
        images = images.astype(np.float32) / 255.0
        self.assertLessEqual(np.abs(merged).max(), _STEP + 1e-6)
        self.assertGreater(np.abs(merged).mean(), 0.02)  # the epoch moved them
        perturbed = images + merged
        self.assertGreaterEqual(perturbed.min(), -1e-6)
        self.assertLessEqual(perturbed.max(), 1 + 1e-6)

    def test_the_merged_shards_match_one_worker_on_the_same_batches(self):
        model, reference = _one_worker_reference()
        chief = keras.models.load_model(os.path.join(self.epoch_one, "model.keras"))
        for a, b in zip(chief.get_weights(), model.get_weights()):
            np.testing.assert_allclose(a, b, atol=1e-4)
        merged = _merged(self.epoch_one, 1)
        # Each value is a signed step of the example's input gradient. The
        # weights agree to float rounding (two half-batch gradients summed
        # across workers vs one whole batch), so a sign flips only where a
        # pixel's gradient is within rounding of 0: a flip moves it 2 steps.
        moved = (np.abs(merged) > 1e-6) | (np.abs(reference) > 1e-6)
        differs = np.abs(merged - reference) > 1e-5
        self.assertGreater(moved.mean(), 0.3)
        self.assertLess(differs.sum() / moved.sum(), 0.005)
        self.assertLessEqual(np.abs(merged - reference).max(), 2 * _STEP + 1e-5)
        # Shards given to the wrong rows would not match.
        swapped = np.concatenate([merged[1::2], merged[0::2]])
        original = np.concatenate([reference[0::2], reference[1::2]])
        self.assertGreater((np.abs(swapped - original) > 1e-5).sum() / moved.sum(), 0.2)

    def test_a_rerun_with_more_epochs_continues_from_each_workers_own_shard(self):
        outputs = _run_workers(2, self.model_dir, "--epochs=2", *self.flags)
        for w, output in enumerate(outputs):
            self.assertIn("Restored this worker's perturbation memory shard from ", output)
            self.assertIn(f"{_shard_dir(self.model_dir, w)}/ckpt-1", output)
            before, after = _shard(self.model_dir, w, 1), _shard(self.model_dir, w, 2)
            self.assertGreater(np.mean(before != after), 0.1)
            # From zero, one epoch moves a value 0.1 at most: beyond that it
            # was carried over from the restored epoch-1 shard.
            self.assertGreater(np.mean(np.abs(after) > _STEP + 1e-6), 0.1)
            self.assertLessEqual(np.abs(after).max(), _EPS + 1e-6)

    def test_resuming_with_one_worker_is_refused(self):
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "apps.train",
                "--strategy=default",
                f"--model_dir={self.model_dir}",
                "--epochs=3",
                *self.flags,
            ],
            cwd=ROOT,
            env=_env(),
            capture_output=True,
            text=True,
            timeout=300,
        )
        self.assertNotEqual(result.returncode, 0)
        self.assertIn("sharded over 2 workers; resume it with 2 worker(s)", result.stderr)


if __name__ == "__main__":
    absltest.main()
