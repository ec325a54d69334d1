"""Tests for sq_keras.distribute and distributed training on CPU."""

import json
import os
import socket
import subprocess
import sys
from unittest import mock

import keras
import numpy as np
import tensorflow as tf
from absl.testing import absltest
from absl.testing import parameterized

import sq_keras.layers  # noqa: F401  (registers SoftQuantization for load_model)
from sq_keras import distribute
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
        ports = _free_ports(2)
        cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
        procs = []
        for index in range(2):
            tf_config = json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})
            procs.append(
                subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "apps.train",
                        "--strategy=multi_worker",
                        "--method=sq_natural",
                        "--epochs=2",
                        "--train_examples=512",
                        "--batch_size=64",
                        "--mixed_precision=float32",
                        f"--model_dir={model_dir}",
                        f"--export_dir={tmp}/export",
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
                outputs.append(proc.communicate(timeout=480)[0])
        finally:
            for proc in procs:
                proc.kill()
        for proc, output in zip(procs, outputs):
            self.assertEqual(proc.returncode, 0, output[-3000:])
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


if __name__ == "__main__":
    absltest.main()
