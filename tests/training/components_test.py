"""Tests for sq_keras.training.components: what a run's model, optimiser and step are."""

import keras
import numpy as np
import tensorflow as tf
from absl.testing import absltest
from absl.testing import parameterized

from sq_keras import data
from sq_keras import layers
from sq_keras import training


def _build(num_train=None, steps_per_epoch=None, **kwargs):
    config = training.TrainConfig(
        **{"dataset": "mnist", "mixed_precision": "float32", "lr_schedule": "constant", **kwargs}
    ).resolved()
    keras.utils.set_random_seed(config.seed)
    return training.build_components(
        config,
        data.get_info(config.dataset),
        tf.distribute.get_strategy(),
        num_train=num_train,
        steps_per_epoch=steps_per_epoch,
    )


class BuildComponentsTest(parameterized.TestCase):
    @parameterized.parameters(("geometric", 10.0), ("linear", 10.0), ("constant", 100.0))
    def test_quantizer_starts_at_the_schedules_first_alpha(self, schedule, alpha):
        model, _, _ = _build(
            method="sq_noisy", alpha_start=10.0, alpha_end=100.0, alpha_schedule=schedule
        )
        (quantizer,) = layers.quantization_layers(model)
        self.assertEqual(float(quantizer.alpha.numpy()), alpha)

    @parameterized.parameters(False, True)
    def test_quantizer_gets_hard_inference(self, hard):
        model, _, _ = _build(method="sq_fgsm", hard_inference=hard)
        (quantizer,) = layers.quantization_layers(model)
        self.assertEqual(quantizer.get_config()["hard"], hard)

    def test_quantizer_gets_threshold_margin(self):
        model, _, _ = _build(method="sq_fgsm", num_thresholds=3, threshold_margin=0.35)
        (quantizer,) = layers.quantization_layers(model)
        self.assertEqual(quantizer.threshold_margin, 0.35)
        np.testing.assert_allclose(quantizer.thresholds.numpy(), [0.425, 0.5, 0.575], rtol=1e-6)

    def test_methods_without_quantizer_get_none(self):
        model, _, _ = _build(method="pgd_at")
        self.assertEqual(layers.quantization_layers(model), [])
        self.assertIsNone(training.quantizer_settings(training.TrainConfig(method="natural")))

    def test_optimizer_is_built_adam_and_loss_scaled_under_mixed_float16(self):
        _, optimizer, _ = _build(method="natural", learning_rate=0.01)
        self.assertIsInstance(optimizer, keras.optimizers.Adam)
        self.assertTrue(optimizer.built)
        self.assertAlmostEqual(float(optimizer.learning_rate), 0.01)
        _, scaled, _ = _build(method="natural", mixed_precision="mixed_float16")
        self.assertIsInstance(scaled, keras.optimizers.LossScaleOptimizer)

    @parameterized.parameters(("natural", 1, 40), ("sq_free", 1, 40), ("sq_free", 3, 120))
    def test_a_schedule_spans_every_optimizer_update_of_the_run(self, method, replays, total):
        # 4 epochs of 10 batches; the free methods update `free_replays` times per batch.
        _, optimizer, _ = _build(
            num_train=1000,
            steps_per_epoch=10,
            method=method,
            epochs=4,
            free_replays=replays,
            lr_schedule="onecycle",
        )
        # "onecycle" peaks after 40% of the updates and reaches 0 at the last one.
        optimizer.iterations.assign(int(0.4 * total) - 1)
        self.assertAlmostEqual(float(optimizer.learning_rate), 1e-3, places=9)
        optimizer.iterations.assign(int(0.4 * total) - 2)
        self.assertLess(float(optimizer.learning_rate), 1e-3)
        optimizer.iterations.assign(total - 1)
        self.assertAlmostEqual(float(optimizer.learning_rate), 0.0, places=9)

    def test_per_example_state_needs_the_training_set_size(self):
        with self.assertRaisesRegex(ValueError, "needs `num_train`"):
            _build(method="sq_free")
        _, _, step = _build(method="sq_free", num_train=500)
        self.assertEqual(step.state["perturbations"].shape, (500, 28, 28, 1))

    def test_same_seed_builds_the_same_weights_and_the_step_trains_them(self):
        model_a, _, step = _build(method="sq_natural", seed=4)
        model_b, _, _ = _build(method="sq_natural", seed=4)
        for a, b in zip(model_a.get_weights(), model_b.get_weights()):
            np.testing.assert_array_equal(a, b)
        images = np.random.default_rng(0).random((8, 28, 28, 1), dtype=np.float32)
        labels = np.arange(8, dtype=np.int64)
        loss_sum, correct, n = step(images, labels)
        self.assertEqual(int(n), 8)
        self.assertTrue(np.isfinite(float(loss_sum)))
        self.assertFalse(np.array_equal(model_a.get_weights()[0], model_b.get_weights()[0]))


if __name__ == "__main__":
    absltest.main()
