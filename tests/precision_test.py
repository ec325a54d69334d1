"""Tests for sq_keras.precision."""

from unittest import mock

import keras
from absl.testing import absltest
from absl.testing import parameterized

from sq_keras import precision


class ResolvePolicyTest(parameterized.TestCase):
    def tearDown(self):
        keras.mixed_precision.set_global_policy("float32")
        super().tearDown()

    @parameterized.named_parameters(
        ("float32", "float32"), ("bf16", "mixed_bfloat16"), ("fp16", "mixed_float16")
    )
    def test_explicit_names_pass_through(self, name):
        self.assertEqual(precision.resolve_policy(name), name)

    @parameterized.named_parameters(
        ("gpu", ["GPU:0"], {"avx2"}, "mixed_float16"),
        ("bf16_cpu", [], {"avx2", "avx512_bf16"}, "mixed_bfloat16"),
        ("amx_cpu", [], {"amx_bf16"}, "mixed_bfloat16"),
        ("plain_cpu", [], {"avx2", "avx512f"}, "float32"),
    )
    def test_auto(self, gpus, cpu_flags, expected):
        with (
            mock.patch.object(precision.tf.config, "list_physical_devices", return_value=gpus),
            mock.patch.object(precision, "_cpu_flags", return_value=cpu_flags),
        ):
            self.assertEqual(precision.resolve_policy("auto"), expected)

    def test_set_policy_sets_the_global_policy(self):
        self.assertEqual(precision.set_policy("mixed_bfloat16"), "mixed_bfloat16")
        self.assertEqual(keras.mixed_precision.global_policy().name, "mixed_bfloat16")

    def test_unknown_policy(self):
        with self.assertRaisesRegex(ValueError, "Valid: auto, float32"):
            precision.resolve_policy("fp8")


if __name__ == "__main__":
    absltest.main()
