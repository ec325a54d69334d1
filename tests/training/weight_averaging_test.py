"""Tests for sq_keras.training.weight_averaging and `ema_decay` runs on MNIST subsets."""

import os
from unittest import mock

import keras
import numpy as np
import tensorflow as tf
from absl.testing import absltest

from sq_keras import data
from sq_keras import training
from sq_keras.training import weight_averaging
from tests.training.fixtures import Killed
from tests.training.fixtures import dying_after
from tests.training.fixtures import small_config


def _dense_model():
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    model.build((None, 3))
    return model


def _weights(model):
    return [np.array(w) for w in model.get_weights()]


class AveragedWeightsTest(absltest.TestCase):
    def test_block_sees_the_moving_average_then_the_weights_come_back(self):
        model = _dense_model()
        optimizer = keras.optimizers.Adam(0.1, use_ema=True, ema_momentum=0.9)
        optimizer.build(model.trainable_variables)
        rng = np.random.default_rng(0)
        expected = None
        for _ in range(4):
            grads = [
                tf.constant(rng.normal(size=v.shape), tf.float32) for v in model.trainable_variables
            ]
            optimizer.apply(grads, model.trainable_variables)
            now = _weights(model)
            # Keras's rule: the first update copies the weights.
            expected = (
                now if expected is None else [0.9 * e + 0.1 * w for e, w in zip(expected, now)]
            )
        trained = _weights(model)
        with weight_averaging.averaged_weights(model, optimizer):
            for got, want in zip(_weights(model), expected):
                np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
            self.assertGreater(
                max(np.abs(g - t).max() for g, t in zip(_weights(model), trained)), 1e-3
            )
        for got, want in zip(_weights(model), trained):
            np.testing.assert_array_equal(got, want)

    def test_weights_come_back_after_an_exception(self):
        model = _dense_model()
        optimizer = keras.optimizers.Adam(0.1, use_ema=True, ema_momentum=0.5)
        optimizer.build(model.trainable_variables)
        for _ in range(2):
            optimizer.apply(
                [tf.ones_like(v) for v in model.trainable_variables], model.trainable_variables
            )
        trained = _weights(model)
        with self.assertRaises(RuntimeError):
            with weight_averaging.averaged_weights(model, optimizer):
                raise RuntimeError("evaluation failed")
        for got, want in zip(_weights(model), trained):
            np.testing.assert_array_equal(got, want)

    def test_no_average_or_no_update_yet_leaves_the_model(self):
        model = _dense_model()
        before = _weights(model)
        plain = keras.optimizers.Adam(0.1)
        plain.build(model.trainable_variables)
        fresh = keras.optimizers.Adam(0.1, use_ema=True)
        fresh.build(model.trainable_variables)  # averages are zeros until the first update
        for optimizer in (plain, fresh, None):
            with weight_averaging.averaged_weights(model, optimizer):
                for got, want in zip(_weights(model), before):
                    np.testing.assert_array_equal(got, want)


def _raw_weights(model_dir, config):
    """The weights training left in the run's latest checkpoint (not the average)."""
    model, _, _ = training.build_components(
        config.resolved(),
        data.get_info("mnist"),
        tf.distribute.get_strategy(),
        num_train=1000,
        steps_per_epoch=10,
    )
    latest = tf.train.latest_checkpoint(os.path.join(model_dir, "checkpoints"))
    tf.train.Checkpoint(model=model).restore(latest).expect_partial()
    return _weights(model)


class EmaRunTest(absltest.TestCase):
    def test_run_saves_exports_and_resumes_the_average(self):
        settings = dict(method="sq_free", ema_decay=0.9, epochs=2)
        whole_dir = self.create_tempdir().full_path
        whole = training.train(small_config(whole_dir, **settings))
        saved = keras.models.load_model(whole["model_path"])
        # The saved model is the average, not the weights training left.
        raw = _raw_weights(whole_dir, small_config(whole_dir, **settings))
        self.assertGreater(max(np.abs(s - r).max() for s, r in zip(_weights(saved), raw)), 1e-4)
        # The run's recorded test accuracy is the average's (all 10,000 images).
        images, labels = data.load_arrays("mnist", "test")
        x = images.astype(np.float32) / 255.0
        accuracy = float(np.mean(np.argmax(saved.predict(x, verbose=0), axis=1) == labels))
        self.assertAlmostEqual(accuracy, whole["test_accuracy"], places=4)
        self.assertGreater(accuracy, 0.6)

        # Killed in epoch 2 and resumed from epoch 1's checkpoint: the same
        # average as the whole run.
        split_dir = self.create_tempdir().full_path
        export_dir = os.path.join(split_dir, "export")
        dying = dying_after(training.build_free_step, 13)  # 10 steps per epoch
        with mock.patch.dict(training.STEP_BUILDERS, {"free": dying}):
            with self.assertRaises(Killed):
                training.train(small_config(split_dir, **settings))
        resumed = training.train(small_config(split_dir, export_dir=export_dir, **settings))
        for got, want in zip(
            _weights(keras.models.load_model(resumed["model_path"])), _weights(saved)
        ):
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
        # The export serves the average.
        served = tf.saved_model.load(resumed["export_path"])
        logits = served.signatures["serving_default"](tf.constant(x[:64]))
        logits = logits["logits"].numpy()
        np.testing.assert_allclose(logits, saved(x[:64]).numpy(), rtol=1e-4, atol=1e-4)

    def test_ema_decay_outside_zero_one_is_refused(self):
        for bad in (-0.1, 1.0):
            with self.assertRaisesRegex(ValueError, r"ema_decay must be in \[0, 1\)"):
                training.TrainConfig(ema_decay=bad).resolved()


if __name__ == "__main__":
    absltest.main()
