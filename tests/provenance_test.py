"""Tests for sq_keras.provenance."""

import os
import subprocess
from unittest import mock

from absl.testing import absltest
from absl.testing import parameterized

from sq_keras import precision
from sq_keras import provenance


class ProvenanceTest(parameterized.TestCase):
    def setUp(self):
        super().setUp()
        # The machine's own cap on oneDNN, if any, must not decide these cases.
        self.enter_context(mock.patch.dict(os.environ))
        os.environ.pop("ONEDNN_MAX_CPU_ISA", None)
        os.environ.pop("DNNL_MAX_CPU_ISA", None)

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
            self.assertIn(f"cpus, {models[0]}, ", description)

    @parameterized.named_parameters(
        ("avx512", {"avx2", "avx512_bf16"}, "native bfloat16 (avx512_bf16)"),
        ("amx", {"avx512_bf16", "amx_bf16"}, "native bfloat16 (avx512_bf16, amx_bf16)"),
        ("avx2_only", {"avx2", "fma"}, "no native bfloat16"),
    )
    def test_machine_says_whether_bfloat16_is_native(self, cpu_flags, expected):
        with mock.patch.object(precision, "_cpu_flags", return_value=cpu_flags):
            description = provenance.machine_description()
        self.assertTrue(description.endswith(", " + expected), description)

    @parameterized.parameters("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA")
    def test_machine_names_a_cap_on_onednn(self, variable):
        with (
            mock.patch.dict(os.environ, {variable: "avx2"}),
            mock.patch.object(precision, "_cpu_flags", return_value={"avx512_bf16", "amx_bf16"}),
        ):
            description = provenance.machine_description()
        self.assertTrue(
            description.endswith(f", no native bfloat16, oneDNN capped at AVX2 ({variable})"),
            description,
        )


if __name__ == "__main__":
    absltest.main()
