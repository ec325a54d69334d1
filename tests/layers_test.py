"""Tests for sq_keras.layers."""

import os

import keras
import numpy as np
import tensorflow as tf
from absl.testing import parameterized

from sq_keras import layers
from sq_keras.layers import SoftQuantization


def _sigmoid(z):
    return 0.5 * (1.0 + np.tanh(0.5 * z))


class SoftQuantizationTest(tf.test.TestCase, parameterized.TestCase):
    def tearDown(self):
        keras.mixed_precision.set_global_policy("float32")
        super().tearDown()

    @parameterized.named_parameters(
        ("shared_k1", 1, False, (1,)),
        ("shared_k3", 3, False, (3,)),
        ("per_channel_k2", 2, True, (3, 2)),
    )
    def test_shapes_and_weights(self, k, per_channel, threshold_shape):
        layer = SoftQuantization(num_thresholds=k, per_channel=per_channel)
        x = np.random.default_rng(0).random((2, 5, 5, 3), dtype=np.float32)
        y = layer(x)
        self.assertEqual(tuple(y.shape), (2, 5, 5, 3))
        self.assertEqual(layer.compute_output_shape((2, 5, 5, 3)), (2, 5, 5, 3))
        self.assertEqual(tuple(layer.thresholds.shape), threshold_shape)
        self.assertLen(layer.trainable_weights, 1)
        self.assertLen(layer.non_trainable_weights, 1)
        self.assertEqual(float(layer.alpha.numpy()), 10.0)
        # Evenly spaced inside (0, 1).
        expected = np.arange(1, k + 1) / (k + 1)
        self.assertAllClose(np.broadcast_to(expected, threshold_shape), layer.thresholds)

    def test_hand_computed_values(self):
        layer = SoftQuantization(num_thresholds=2, alpha=5.0)
        x = np.array([[0.0, 0.2, 0.5, 0.9]], np.float32)
        t = np.array([1 / 3, 2 / 3])
        expected = np.mean(_sigmoid(5.0 * (x[..., None] - t)), axis=-1)
        self.assertAllClose(expected, layer(x), atol=1e-6)

    def test_steep_layer_is_a_staircase(self):
        layer = SoftQuantization(num_thresholds=3, alpha=1000.0)
        x = np.array([0.1, 0.3, 0.6, 0.9], np.float32)
        self.assertAllClose([0.0, 1 / 3, 2 / 3, 1.0], layer(x), atol=1e-4)

    def test_hard_mode_only_at_inference(self):
        layer = SoftQuantization(num_thresholds=1, alpha=4.0, hard=True)
        x = np.array([0.4, 0.6], np.float32)
        self.assertAllEqual([0.0, 1.0], layer(x, training=False))
        self.assertAllClose(_sigmoid(4.0 * (x - 0.5)), layer(x, training=True), atol=1e-6)

    def test_config_round_trip(self):
        layer = SoftQuantization(
            num_thresholds=4, alpha=25.0, per_channel=True, hard=True, name="sq"
        )
        clone = SoftQuantization.from_config(layer.get_config())
        self.assertEqual(layer.get_config(), clone.get_config())
        self.assertEqual(clone.num_thresholds, 4)
        self.assertTrue(clone.per_channel and clone.hard)

    def test_keras_save_load_round_trip_keeps_learned_values(self):
        inputs = keras.Input((4, 4, 1))
        q = SoftQuantization(num_thresholds=2, name="sq")
        model = keras.Model(inputs, keras.layers.Flatten()(q(inputs)))
        q.thresholds.assign([0.2, 0.7])
        layers.set_alpha(model, 55.0)
        path = os.path.join(self.get_temp_dir(), "m.keras")
        model.save(path)
        loaded = keras.models.load_model(path)
        sq = loaded.get_layer("sq")
        self.assertIsInstance(sq, SoftQuantization)
        self.assertAllClose([0.2, 0.7], sq.thresholds)
        self.assertEqual(55.0, float(sq.alpha.numpy()))
        x = np.random.default_rng(1).random((3, 4, 4, 1), dtype=np.float32)
        self.assertAllClose(model(x), loaded(x))

    def test_input_gradient_is_near_zero_on_plateaus(self):
        layer = SoftQuantization(num_thresholds=1, alpha=100.0)
        plateau = tf.constant([0.0, 0.1, 0.9, 1.0])
        edge = tf.constant([0.5])
        with tf.GradientTape(persistent=True) as tape:
            tape.watch([plateau, edge])
            y_plateau = tf.reduce_sum(layer(plateau))
            y_edge = tf.reduce_sum(layer(edge))
        self.assertLess(float(tf.reduce_max(tape.gradient(y_plateau, plateau))), 1e-10)
        self.assertAllClose([25.0], tape.gradient(y_edge, edge))  # alpha / 4

    def test_input_gradient_matches_finite_differences(self):
        layer = SoftQuantization(num_thresholds=3, alpha=8.0, per_channel=True)
        layer.build((1, 2, 2, 2))
        layer.thresholds.assign([[0.2, 0.5, 0.8], [0.3, 0.4, 0.6]])
        x = tf.constant(np.random.default_rng(2).random((1, 2, 2, 2)), tf.float64)
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = tf.reduce_sum(tf.cast(layer(x), tf.float64))
        grad = tape.gradient(y, x).numpy()
        h = 1e-3
        numeric = np.zeros_like(grad)
        base = x.numpy()
        for idx in np.ndindex(base.shape):
            up, down = base.copy(), base.copy()
            up[idx] += h
            down[idx] -= h
            numeric[idx] = (
                float(tf.reduce_sum(layer(up.astype(np.float32))))
                - float(tf.reduce_sum(layer(down.astype(np.float32))))
            ) / (2 * h)
        self.assertAllClose(numeric, grad, rtol=2e-2, atol=2e-3)

    def test_thresholds_stay_sorted_and_in_range_after_updates(self):
        inputs = keras.Input((3,))
        q = SoftQuantization(num_thresholds=3)
        model = keras.Model(inputs, q(inputs))
        optimizer = keras.optimizers.SGD(1.0)
        # A gradient that pushes the thresholds past each other and out of [0, 1].
        grads = [tf.constant([-5.0, 3.0, -0.6])]
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        t = q.thresholds.numpy()
        self.assertAllEqual(np.sort(t), t)
        self.assertGreaterEqual(t.min(), 0.0)
        self.assertLessEqual(t.max(), 1.0)
        self.assertAllClose([0.0, 1.0, 1.0], t)

    def test_threshold_margin_places_and_keeps_thresholds_inside(self):
        inputs = keras.Input((3,))
        q = SoftQuantization(num_thresholds=3, threshold_margin=0.35)
        model = keras.Model(inputs, q(inputs))
        # Evenly inside [0.35, 0.65] from the start.
        self.assertAllClose([0.425, 0.5, 0.575], q.thresholds.numpy())
        optimizer = keras.optimizers.SGD(1.0)
        grads = [tf.constant([1.0, 0.0, -1.0])]
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        self.assertAllClose([0.35, 0.5, 0.65], q.thresholds.numpy())
        # A pixel at 0 or 1 moved by 0.3 stays on its plateau.
        steep = SoftQuantization(num_thresholds=3, alpha=1000.0, threshold_margin=0.35)
        x = np.array([[0.0, 0.3, 0.7, 1.0]], np.float32)
        self.assertAllClose([[0.0, 0.0, 1.0, 1.0]], steep(x).numpy(), atol=1e-6)

    def test_threshold_margin_survives_saving(self):
        inputs = keras.Input((2,))
        model = keras.Model(inputs, SoftQuantization(2, threshold_margin=0.4)(inputs))
        path = os.path.join(self.get_temp_dir(), "m.keras")
        model.save(path)
        layer = keras.saving.load_model(path).layers[-1]
        self.assertEqual(layer.threshold_margin, 0.4)
        self.assertEqual(layer.thresholds.constraint.margin, 0.4)

    def test_works_inside_tf_data_map(self):
        layer = SoftQuantization(num_thresholds=1, alpha=1000.0)
        ds = tf.data.Dataset.from_tensor_slices(np.array([[0.2], [0.8]], np.float32))
        out = np.stack(list(ds.map(layer).as_numpy_iterator()))
        self.assertAllClose([[0.0], [1.0]], out, atol=1e-6)

    def test_runs_in_float32_under_mixed_bfloat16(self):
        keras.mixed_precision.set_global_policy("mixed_bfloat16")
        inputs = keras.Input((4,))
        q = SoftQuantization(num_thresholds=1, alpha=200.0)
        dense = keras.layers.Dense(2)
        model = keras.Model(inputs, dense(q(inputs)))
        self.assertEqual(q.compute_dtype, "float32")
        self.assertEqual(dense.compute_dtype, "bfloat16")
        # 0.501 and 0.499 sit 0.001 from the threshold: float32 keeps them apart.
        x = np.array([[0.499, 0.501, 0.0, 1.0]], np.float32)
        y = q(x).numpy()
        self.assertAllClose(_sigmoid(200.0 * (x - 0.5)), y, atol=1e-6)
        self.assertEqual(model(x).dtype, "bfloat16")

    @parameterized.named_parameters(
        ("zero_thresholds", {"num_thresholds": 0}),
        ("float_thresholds", {"num_thresholds": 1.5}),
        ("negative_alpha", {"alpha": -1.0}),
        ("margin_too_large", {"threshold_margin": 0.5}),
        ("negative_margin", {"threshold_margin": -0.1}),
    )
    def test_invalid_arguments(self, kwargs):
        with self.assertRaisesRegex(ValueError, "Received"):
            SoftQuantization(**kwargs)


class AlphaScheduleTest(parameterized.TestCase):
    @parameterized.named_parameters(
        ("geometric", "geometric", [10.0, 10 * 10**0.5, 100.0]),
        ("linear", "linear", [10.0, 55.0, 100.0]),
        ("constant", "constant", [100.0, 100.0, 100.0]),
    )
    def test_schedules(self, kind, expected):
        got = [layers.alpha_schedule(e, 3, start=10.0, end=100.0, kind=kind) for e in range(3)]
        np.testing.assert_allclose(expected, got)

    def test_set_alpha_reaches_nested_layers(self):
        inner_in = keras.Input((2,))
        inner = keras.Model(inner_in, SoftQuantization()(inner_in))
        outer_in = keras.Input((2,))
        outer = keras.Model(outer_in, SoftQuantization()(inner(outer_in)))
        layers.set_alpha(outer, 42.0)
        found = layers.quantization_layers(outer)
        self.assertLen(found, 2)
        self.assertEqual([42.0, 42.0], [float(q.alpha.numpy()) for q in found])


if __name__ == "__main__":
    tf.test.main()
