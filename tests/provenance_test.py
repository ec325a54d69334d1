"""Tests for sq_keras.provenance."""

import os
import subprocess

from absl.testing import absltest

from sq_keras import provenance


class ProvenanceTest(absltest.TestCase):
    def test_environment_names_versions_commit_and_machine(self):
        env = provenance.environment()
        self.assertEqual(
            set(env), {"sq_keras", "tensorflow", "keras", "python", "git_commit", "machine"}
        )
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True
        ).stdout.strip()
        self.assertEqual(env["git_commit"], head or None)

    def test_machine_names_the_cpu_model(self):
        description = provenance.machine_description()
        self.assertIn(f"{os.cpu_count()} cpus", description)
        with open("/proc/cpuinfo") as f:
            models = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        if models:
            self.assertTrue(description.endswith(models[0]))


if __name__ == "__main__":
    absltest.main()
