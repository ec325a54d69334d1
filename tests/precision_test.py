"""Tests for sq_keras.precision."""

import contextlib
import dataclasses
import json
import os
from unittest import mock

import keras
import numpy as np
import tensorflow as tf
from absl.testing import absltest
from absl.testing import parameterized

from sq_keras import data
from sq_keras import evaluation
from sq_keras import export
from sq_keras import precision
from sq_keras import training


@contextlib.contextmanager
def amx_cpu_without_gpu(env):
    """A CPU with AVX512-BF16 and AMX, no GPU, and `env` in the environment."""
    with (
        mock.patch.dict(os.environ, env),
        mock.patch.object(precision.tf.config, "list_physical_devices", return_value=[]),
        mock.patch.object(precision, "_cpu_flags", return_value={"avx512_bf16", "amx_bf16"}),
    ):
        yield


class ResolvePolicyTest(parameterized.TestCase):
    def setUp(self):
        super().setUp()
        # The machine's own cap on oneDNN, if any, must not decide these cases.
        self.enter_context(mock.patch.dict(os.environ))
        os.environ.pop("ONEDNN_MAX_CPU_ISA", None)
        os.environ.pop("DNNL_MAX_CPU_ISA", None)

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

    @parameterized.named_parameters(
        ("uncapped", None, ("avx512_bf16", "amx_bf16"), "mixed_bfloat16"),
        ("capped_at_default", "DEFAULT", ("avx512_bf16", "amx_bf16"), "mixed_bfloat16"),
        ("capped_at_avx2", "avx2", (), "float32"),
        ("capped_at_avx512_core", "AVX512_CORE", (), "float32"),
        ("capped_below_amx", "AVX512_CORE_BF16", ("avx512_bf16",), "mixed_bfloat16"),
        ("capped_at_amx", "AVX512_CORE_AMX", ("avx512_bf16", "amx_bf16"), "mixed_bfloat16"),
    )
    def test_a_onednn_isa_cap_limits_native_bfloat16(self, cap, flags, policy):
        # An AMX CPU whose oneDNN is capped by ONEDNN_MAX_CPU_ISA (an AVX2 cap
        # makes it run as an AVX2-only CPU would).
        env = {} if cap is None else {"ONEDNN_MAX_CPU_ISA": cap}
        with amx_cpu_without_gpu(env):
            self.assertEqual(precision.native_bfloat16_flags(), flags)
            self.assertEqual(precision.resolve_policy("auto"), policy)

    @parameterized.named_parameters(
        ("old_name_only", {"DNNL_MAX_CPU_ISA": "avx2"}, ("DNNL_MAX_CPU_ISA", "AVX2"), "float32"),
        (
            "new_name_wins",
            {"ONEDNN_MAX_CPU_ISA": "ALL", "DNNL_MAX_CPU_ISA": "AVX2"},
            None,
            "mixed_bfloat16",
        ),
        (
            "empty_new_name_falls_back",
            {"ONEDNN_MAX_CPU_ISA": "", "DNNL_MAX_CPU_ISA": "AVX2"},
            ("DNNL_MAX_CPU_ISA", "AVX2"),
            "float32",
        ),
    )
    def test_the_cap_is_read_under_both_of_its_names(self, env, setting, policy):
        with amx_cpu_without_gpu(env):
            self.assertEqual(precision.onednn_isa_cap_setting(), setting)
            self.assertEqual(precision.resolve_policy("auto"), policy)

    def test_set_policy_sets_the_global_policy(self):
        self.assertEqual(precision.set_policy("mixed_bfloat16"), "mixed_bfloat16")
        self.assertEqual(keras.mixed_precision.global_policy().name, "mixed_bfloat16")

    def test_unknown_policy(self):
        with self.assertRaisesRegex(ValueError, "Valid: auto, float32"):
            precision.resolve_policy("fp8")


class MixedPrecisionTrainingTest(parameterized.TestCase):
    def tearDown(self):
        keras.mixed_precision.set_global_policy("float32")
        super().tearDown()

    @parameterized.named_parameters(("bf16", "mixed_bfloat16"), ("fp16", "mixed_float16"))
    def test_policy_trains_and_exports_float32_signatures(self, policy):
        precision.set_policy(policy)
        root = self.create_tempdir().full_path
        results = training.train(
            training.TrainConfig(
                method="sq_noisy",
                epochs=2,
                # float16 on a CPU without native float16 kernels takes seconds
                # per step: a few small steps show the loss falling, and the
                # per-epoch test pass, not what this test checks, stays small.
                train_examples=96,
                batch_size=16,
                grad_examples=16,
                eval_examples=64,
                mixed_precision=policy,
                model_dir=os.path.join(root, "run"),
                export_dir=os.path.join(root, "export"),
            ),
            log=lambda line: None,
        )
        with open(os.path.join(root, "run", "history.json")) as f:
            losses = [h["train_loss"] for h in json.load(f)]
        self.assertTrue(all(np.isfinite(losses)))
        self.assertLess(losses[1], losses[0])
        keras.mixed_precision.set_global_policy("float32")
        served = tf.saved_model.load(results["export_path"])
        signature = served.signatures["serving_default"]
        (spec,) = signature.structured_input_signature[1].values()
        self.assertEqual(spec.dtype, tf.float32)
        images, _ = data.load_arrays("mnist", "test[:8]")
        out = signature(images=tf.constant(images.astype(np.float32) / 255.0))
        self.assertEqual(out["logits"].dtype, tf.float32)
        self.assertTrue(np.all(np.isfinite(out["logits"].numpy())))

    def test_a_mixed_run_exports_the_float32_graph_it_is_evaluated_in_when_asked(self):
        precision.set_policy("mixed_bfloat16")
        root = self.create_tempdir().full_path
        config = training.TrainConfig(
            method="sq_noisy",
            epochs=1,
            train_examples=256,
            batch_size=64,
            grad_examples=16,
            eval_examples=64,
            mixed_precision="mixed_bfloat16",
            model_dir=os.path.join(root, "run"),
            export_dir=os.path.join(root, "export"),
            export_policy="float32",
        )
        results = training.train(config, log=lambda line: None)
        # A rerun asking for the training policy exports that graph as the next version.
        lines = []
        as_trained = training.train(
            dataclasses.replace(config, export_policy="training"), log=lines.append
        )
        training.train(dataclasses.replace(config, export_policy="training"), log=lines.append)
        keras.mixed_precision.set_global_policy("float32")
        self.assertEqual(export.versions(config.export_dir), [1, 2])
        self.assertIn("its SavedModel is", lines[-1])
        self.assertEqual(
            [_metadata(r["export_path"])["policy"] for r in (results, as_trained)],
            ["float32", "mixed_bfloat16"],
        )
        images, _ = data.load_arrays("mnist", "test[:64]")
        x = images.astype(np.float32) / 255.0
        evaluated = evaluation.load_target(config.model_dir, policy="float32").model_fn(x)
        float32 = _serve(results["export_path"], x)
        np.testing.assert_array_equal(float32["logits"], evaluated)
        bfloat16 = _serve(as_trained["export_path"], x)
        self.assertGreater(np.abs(bfloat16["logits"] - evaluated).max(), 0.0)


def _metadata(export_path):
    with open(os.path.join(export_path, "assets.extra", export.METADATA_FILE)) as f:
        return json.load(f)


def _serve(export_path, images):
    out = tf.saved_model.load(export_path).signatures["serving_default"](images=images)
    return {name: value.numpy() for name, value in out.items()}


if __name__ == "__main__":
    absltest.main()
