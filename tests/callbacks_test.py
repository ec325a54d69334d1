"""Tests for sq_keras.callbacks: alpha annealing and the grad_l1 curve in `fit`."""

import os

import keras
import numpy as np
import tensorflow as tf
from absl.testing import absltest
from absl.testing import parameterized
from tensorboard.backend.event_processing import event_accumulator

from sq_keras import callbacks
from sq_keras import data
from sq_keras import layers
from sq_keras import training


def _mnist(split, n):
    images, labels = data.load_arrays("mnist", f"{split}[:{n}]")
    return images.astype(np.float32) / 255.0, labels.astype(np.int64)


def _quantized_cnn(alpha=1.0):
    """A user's small Keras CNN with a SoftQuantization front, compiled."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((28, 28, 1))
    x = layers.SoftQuantization(alpha=alpha)(inputs)
    x = keras.layers.Conv2D(8, 5, strides=2, activation="relu")(x)
    x = keras.layers.Flatten()(x)
    model = keras.Model(inputs, keras.layers.Dense(10)(x))
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


class _AlphaRecorder(keras.callbacks.Callback):
    """The quantizer's alpha at every train batch, as the steps see it."""

    def __init__(self):
        super().__init__()
        self.alphas = []

    def on_train_batch_begin(self, batch, logs=None):
        self.alphas.append(float(layers.quantization_layers(self.model)[0].alpha.numpy()))


class AlphaScheduleTest(parameterized.TestCase):
    def test_every_epoch_trains_with_its_scheduled_alpha(self):
        images, labels = _mnist("train", 128)
        model = _quantized_cnn()
        recorder = _AlphaRecorder()
        history = model.fit(
            images,
            labels,
            batch_size=64,
            epochs=3,
            verbose=0,
            callbacks=[callbacks.AlphaSchedule(start=10.0, end=1000.0), recorder],
        )
        # Geometric: a constant ratio of 10 between the 3 epochs, 2 batches each.
        np.testing.assert_allclose(recorder.alphas, [10, 10, 100, 100, 1000, 1000], rtol=1e-5)
        np.testing.assert_allclose(history.history["alpha"], [10.0, 100.0, 1000.0], rtol=1e-6)
        self.assertAlmostEqual(
            float(layers.quantization_layers(model)[0].alpha.numpy()), 1000.0, places=2
        )

    def test_schedule_matches_apps_train_and_holds_its_end(self):
        images, labels = _mnist("train", 64)
        model = _quantized_cnn()
        schedule = callbacks.AlphaSchedule(start=10.0, end=40.0, kind="linear", epochs=3)
        history = model.fit(images, labels, epochs=4, verbose=0, callbacks=[schedule])
        config = training.TrainConfig(
            epochs=3, alpha_start=10.0, alpha_end=40.0, alpha_schedule="linear"
        )
        expected = [training.alpha_at(config, epoch) for epoch in range(3)] + [40.0]
        self.assertEqual(expected, [10.0, 25.0, 40.0, 40.0])
        np.testing.assert_allclose(history.history["alpha"], expected, rtol=1e-6)

    def test_model_without_quantizer_is_refused_at_fit(self):
        images, labels = _mnist("train", 32)
        model = keras.Sequential([keras.Input((28, 28, 1)), keras.layers.Flatten()])
        model.add(keras.layers.Dense(10))
        model.compile("adam", "sparse_categorical_crossentropy")
        with self.assertRaisesRegex(ValueError, "no SoftQuantization layer.*add_quantizer=True"):
            model.fit(images, labels, verbose=0, callbacks=[callbacks.AlphaSchedule()])

    @parameterized.named_parameters(
        ("start_zero", dict(start=0.0), "start"),
        ("end_negative", dict(end=-1.0), "end"),
        ("start_string", dict(start="10"), "start"),
        ("unknown_kind", dict(kind="cosine"), "kind"),
        ("epochs_zero", dict(epochs=0), "epochs"),
        ("epochs_float", dict(epochs=2.0), "epochs"),
    )
    def test_bad_arguments_name_the_argument(self, kwargs, name):
        with self.assertRaisesRegex(ValueError, f"`{name}`.*Received"):
            callbacks.AlphaSchedule(**kwargs)


class GradientNormLoggerTest(parameterized.TestCase):
    def test_grad_l1_reaches_history_and_tensorboard(self):
        images, labels = _mnist("train", 256)
        probe_x, probe_y = _mnist("test", 64)
        model = _quantized_cnn(alpha=10.0)
        logger = callbacks.GradientNormLogger(probe_x, probe_y)
        logdir = self.create_tempdir().full_path
        history = model.fit(
            images,
            labels,
            batch_size=64,
            epochs=2,
            verbose=0,
            callbacks=[logger, keras.callbacks.TensorBoard(logdir)],
        )
        grad_l1 = history.history["grad_l1"]
        self.assertLen(grad_l1, 2)
        self.assertTrue(all(v > 0 for v in grad_l1), grad_l1)
        # The last value is the trained model's, on the probe examples.
        expected = training.input_gradient_stats(model, probe_x, probe_y)
        self.assertAlmostEqual(grad_l1[-1], expected[0], places=5)
        self.assertAlmostEqual(history.history["grad_zero_fraction"][-1], expected[1], places=6)
        self.assertEqual([values[0] for values in logger.history], grad_l1)

        acc = event_accumulator.EventAccumulator(
            os.path.join(logdir, "train"), size_guidance={"tensors": 0}
        )
        acc.Reload()
        events = acc.Tensors("epoch_grad_l1")
        self.assertEqual([e.step for e in events], [0, 1])
        written = [float(tf.make_ndarray(e.tensor_proto)) for e in events]
        np.testing.assert_allclose(written, grad_l1, rtol=1e-6)

    def test_gradient_falls_as_the_quantizer_steepens(self):
        # The soft staircase's plateaus flatten the input gradient: the
        # quantity the logger exists to show.
        images, labels = _mnist("train", 256)
        probe_x, probe_y = _mnist("test", 64)
        model = _quantized_cnn(alpha=10.0)
        logger = callbacks.GradientNormLogger(probe_x, probe_y)
        model.fit(images, labels, batch_size=64, epochs=1, verbose=0)
        history = model.fit(
            images,
            labels,
            batch_size=64,
            epochs=2,
            verbose=0,
            callbacks=[callbacks.AlphaSchedule(start=10.0, end=1000.0), logger],
        )
        first, last = history.history["grad_l1"]
        self.assertLess(last, 0.5 * first)

    @parameterized.named_parameters(
        ("empty", np.zeros((0, 28, 28, 1)), np.zeros((0,), np.int64), "non-empty"),
        ("length_mismatch", np.zeros((4, 28, 28, 1)), np.zeros((3,), np.int64), "shape"),
        ("float_labels", np.zeros((4, 28, 28, 1)), np.zeros((4,)), "integers"),
    )
    def test_bad_probe_is_refused(self, images, labels, message):
        with self.assertRaisesRegex(ValueError, message):
            callbacks.GradientNormLogger(images, labels)


if __name__ == "__main__":
    absltest.main()
