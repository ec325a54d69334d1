"""Tests for sq_keras.RobustModel: robust training of a user's model with `fit`."""

import json
import os
import shutil
from unittest import mock

import keras
import numpy as np
import tensorflow as tf
from absl.testing import absltest
from absl.testing import parameterized

import sq_keras
from sq_keras import data
from sq_keras import layers
from sq_keras import training
from tests.testing_utils import run_mirrored_probe

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _mnist(split, n):
    images, labels = data.load_arrays("mnist", f"{split}[:{n}]")
    return images.astype(np.float32) / 255.0, labels.astype(np.int64)


def _user_cnn(**dense_kwargs):
    """A user's own small functional CNN returning logits, without a quantizer."""
    inputs = keras.Input((28, 28, 1))
    x = keras.layers.Conv2D(16, 3, strides=2, activation="relu")(inputs)
    x = keras.layers.Conv2D(32, 3, strides=2, activation="relu")(x)
    x = keras.layers.Flatten()(x)
    outputs = keras.layers.Dense(10, dtype="float32", **dense_kwargs)(x)
    return keras.Model(inputs, outputs, name="user_cnn")


def _robust(method="sq_fgsm", *, eps=0.3, learning_rate=1e-3, **kwargs):
    keras.utils.set_random_seed(0)
    model = sq_keras.RobustModel(_user_cnn(), method=method, eps=eps, add_quantizer=True, **kwargs)
    model.compile(optimizer=keras.optimizers.Adam(learning_rate), metrics=["accuracy"])
    return model


@keras.saving.register_keras_serializable(package="sq_keras_tests")
class UserSubclassedCnn(keras.Model):
    """A user's subclassed model: no input shape until its first call."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.conv = keras.layers.Conv2D(16, 3, strides=2, activation="relu")
        self.flatten = keras.layers.Flatten()
        self.logits = keras.layers.Dense(10)

    def call(self, inputs, training=False):
        return self.logits(self.flatten(self.conv(inputs)))


class _RecordingRobustModel(sq_keras.RobustModel):
    """Keeps every batch `train_step` crafted, with the clean batch it came from."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.crafted = []

    def craft(self, images, labels, seed):
        crafted = super().craft(images, labels, seed)
        self.crafted.append((np.array(images), np.array(crafted)))
        return crafted


class RobustModelFitTest(parameterized.TestCase):
    @parameterized.named_parameters(
        ("sq_fgsm", "sq_fgsm", {}, 0.3),
        ("pgd_at", "pgd_at", {"pgd_steps": 3, "pgd_step_size": 0.1}, 0.3),
        ("sq_noisy_sign_noise", "sq_noisy", {"noise": "sign", "noise_scale": 0.2}, 0.2),
    )
    def test_fit_trains_on_examples_inside_the_eps_ball(self, method, settings, radius):
        images, labels = _mnist("train", 128)
        keras.utils.set_random_seed(0)
        model = _RecordingRobustModel(
            _user_cnn(), method=method, eps=0.3, add_quantizer=True, **settings
        )
        # Eagerly, so that the recording sees the very tensors trained on.
        model.compile(optimizer="adam", run_eagerly=True)
        model.fit(images, labels, batch_size=64, epochs=1, shuffle=False, verbose=0)
        self.assertLen(model.crafted, 2)
        for index, (clean, crafted) in enumerate(model.crafted):
            np.testing.assert_array_equal(clean, images[64 * index : 64 * (index + 1)])
            distance = np.abs(crafted - clean).max(axis=(1, 2, 3))
            self.assertLessEqual(distance.max(), radius + 1e-6)
            # Every example moved, most of them by the full radius somewhere.
            self.assertTrue(np.all(distance > 0))
            self.assertGreater(np.mean(distance > 0.99 * radius), 0.9)
            self.assertGreaterEqual(crafted.min(), 0.0)
            self.assertLessEqual(crafted.max(), 1.0)

    def test_loss_falls_over_epochs_and_the_model_learns(self):
        images, labels = _mnist("train", 512)
        test_x, test_y = _mnist("test", 256)
        model = _robust("sq_fgsm", learning_rate=3e-3)
        history = model.fit(
            images,
            labels,
            batch_size=64,
            epochs=4,
            verbose=0,
            callbacks=[sq_keras.callbacks.AlphaSchedule(start=10.0, end=100.0)],
        )
        losses = history.history["loss"]
        self.assertTrue(np.all(np.isfinite(losses)), losses)
        self.assertLess(losses[-1], 0.9 * losses[0], losses)
        results = model.evaluate(test_x, test_y, verbose=0, return_dict=True)
        self.assertGreater(results["accuracy"], 0.5, results)

    @parameterized.named_parameters(("sq_fgsm", "sq_fgsm"), ("gradnorm", "gradnorm"))
    def test_one_fit_step_is_the_apps_train_step(self, method):
        images, labels = _mnist("train", 64)
        config = training.TrainConfig(method=method, mixed_precision="float32").resolved()
        keras.utils.set_random_seed(0)
        model, _, step = training.build_components(
            config, data.get_info("mnist"), tf.distribute.get_strategy(), steps_per_epoch=10
        )
        user_model = keras.models.clone_model(model)
        user_model.set_weights(model.get_weights())
        robust = sq_keras.RobustModel(user_model, method=method, eps=config.eps)
        robust.compile(optimizer=keras.optimizers.Adam(config.learning_rate))

        loss_sum, _, n = step(images, labels)
        history = robust.fit(images, labels, batch_size=64, epochs=1, shuffle=False, verbose=0)
        self.assertAlmostEqual(history.history["loss"][0], float(loss_sum) / int(n), places=5)
        for expected, actual in zip(model.get_weights(), user_model.get_weights()):
            np.testing.assert_allclose(actual, expected, atol=1e-6)

    def test_save_and_load_round_trip(self):
        images, labels = _mnist("train", 128)
        test_x, _ = _mnist("test", 64)
        model = _robust("sq_fgsm", pgd_steps=7, seed=3)
        model.fit(images, labels, batch_size=64, epochs=1, verbose=0)
        path = os.path.join(self.create_tempdir().full_path, "robust.keras")
        model.save(path)

        loaded = keras.models.load_model(path)
        self.assertIsInstance(loaded, sq_keras.RobustModel)
        self.assertEqual(
            json.loads(json.dumps(loaded.get_config())), json.loads(json.dumps(model.get_config()))
        )
        self.assertEqual(loaded.get_config()["pgd_steps"], 7)
        np.testing.assert_allclose(
            loaded.predict(test_x, verbose=0), model.predict(test_x, verbose=0), atol=1e-6
        )
        # Compiled and with its optimizer state: training goes on from step 2.
        self.assertEqual(int(loaded.optimizer.iterations), 2)
        loaded.fit(images, labels, batch_size=64, epochs=1, verbose=0)
        self.assertEqual(int(loaded.optimizer.iterations), 4)
        self.assertLen(layers.quantization_layers(loaded), 1)

    def test_subclassed_model_trains_saves_and_loads(self):
        images, labels = _mnist("train", 256)
        keras.utils.set_random_seed(0)
        model = sq_keras.RobustModel(UserSubclassedCnn(), method="fgsm_rs", eps=0.3)
        model.compile(optimizer=keras.optimizers.Adam(3e-3))
        history = model.fit(images, labels, batch_size=64, epochs=3, verbose=0)
        losses = history.history["loss"]
        self.assertLess(losses[-1], losses[0], losses)
        path = os.path.join(self.create_tempdir().full_path, "robust.keras")
        model.save(path)
        loaded = keras.models.load_model(path)
        np.testing.assert_allclose(
            loaded.predict(images[:32], verbose=0), model.predict(images[:32], verbose=0), atol=1e-6
        )
        self.assertEqual(int(loaded.optimizer.iterations), 12)

    def test_regularization_losses_are_trained_and_reported(self):
        images, labels = _mnist("train", 64)
        keras.utils.set_random_seed(0)
        user_model = _user_cnn(kernel_regularizer=keras.regularizers.L2(10.0))
        model = sq_keras.RobustModel(user_model, method="natural", eps=0.3)
        model.compile(optimizer=keras.optimizers.SGD(1e-9))
        logits = user_model(images)
        cross_entropy = float(
            tf.reduce_mean(keras.losses.sparse_categorical_crossentropy(labels, logits, True))
        )
        penalty = float(tf.add_n(user_model.losses))
        self.assertGreater(penalty, 0.1)
        history = model.fit(images, labels, batch_size=64, epochs=1, verbose=0)
        self.assertAlmostEqual(history.history["loss"][0], cross_entropy + penalty, places=4)

    def test_mixed_float16_trains_with_loss_scaling(self):
        images, labels = _mnist("train", 256)
        keras.mixed_precision.set_global_policy("mixed_float16")
        try:
            model = _robust("sq_fgsm", learning_rate=3e-3)
            self.assertIsInstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
            conv = model.classifier.get_layer("user_cnn").layers[1]
            self.assertEqual((conv.compute_dtype, conv.variable_dtype), ("float16", "float32"))
            history = model.fit(images, labels, batch_size=64, epochs=3, verbose=0)
        finally:
            keras.mixed_precision.set_global_policy("float32")
        losses = history.history["loss"]
        self.assertTrue(np.all(np.isfinite(losses)), losses)
        self.assertLess(losses[-1], losses[0], losses)
        self.assertEqual(model.predict(images[:8], verbose=0).dtype, np.float32)

    def _probe(self, method):
        """tests/mirrored_step_probe.py's `robust_fit` comparison, as JSON."""
        return run_mirrored_probe(self, "robust_fit", method)

    def test_mirrored_fit_equals_single_device_fit(self):
        # gradnorm has no randomness: both ways must take the same step.
        result = self._probe("gradnorm")
        self.assertEqual(result["replicas"], 2)
        self.assertAlmostEqual(result["single_loss"], result["mirrored_loss"], places=5)
        self.assertLess(result["max_weight_diff"], 1e-5)

    def test_mirrored_fit_crafts_inside_the_eps_ball(self):
        result = self._probe("sq_fgsm")
        self.assertEqual(result["replicas"], 2)
        self.assertTrue(np.isfinite(result["mirrored_loss"]))
        self.assertAlmostEqual(result["max_crafted_distance"], 0.3, places=5)


def _trained_on(model, fit):
    """Runs `fit()` eagerly; returns every batch the free updates trained on."""
    batches = []
    original = training.free.loss_and_gradients

    def recording(model_fn, variables, images, *args, **kwargs):
        batches.append(np.array(images))
        return original(model_fn, variables, images, *args, **kwargs)

    with mock.patch.object(training.free, "loss_and_gradients", side_effect=recording):
        fit()
    return batches


class RobustModelFreeTest(parameterized.TestCase):
    @parameterized.named_parameters(
        ("float32", {}), ("int8", {"free_memory_dtype": "int8"}), ("replays", {"free_replays": 2})
    )
    def test_fit_keeps_every_trained_example_in_the_eps_ball(self, settings):
        images, labels = _mnist("train", 128)
        model = _robust("sq_free", **settings)
        model.compile(optimizer="adam", run_eagerly=True)
        batches = _trained_on(
            model, lambda: model.fit(images, labels, batch_size=64, epochs=2, verbose=0)
        )
        replays = settings.get("free_replays", 1)
        self.assertLen(batches, 2 * 2 * replays)
        memory = model.perturbations.numpy().astype(np.float32)
        if settings.get("free_memory_dtype") == "int8":
            memory *= 0.3 / 127
        # Examples are indexed 0..127 and shuffled with their index: the
        # memory holds what each one's last update moved it to.
        trained = np.concatenate(batches)
        self.assertLessEqual(trained.min(), 1.0)
        self.assertGreaterEqual(trained.min(), 0.0)
        self.assertLessEqual(trained.max(), 1.0)
        self.assertLessEqual(np.abs(memory).max(), 0.3 + 1e-6)
        self.assertGreater(np.mean(np.abs(memory) > 0.29), 0.4)  # moved, most to the radius
        for batch in batches:
            # Every trained batch is some 64 training images within eps.
            nearest = np.abs(batch[:, None] - images[None]).max(axis=(2, 3, 4)).min(axis=1)
            self.assertLessEqual(nearest.max(), 0.3 + 1e-6)

    def test_arrays_are_visited_in_a_new_order_every_epoch_after_a_global_seed(self):
        # Keras's own shuffling of arrays repeats one order every epoch after
        # keras.utils.set_random_seed; free training collapses on a repeated order.
        images, labels = _mnist("train", 256)
        model = _RecordingIndices(
            _user_cnn(), method="sq_free", eps=0.3, add_quantizer=True, num_train=256
        )
        model.compile(optimizer="adam", run_eagerly=True)
        keras.utils.set_random_seed(0)
        model.fit(images, labels, batch_size=64, epochs=3, verbose=0)
        epochs = [np.concatenate(model.orders[4 * e : 4 * (e + 1)]) for e in range(3)]
        for order in epochs:
            self.assertEqual(sorted(order.tolist()), list(range(256)))
        self.assertFalse(np.array_equal(epochs[0], epochs[1]))
        self.assertFalse(np.array_equal(epochs[1], epochs[2]))
        # Each image still comes with its own index and label.
        for batch_images, batch_indices, batch_labels in model.batches:
            np.testing.assert_array_equal(batch_images, images[batch_indices])
            np.testing.assert_array_equal(batch_labels, labels[batch_indices])

    def test_validation_split_holds_out_the_last_examples(self):
        images, labels = _mnist("train", 160)
        model = _RecordingIndices(
            _user_cnn(), method="sq_free", eps=0.3, add_quantizer=True, num_train=160
        )
        model.compile(optimizer="adam", metrics=["accuracy"], run_eagerly=True)
        history = model.fit(
            images, labels, batch_size=64, epochs=1, validation_split=0.2, verbose=0
        )
        self.assertEqual(sorted(np.concatenate(model.orders).tolist()), list(range(128)))
        self.assertIn("val_accuracy", history.history)

    def test_one_fit_step_is_the_apps_train_step(self):
        images, labels = _mnist("train", 64)
        config = training.TrainConfig(method="sq_free", mixed_precision="float32").resolved()
        keras.utils.set_random_seed(0)
        model, _, step = training.build_components(
            config,
            data.get_info("mnist"),
            tf.distribute.get_strategy(),
            num_train=128,
            steps_per_epoch=10,
        )
        user_model = keras.models.clone_model(model)
        user_model.set_weights(model.get_weights())
        robust = sq_keras.RobustModel(user_model, method="sq_free", eps=config.eps, num_train=128)
        robust.compile(optimizer=keras.optimizers.Adam(config.learning_rate))

        loss_sum, _, n = step(images, labels, np.arange(64))
        history = robust.fit(images, labels, batch_size=64, epochs=1, shuffle=False, verbose=0)
        self.assertAlmostEqual(history.history["loss"][0], float(loss_sum) / int(n), places=5)
        for expected, actual in zip(model.get_weights(), user_model.get_weights()):
            np.testing.assert_allclose(actual, expected, atol=1e-6)
        np.testing.assert_allclose(
            robust.perturbations.numpy(), step.memory.variable.numpy(), atol=1e-6
        )

    def test_a_killed_fit_resumed_by_backup_and_restore_ends_identical(self):
        images, labels = _mnist("train", 256)
        backup = self.create_tempdir().full_path

        def fit(model, *callbacks):
            return model.fit(
                images,
                labels,
                batch_size=64,
                epochs=3,
                shuffle=False,
                verbose=0,
                callbacks=[keras.callbacks.BackupAndRestore(backup), *callbacks],
            )

        whole = _robust("sq_free")
        fit(whole)
        shutil.rmtree(backup, ignore_errors=True)  # a finished fit removes it itself
        dying = _robust("sq_free")
        with self.assertRaises(RuntimeError):
            fit(dying, _KillAfterEpoch(1))
        resumed = _robust("sq_free")
        fit(resumed)
        self.assertEqual(int(resumed.optimizer.iterations), 12)
        for expected, actual in zip(whole.get_weights(), resumed.get_weights()):
            np.testing.assert_array_equal(actual, expected)
        np.testing.assert_array_equal(resumed.perturbations.numpy(), whole.perturbations.numpy())

    def test_the_memory_is_saved_and_loaded_with_the_model(self):
        images, labels = _mnist("train", 128)
        model = _robust("sq_free")
        model.fit(images, labels, batch_size=64, epochs=1, verbose=0)
        path = os.path.join(self.create_tempdir().full_path, "robust.keras")
        model.save(path)
        loaded = keras.models.load_model(path)
        self.assertEqual(loaded.num_train, 128)
        np.testing.assert_array_equal(loaded.perturbations.numpy(), model.perturbations.numpy())
        self.assertGreater(np.abs(model.perturbations.numpy()).mean(), 0.1)

    def test_a_dataset_with_indices_trains_the_examples_it_names(self):
        images, labels = _mnist("train", 96)
        ds = data.with_indices(tf.data.Dataset.from_tensor_slices((images[32:], labels[32:])))
        model = _robust("sq_free", num_train=64, free_init="zeros")
        model.fit(ds.shuffle(64, seed=0).batch(32), epochs=1, verbose=0)
        moved = np.abs(model.perturbations.numpy()).max(axis=(1, 2, 3))
        self.assertTrue(np.all(moved > 0.1), moved)
        # The start of example i is built around image 32 + i.
        start = model.craft(images[32:], labels[32:], 0, indices=np.arange(64)).numpy()
        self.assertLessEqual(np.abs(start - images[32:]).max(), 0.3 + 1e-6)

    def test_without_a_memory_any_input_trains_and_nothing_is_kept(self):
        images, labels = _mnist("train", 128)
        model = _robust("sq_free", free_memory="none", free_replays=2)
        ds = tf.data.Dataset.from_tensor_slices((images, labels)).batch(64)
        history = model.fit(ds, epochs=2, verbose=0)
        self.assertIsNone(model.perturbations)
        self.assertEqual(int(model.optimizer.iterations), 8)
        self.assertTrue(np.all(np.isfinite(history.history["loss"])))

    @parameterized.named_parameters(
        (
            "dataset_without_num_train",
            lambda x, y: (data.with_indices(tf.data.Dataset.from_tensor_slices((x, y))).batch(8),),
            "pass num_train=",
        ),
        ("dict_without_indices", lambda x, y: ({"images": x}, y), "keys 'images' and 'indices'"),
        (
            "indices_beyond_num_train",
            lambda x, y: ({"images": x, "indices": np.arange(16) + 100}, y),
            r"must lie in \[0, num_train=64\)",
        ),
    )
    def test_inputs_without_indices_say_how_to_give_them(self, make_args, message):
        images, labels = _mnist("train", 16)
        model = _robust("sq_free", num_train=None if "pass num_train" in message else 64)
        with self.assertRaisesRegex(ValueError, message):
            model.fit(*make_args(images, labels), verbose=0)

    def test_a_memory_too_large_for_the_host_is_refused_with_the_alternatives(self):
        with self.assertRaisesRegex(training.MemoryBudgetError, "free_memory='none'"):
            sq_keras.RobustModel(
                _user_cnn(), method="sq_free", eps=0.3, add_quantizer=True, num_train=10**10
            )

    def test_mirrored_fit_equals_single_device_fit(self):
        result = run_mirrored_probe(self, "robust_fit", "sq_free")
        self.assertEqual(result["replicas"], 2)
        self.assertAlmostEqual(result["single_loss"], result["mirrored_loss"], places=5)
        # The weights and, last, the memory.
        self.assertLess(result["max_weight_diff"], 1e-5)


class _RecordingIndices(sq_keras.RobustModel):
    """Keeps the images, indices and labels of every batch `train_step` got."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.orders, self.batches = [], []

    def train_step(self, data):
        inputs, labels = data
        indices = np.array(inputs["indices"])
        self.orders.append(indices)
        self.batches.append((np.array(inputs["images"]), indices, np.array(labels)))
        return super().train_step(data)


class _KillAfterEpoch(keras.callbacks.Callback):
    def __init__(self, epoch):
        super().__init__()
        self.epoch = epoch

    def on_epoch_end(self, epoch, logs=None):
        if epoch == self.epoch:
            raise RuntimeError("killed")


class RobustModelArgumentsTest(parameterized.TestCase):
    def test_quantizer_method_without_quantizer_says_how_to_fix(self):
        with self.assertRaisesRegex(ValueError, "has none. Pass add_quantizer=True"):
            sq_keras.RobustModel(_user_cnn(), method="sq_fgsm", eps=0.3)

    def test_add_quantizer_prepends_one_quantizer_with_its_settings(self):
        model = sq_keras.RobustModel(
            _user_cnn(), method="fgsm_rs", eps=0.3, add_quantizer={"num_thresholds": 3}
        )
        (quantizer,) = layers.quantization_layers(model)
        self.assertEqual(quantizer.num_thresholds, 3)
        self.assertIs(model.classifier.layers[1], quantizer)
        # A model that has one already is kept as it is.
        again = sq_keras.RobustModel(
            model.classifier, method="sq_fgsm", eps=0.3, add_quantizer=True
        )
        self.assertIs(again.classifier, model.classifier)
        self.assertLen(layers.quantization_layers(again), 1)

    def test_plain_method_keeps_the_users_model(self):
        user_model = _user_cnn()
        model = sq_keras.RobustModel(user_model, method="pgd_at", eps=0.3)
        self.assertIs(model.classifier, user_model)
        self.assertEmpty(layers.quantization_layers(model))

    @parameterized.named_parameters(
        ("unknown_method", dict(method="madry"), "Unknown method 'madry'"),
        ("unknown_setting", dict(pgd_step=3), r"Unknown settings \['pgd_step'\]"),
        ("eps_too_large", dict(eps=3.0), "eps must be in"),
        ("eps_not_a_number", dict(eps="0.3"), "`eps` must be a number"),
        ("bad_stand_in", dict(stand_in="zero"), "stand_in must be one of"),
        ("bad_pgd_steps", dict(pgd_steps=0), "pgd_steps must be >= 1"),
        ("bad_add_quantizer", dict(add_quantizer="yes"), "`add_quantizer` must be"),
    )
    def test_bad_arguments_are_refused(self, overrides, message):
        kwargs = {"method": "sq_fgsm", "eps": 0.3, "add_quantizer": True, **overrides}
        with self.assertRaisesRegex(ValueError, message):
            sq_keras.RobustModel(_user_cnn(), **kwargs)

    def test_not_a_keras_model_is_refused(self):
        with self.assertRaisesRegex(ValueError, "must be a keras.Model"):
            sq_keras.RobustModel(lambda x: x, method="natural", eps=0.3)

    def test_craft_before_compile_says_to_compile(self):
        images, labels = _mnist("train", 4)
        model = sq_keras.RobustModel(_user_cnn(), method="fgsm_rs", eps=0.3)
        with self.assertRaisesRegex(RuntimeError, r"compile\(\)"):
            model.craft(images, labels, seed=0)

    def test_sample_weights_are_refused(self):
        images, labels = _mnist("train", 8)
        model = _robust("natural")
        with self.assertRaisesRegex(ValueError, "sample weights"):
            model.fit(images, labels, sample_weight=np.ones(8), verbose=0)


if __name__ == "__main__":
    absltest.main()
