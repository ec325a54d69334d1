"""Tests for sq_keras.training.schedules."""

import json
import os
from unittest import mock

import keras
import numpy as np
from absl.testing import absltest
from absl.testing import parameterized

from sq_keras import layers
from sq_keras import training
from tests.training.fixtures import Killed
from tests.training.fixtures import dying_after
from tests.training.fixtures import small_config


class AlphaAtTest(parameterized.TestCase):
    @parameterized.parameters(*training.ALPHA_SCHEDULES)
    def test_every_schedule_is_one_layers_knows(self, kind):
        config = training.TrainConfig(epochs=3, alpha_start=2.0, alpha_end=8.0, alpha_schedule=kind)
        alphas = [training.alpha_at(config, epoch) for epoch in range(3)]
        expected = [layers.alpha_schedule(e, 3, start=2.0, end=8.0, kind=kind) for e in range(3)]
        self.assertEqual(alphas, expected)
        self.assertEqual(alphas[-1], 8.0)

    def test_geometric_schedule_values(self):
        config = training.TrainConfig(epochs=3, alpha_start=2.0, alpha_end=8.0)
        self.assertEqual([training.alpha_at(config, e) for e in range(3)], [2.0, 4.0, 8.0])


def _rates(kind, total_steps=10, **kwargs):
    schedule = training.LearningRate(kind, 0.01, total_steps, **kwargs)
    return np.array([float(schedule(step)) for step in range(total_steps)])


class LearningRateTest(parameterized.TestCase):
    def test_constant_is_the_configured_rate_itself(self):
        config = training.TrainConfig(learning_rate=3e-4, lr_schedule="constant").resolved()
        self.assertEqual(training.learning_rate(config, total_steps=None), 3e-4)
        self.assertIsInstance(training.learning_rate(config, total_steps=100), float)

    def test_piecewise_drops_tenfold_for_the_last_fraction_of_the_steps(self):
        rates = _rates("piecewise", drop_fraction=0.3)
        np.testing.assert_allclose(rates, [0.01] * 7 + [0.001] * 3, rtol=1e-6)

    def test_cosine_falls_from_the_rate_to_zero(self):
        rates = _rates("cosine", total_steps=100)
        self.assertAlmostEqual(rates[0], 0.01, places=7)
        self.assertAlmostEqual(rates[50], 0.005, places=7)
        self.assertAlmostEqual(rates[99], 0.01 * 0.5 * (1 + np.cos(np.pi * 0.99)), places=7)
        self.assertTrue(np.all(np.diff(rates) < 0))

    def test_onecycle_rises_to_the_peak_at_forty_percent_then_falls_to_zero(self):
        rates = _rates("onecycle")
        # Step t trains at the rate of t + 1 (Wong et al.'s code).
        expected = [0.0025, 0.005, 0.0075, 0.01, 0.01 * 5 / 6, 0.01 * 4 / 6]
        np.testing.assert_allclose(rates[:6], expected, rtol=1e-5)
        self.assertEqual(int(np.argmax(rates)), 3)
        self.assertAlmostEqual(rates[-1], 0.0, places=9)

    def test_serialises_with_its_settings(self):
        schedule = training.LearningRate("piecewise", 0.02, 50, drop_fraction=0.25)
        restored = keras.optimizers.schedules.deserialize(
            keras.optimizers.schedules.serialize(schedule)
        )
        self.assertEqual(restored.get_config(), schedule.get_config())
        self.assertAlmostEqual(float(restored(45)), 0.002, places=7)

    def test_a_schedule_without_a_known_length_is_refused(self):
        config = training.TrainConfig(dataset="imagenet2012", lr_schedule="cosine").resolved()
        with self.assertRaisesRegex(ValueError, "Use --lr_schedule=constant"):
            training.learning_rate(config, total_steps=None)

    @parameterized.parameters(("onecycle", 0), ("cosine", 0), ("piecewise", 0))
    def test_bad_arguments_are_refused(self, kind, total_steps):
        with self.assertRaisesRegex(ValueError, "total_steps"):
            training.LearningRate(kind, 0.01, total_steps)
        with self.assertRaisesRegex(ValueError, "kind"):
            training.LearningRate("linear", 0.01, 10)


class ScheduledTrainingTest(parameterized.TestCase):
    def test_a_killed_cosine_run_resumes_where_its_schedule_stopped(self):
        kwargs = dict(
            method="natural",
            epochs=2,
            lr_schedule="cosine",
            train_examples=300,
            eval_examples=500,
            deterministic=True,
        )
        straight = training.train(small_config(self.create_tempdir().full_path, **kwargs))
        model_dir = self.create_tempdir().full_path
        # 3 steps per epoch: dies at step 2 of epoch 2, after the epoch-1 checkpoint.
        dying = dying_after(training.build_standard_step, 4)
        with mock.patch.dict(training.STEP_BUILDERS, {"standard": dying}):
            with self.assertRaises(Killed):
                training.train(small_config(model_dir, **kwargs))
        resumed = training.train(small_config(model_dir, **kwargs))
        keys = ("epochs_done", "test_accuracy", "train_loss", "train_accuracy", "grad_l1")
        self.assertEqual({k: resumed[k] for k in keys}, {k: straight[k] for k in keys})
        with open(os.path.join(model_dir, "config.json")) as f:
            self.assertEqual(json.load(f)["lr_schedule"], "cosine")
        constant = training.train(
            small_config(self.create_tempdir().full_path, **{**kwargs, "lr_schedule": "constant"})
        )
        self.assertNotEqual(constant["train_loss"], straight["train_loss"])


if __name__ == "__main__":
    absltest.main()
