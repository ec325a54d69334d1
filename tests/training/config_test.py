"""Tests for sq_keras.training.config: defaults filled from the dataset, then checked."""

import dataclasses
import os

from absl.testing import absltest
from absl.testing import parameterized

from sq_keras import reproduce
from sq_keras import training
from tests.training.fixtures import small_config as _config


class TrainConfigTest(parameterized.TestCase):
    @parameterized.named_parameters(
        ("method", {"method": "pgd"}, "Valid methods"),
        ("dataset", {"dataset": "cifar"}, "Valid datasets"),
        ("eps", {"eps": 1.5}, "eps must be in"),
        ("epochs", {"epochs": 0}, "epochs must be"),
        ("batch", {"batch_size": 0}, "batch_size must be"),
        ("noise", {"noise": "salt"}, "noise must be one of"),
        ("thresholds", {"num_thresholds": 0}, "num_thresholds must be"),
        ("threshold_margin", {"threshold_margin": 0.5}, "threshold_margin must be in"),
        ("pgd_steps", {"pgd_steps": 0}, "pgd_steps must be"),
        ("adv_fraction", {"adv_fraction": 1.5}, "adv_fraction must be"),
        ("stand_in", {"stand_in": "zero"}, "stand_in must be one of"),
        ("export_policy", {"export_policy": "bfloat16"}, "export_policy must be one of"),
        ("eps_warmup_steps", {"eps_warmup_steps": -1}, "eps_warmup_steps must be"),
        (
            "eps_warmup_without_an_attack",
            {"method": "sq_free", "eps_warmup_steps": 100},
            "eps_warmup_steps ramps the training attack of fgsm_rs, pgd_at, sq_fgsm; method "
            "sq_free has none to ramp. Received: 100",
        ),
        ("lr_schedule", {"lr_schedule": "step"}, "lr_schedule must be one of constant"),
        ("lr_drop_fraction", {"lr_drop_fraction": 1.0}, "lr_drop_fraction must be in"),
        ("free_replays", {"method": "sq_free", "free_replays": 0}, "free_replays must be"),
        ("free_step_size", {"method": "free", "free_step_size": 0.0}, "free_step_size must"),
        ("free_step_end", {"method": "sq_free", "free_step_end": 0.0}, "free_step_end must"),
        (
            "free_step_end_without_a_free_step",
            {"method": "sq_fgsm", "free_step_end": 0.1},
            "free_step_end schedules the per-visit step of free, sq_free; method sq_fgsm "
            "has none. Received: 0.1",
        ),
        ("free_init", {"free_init": "normal"}, "free_init must be one of uniform, zeros"),
        ("free_memory_dtype", {"free_memory_dtype": "float16"}, "free_memory_dtype must be"),
        ("free_memory", {"free_memory": "replay"}, "free_memory must be"),
    )
    def test_invalid_config(self, kwargs, pattern):
        with self.assertRaisesRegex(ValueError, pattern):
            training.train(_config(self.create_tempdir().full_path, **kwargs))

    def test_default_method_is_the_datasets_selected_recipe(self):
        # MNIST's default is the recipe apps.reproduce chose on held-out data
        # (sq_free_large_step_piecewise); datasets without that comparison
        # train the paper's recipe at a constant rate.
        mnist = training.TrainConfig(dataset="mnist").resolved()
        self.assertEqual(
            (mnist.method, mnist.free_step_size, mnist.lr_schedule), ("sq_free", 0.375, "piecewise")
        )
        cifar10 = training.TrainConfig(dataset="cifar10").resolved()
        self.assertEqual((cifar10.method, cifar10.lr_schedule), ("sq_noisy", "constant"))
        explicit = training.TrainConfig(
            dataset="mnist", method="natural", lr_schedule="constant"
        ).resolved()
        self.assertEqual((explicit.method, explicit.lr_schedule), ("natural", "constant"))

    def test_the_default_recipe_matches_its_comparison_row(self):
        # The row apps.reproduce selected trains exactly what the default does.
        row = next(v for v in reproduce.MNIST_VARIANTS if v.name == "sq_free_large_step_piecewise")
        from_row = training.TrainConfig(method=row.method, **row.train_settings()).resolved()
        self.assertEqual(from_row, training.TrainConfig().resolved())

    @parameterized.named_parameters(
        (
            "alpha_schedule",
            {"alpha_schedule": "cosine"},
            "alpha_schedule must be geometric, linear or constant. Received: 'cosine'",
        ),
        (
            "strategy",
            {"strategy": "horovod"},
            "strategy must be one of default, mirrored, multi_worker, tpu. Received: 'horovod'",
        ),
        (
            "augment",
            {"augment": "mixup"},
            "augment must be one of none, crop, crop_flip. Received: 'mixup'",
        ),
        ("eval_examples", {"eval_examples": 0}, "eval_examples must be >= 1. Received: 0"),
        ("learning_rate", {"learning_rate": 0.0}, "learning_rate must be > 0. Received: 0.0"),
        (
            "model",
            {"model": "vgg"},
            "Unknown model 'vgg'. Valid models: madry_mnist, madry_mnist_silu, madry_mnist_x2, "
            "madry_mnist_x4, preact_resnet18, preact_resnet_mnist, resnet50, wide_resnet.",
        ),
    )
    def test_message_names_the_field_the_requirement_and_the_value(self, kwargs, message):
        with self.assertRaisesWithLiteralMatch(ValueError, message):
            _config("unused", **kwargs).resolved()

    def test_free_step_size_defaults_to_the_datasets_multiple_of_eps_for_free_methods_only(self):
        for method in ("free", "sq_free"):
            config = training.TrainConfig(method=method, eps=0.2).resolved()
            self.assertAlmostEqual(config.free_step_size, 0.25)
            config = training.TrainConfig(dataset="cifar10", method=method, eps=0.02).resolved()
            self.assertEqual(config.free_step_size, 0.02)
        # Other methods record no step they do not take, as runs before it existed.
        self.assertIsNone(training.TrainConfig(method="sq_fgsm").resolved().free_step_size)
        explicit = training.TrainConfig(method="sq_free", free_step_size=0.05).resolved()
        self.assertEqual(explicit.free_step_size, 0.05)

    def test_optional_counts_accept_none(self):
        config = _config("unused", train_examples=None, eval_examples=None).resolved()
        self.assertIsNone(config.train_examples)
        self.assertIsNone(config.eval_examples)

    def test_fill_defaults_takes_the_datasets_values_and_checks_nothing(self):
        filled = training.TrainConfig(dataset="cifar10", epochs=0).fill_defaults()
        self.assertEqual(filled.model, "preact_resnet18")
        self.assertEqual(filled.augment, "crop_flip")
        self.assertEqual(filled.num_thresholds, 7)
        self.assertAlmostEqual(filled.eps, 8 / 255)
        self.assertEqual(filled.noise_scale, filled.eps)
        self.assertEqual(filled.fgsm_step_size, 1.25 * filled.eps)
        with self.assertRaisesRegex(ValueError, "epochs must be >= 1"):
            filled.validate()

    def test_the_exported_policy_is_the_training_one_unless_float32_is_asked_for(self):
        mixed = training.TrainConfig(mixed_precision="mixed_bfloat16")
        self.assertEqual(mixed.resolved().exported_policy, "mixed_bfloat16")
        exact = dataclasses.replace(mixed, export_policy="float32").resolved()
        self.assertEqual(exact.exported_policy, "float32")

    def test_a_relative_data_dir_is_recorded_absolute(self):
        config = training.TrainConfig(data_dir="../shared/data").resolved()
        self.assertEqual(config.data_dir, os.path.abspath("../shared/data"))
        self.assertIsNone(training.TrainConfig().resolved().data_dir)

    def test_explicit_values_are_kept_and_resolving_twice_changes_nothing(self):
        config = training.TrainConfig(eps=0.1, noise_scale=0.2, fgsm_step_size=0.05).resolved()
        self.assertEqual((config.eps, config.noise_scale, config.fgsm_step_size), (0.1, 0.2, 0.05))
        self.assertEqual(config.resolved(), config)
        self.assertEqual(
            [f.name for f in dataclasses.fields(config)],
            [f.name for f in dataclasses.fields(training.TrainConfig)],
        )


if __name__ == "__main__":
    absltest.main()
