"""Tests for sq_keras.reproduce.variants: the comparisons are well formed."""

import dataclasses
import math

from absl.testing import absltest
from absl.testing import parameterized

from sq_keras import reproduce
from sq_keras import training


class VariantsTest(parameterized.TestCase):
    @parameterized.named_parameters(*((name, name) for name in reproduce.VARIANTS))
    def test_comparison(self, dataset):
        variants = reproduce.VARIANTS[dataset]
        names = [v.name for v in variants]
        self.assertLen(set(names), len(names))
        self.assertIn(reproduce.REFERENCE, names)
        self.assertTrue(any(v.candidate for v in variants))
        for v in variants:
            self.assertTrue(not v.baseline or v.candidate, v.name)

    def test_settings_are_train_config_fields(self):
        fields = {f.name for f in dataclasses.fields(training.TrainConfig)}
        for v in reproduce.MNIST_VARIANTS:
            self.assertLessEqual(set(v.settings), fields, v.name)
            training.TrainConfig(dataset="mnist", method=v.method, **v.settings)

    def test_adversarial_baselines_warm_up(self):
        warm = {v.name for v in reproduce.MNIST_VARIANTS if "eps_warmup_steps" in v.settings}
        self.assertEqual(warm, {"fgsm_rs", "pgd_at"})
        # Two epochs of 50,000 images at batch 128.
        self.assertEqual(reproduce.WARMUP_STEPS, 2 * math.ceil(50_000 / 128))


if __name__ == "__main__":
    absltest.main()
