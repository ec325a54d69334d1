"""Tests for sq_keras.training.free: free adversarial training on real MNIST batches."""

import os
from unittest import mock

import keras
import numpy as np
import tensorflow as tf
from absl.testing import absltest
from absl.testing import parameterized

from sq_keras import attacks
from sq_keras import data
from sq_keras import models
from sq_keras import precision
from sq_keras import training
from sq_keras.training import fast_backward
from tests.testing_utils import run_mirrored_probe
from tests.training.fixtures import Killed
from tests.training.fixtures import assert_the_models_own_weight_gradients
from tests.training.fixtures import dying_after
from tests.training.fixtures import small_config

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
EPS = 0.3


def _mnist(n):
    images, labels = data.load_arrays("mnist", f"train[:{n}]")
    return images.astype(np.float32) / 255.0, labels.astype(np.int64)


def _components(num_train, method="sq_free", memory_shard=(0, 1), **overrides):
    config = training.TrainConfig(
        dataset="mnist", method=method, eps=EPS, mixed_precision="float32", **overrides
    ).resolved()
    keras.utils.set_random_seed(0)
    # MNIST's default schedule (piecewise) needs the run's length.
    return training.build_components(
        config,
        data.get_info("mnist"),
        tf.distribute.get_strategy(),
        num_train=num_train,
        steps_per_epoch=10,
        memory_shard=memory_shard,
    )


def _cross_entropy(model, images, labels):
    logits = model(images, training=False)
    return float(tf.reduce_mean(attacks.cross_entropy_loss(logits, labels)))


def _own_weight_gradients(model, images, labels):
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(attacks.cross_entropy_loss(model(images, training=True), labels))
    return tape.gradient(loss, model.trainable_variables)


def _model(quantizer):
    keras.utils.set_random_seed(0)
    # At alpha 100 the quantizer's own input derivative nearly vanishes.
    return models.build(
        "madry_mnist",
        input_shape=(28, 28, 1),
        num_classes=10,
        soft_quantization={"num_thresholds": 1, "alpha": 100.0} if quantizer else None,
    )


class SharedBackwardPassTest(parameterized.TestCase):
    @parameterized.named_parameters(
        ("identity_stand_in", "identity"), ("smooth_stand_in", "smooth"), ("no_quantizer", None)
    )
    def test_input_gradient_is_the_bpda_one_and_weight_gradients_the_models(self, stand_in):
        images, labels = _mnist(32)
        model = _model(quantizer=stand_in is not None)
        x = tf.constant(images)
        shared = training.shared_backward_model(model, stand_in=stand_in or "identity")
        # The float32 first convolution gets its fast input gradient.
        self.assertIn("conv1_fast_input_gradient", [layer.name for layer in shared.layers])
        np.testing.assert_array_equal(shared(x, training=True), model(x, training=True))

        _, _, grads, input_grad = training.free.loss_and_gradients(
            lambda v: shared(v, training=True), model.trainable_variables, x, labels
        )
        _, _, true_grad = attacks.loss_gradient(lambda v: model(v, training=True), x, labels)
        expected_grad = true_grad
        if stand_in:
            bpda_model = attacks.bpda(model, stand_in=stand_in)
            _, _, expected_grad = attacks.loss_gradient(bpda_model, x, labels)
        tolerance = 1e-5 * np.abs(expected_grad).max()
        np.testing.assert_allclose(input_grad, expected_grad, rtol=0, atol=tolerance)
        if stand_in:
            self.assertGreater(np.abs(expected_grad - true_grad).max(), 100 * tolerance)

        # The weights, thresholds included, get the model's own gradient.
        assert_the_models_own_weight_gradients(self, model, x, labels, grads)

    @parameterized.named_parameters(("without_amx", True), ("with_amx", False))
    def test_bfloat16_first_convolution_is_rewritten_only_where_its_kernel_is_slow(self, slow):
        images, labels = _mnist(32)
        x = tf.constant(images)
        # The float32 model's gradients are the reference both bfloat16
        # backward passes round away from.
        reference = _model(quantizer=True)
        want_input = attacks.loss_gradient(attacks.bpda(reference), x, labels)[2]
        want = _own_weight_gradients(reference, x, labels)
        keras.mixed_precision.set_global_policy("mixed_bfloat16")
        self.addCleanup(keras.mixed_precision.set_global_policy, "float32")
        model = _model(quantizer=True)
        with mock.patch.object(
            fast_backward, "tensorflow_bfloat16_input_gradient_is_slow", return_value=slow
        ):
            shared = training.shared_backward_model(model)
        names = [layer.name for layer in shared.layers]
        self.assertEqual("conv1_fast_input_gradient" in names, slow)
        np.testing.assert_array_equal(shared(x, training=True), model(x, training=True))
        _, _, grads, input_grad = training.free.loss_and_gradients(
            lambda v: shared(v, training=True), model.trainable_variables, x, labels
        )
        tf_input = attacks.loss_gradient(attacks.bpda(model), x, labels)[2]
        tf_grads = _own_weight_gradients(model, x, labels)

        def error(got, reference):
            reference = np.asarray(reference, np.float32)
            return np.abs(np.asarray(got, np.float32) - reference).max() / np.abs(reference).max()

        # No further from float32 than TensorFlow's own bfloat16 backward pass.
        self.assertLessEqual(
            error(input_grad, want_input), 1.1 * error(tf_input, want_input) + 0.01
        )
        for variable, got, tf_got, reference in zip(
            model.trainable_variables, grads, tf_grads, want
        ):
            self.assertEqual(got.dtype, variable.dtype, variable.path)
            self.assertLessEqual(
                error(got, reference), 1.1 * error(tf_got, reference) + 0.01, variable.path
            )

    def test_tensorflow_bfloat16_kernel_counts_as_slow_on_a_cpu_without_amx(self):
        for flags, slow in (
            ({"avx512_bf16"}, True),
            ({"avx512_bf16", "amx_bf16"}, False),
            (set(), True),  # emulated bfloat16
        ):
            with mock.patch.object(precision, "_cpu_flags", return_value=flags):
                self.assertEqual(fast_backward.tensorflow_bfloat16_input_gradient_is_slow(), slow)
        # A oneDNN ISA cap below AMX makes an AMX CPU one without it.
        with mock.patch.object(precision, "_cpu_flags", return_value={"avx512_bf16", "amx_bf16"}):
            with mock.patch.dict(os.environ, {"ONEDNN_MAX_CPU_ISA": "AVX512_CORE_BF16"}):
                self.assertTrue(fast_backward.tensorflow_bfloat16_input_gradient_is_slow())


class PerturbationMemoryTest(parameterized.TestCase):
    @parameterized.parameters("float32", "bfloat16", "int8")
    def test_perturbed_examples_stay_in_the_eps_ball_and_raise_the_loss(self, dtype):
        images, labels = _mnist(128)
        model, _, step = _components(num_train=256, free_memory_dtype=dtype)
        indices = np.arange(128)
        for _ in range(3):
            step(images, labels, indices)
        perturbed = step.memory.start(tf.constant(images), indices).numpy()
        delta = perturbed - images
        self.assertLessEqual(np.abs(delta).max(), EPS + 1e-6)
        self.assertGreater(np.abs(delta).mean(), EPS / 3)
        self.assertGreaterEqual(perturbed.min(), 0.0)
        self.assertLessEqual(perturbed.max(), 1.0)
        # Adversarial: a higher loss than uniform noise of the same radius.
        noise = np.random.default_rng(0).uniform(-EPS, EPS, images.shape).astype(np.float32)
        noisy = np.clip(images + noise, 0.0, 1.0)
        self.assertGreater(
            _cross_entropy(model, perturbed, labels), _cross_entropy(model, noisy, labels) + 0.1
        )
        memory = step.memory.variable.numpy().astype(np.float32)
        if dtype == "int8":
            memory *= EPS / 127
        if dtype != "bfloat16":  # bfloat16 rounds eps = 0.3 up to 0.30078
            # int8 rounds to the nearest step of eps / 127; `start` clips again.
            slack = EPS / 254 if dtype == "int8" else 0.0
            self.assertLessEqual(np.abs(memory[:128]).max(), EPS + 1e-6)
            self.assertGreaterEqual((images + memory[:128]).min(), -slack - 1e-6)
            self.assertLessEqual((images + memory[:128]).max(), 1.0 + slack + 1e-6)
        # Examples not visited keep their uniform start in [-eps, eps].
        unseen = memory[128:]
        self.assertLessEqual(np.abs(unseen).max(), EPS * (1 + 2**-8))
        self.assertAlmostEqual(np.abs(unseen).mean(), EPS / 2, delta=0.01)

    def test_int8_memory_stays_on_its_grid_of_eps_over_127(self):
        images, labels = _mnist(64)
        _, _, step = _components(num_train=64, free_memory_dtype="int8", free_step_size=0.037)
        for _ in range(2):
            step(images, labels, np.arange(64))
        stored = step.memory.variable.numpy()
        self.assertEqual(stored.dtype, np.int8)
        self.assertLessEqual(np.abs(stored.astype(int)).max(), 127)
        self.assertGreater(len(np.unique(stored)), 100)  # steps of 0.037 land between the levels
        # The start is the image plus a whole number of steps of eps / 127
        # wherever [0, 1] does not clip it.
        x = tf.constant(images)
        delta = step.memory.start(x, np.arange(64)).numpy() - images
        levels = delta / (EPS / 127)
        inside = (images + stored * (EPS / 127) > 0) & (images + stored * (EPS / 127) < 1)
        np.testing.assert_allclose(levels[inside], stored[inside], atol=1e-3)

    def test_a_stored_perturbation_comes_back_within_half_a_level(self):
        memory = training.PerturbationMemory(
            training.perturbation_memory.memory_variable(
                training.perturbation_memory.initial_memory(
                    4, (28, 28, 1), eps=EPS, init="zeros", dtype="int8"
                )
            ),
            eps=EPS,
        )
        images = tf.fill((4, 28, 28, 1), 0.5)
        x_adv = images + tf.random.stateless_uniform(images.shape, [1, 2], -EPS, EPS)
        memory.store(tf.range(4), x_adv, images)
        back = memory.start(images, tf.range(4)).numpy()
        self.assertLessEqual(np.abs(back - x_adv.numpy()).max(), EPS / 127 / 2 + 1e-6)

    @parameterized.parameters(1, 3)
    def test_replays_carry_the_perturbation_from_one_update_to_the_next(self, replays):
        images, labels = _mnist(64)
        _, optimizer, step = _components(
            num_train=64, free_init="zeros", free_step_size=0.1, free_replays=replays
        )
        _, _, n = step(images, labels, np.arange(64))
        self.assertEqual(int(n), 64 * replays)
        self.assertEqual(int(optimizer.iterations), replays)
        # Each replay's signed step of 0.1 starts where the previous one ended.
        largest = float(np.abs(step.memory.variable.numpy()).max())
        self.assertAlmostEqual(largest, 0.1 * replays, places=5)

    def test_free_step_end_moves_the_step_linearly_over_the_runs_updates(self):
        # One epoch of 10 batches (`_components`), each batch new examples with a
        # zero start: a row's largest entry after its one visit is that update's step.
        images, labels = _mnist(80)
        _, _, step = _components(
            num_train=80,
            epochs=1,
            free_init="zeros",
            free_step_size=0.2,
            free_step_end=0.02,
        )
        for batch in range(10):
            rows = np.arange(8 * batch, 8 * batch + 8)
            step(images[rows], labels[rows], rows)
        memory = step.memory.variable.numpy().reshape(10, -1)
        np.testing.assert_allclose(
            np.abs(memory).max(axis=1), np.linspace(0.2, 0.02, 10), rtol=1e-5
        )

    def test_free_step_end_needs_the_runs_length(self):
        config = training.TrainConfig(
            dataset="mnist",
            method="sq_free",
            free_step_end=0.1,
            lr_schedule="constant",
            mixed_precision="float32",
        ).resolved()
        with self.assertRaisesRegex(ValueError, "free_step_end schedules the per-visit step"):
            training.build_components(
                config, data.get_info("mnist"), tf.distribute.get_strategy(), num_train=64
            )

    def test_a_step_visits_only_the_examples_it_is_given(self):
        images, labels = _mnist(32)
        _, _, step = _components(num_train=100, method="free", free_init="zeros")
        indices = np.arange(50, 82)
        step(images, labels, indices)
        memory = step.memory.variable.numpy()
        self.assertTrue(np.all(memory[:50] == 0) and np.all(memory[82:] == 0))
        self.assertGreater(np.abs(memory[50:82]).mean(), 0.05)

    def test_a_workers_step_keeps_its_shard_as_the_whole_memory_would(self):
        images, labels = _mnist(64)
        odd = np.arange(1, 64, 2)  # worker 1 of 2 reads the odd examples
        _, _, whole = _components(num_train=64)
        whole(images[odd], labels[odd], odd)
        _, _, shard = _components(num_train=64, memory_shard=(1, 2))
        self.assertEqual(shard.state, {})  # checkpointed by the worker, not the run
        self.assertEqual(tuple(shard.memory.variable.shape), (32, 28, 28, 1))
        shard(images[odd], labels[odd], odd)
        np.testing.assert_allclose(
            shard.memory.variable.numpy(), whole.memory.variable.numpy()[odd], atol=1e-6
        )


class ReplayWithoutMemoryTest(absltest.TestCase):
    def test_the_step_takes_no_indices_and_keeps_no_state(self):
        images, labels = _mnist(64)
        _, optimizer, step = _components(num_train=None, free_memory="none", free_replays=3)
        self.assertEqual(step.state, {})
        self.assertIsInstance(step.memory, training.ReplayStart)
        loss_sum, _, n = step(images, labels)
        self.assertEqual(int(n), 3 * 64)
        self.assertEqual(int(optimizer.iterations), 3)
        self.assertTrue(np.isfinite(float(loss_sum)))

    def test_each_minibatch_starts_afresh_and_its_replays_carry_the_perturbation(self):
        images, labels = _mnist(64)
        frozen = dict(free_memory="none", free_init="zeros", learning_rate=1e-12)
        _, _, once = _components(num_train=None, free_replays=1, **frozen)
        clean_loss = float(once(images, labels)[0])
        # No memory: the same batch again starts from the clean images again.
        self.assertAlmostEqual(float(once(images, labels)[0]), clean_loss, places=2)
        _, _, twice = _components(num_train=None, free_replays=2, **frozen)
        # The second replay trains on the first one's perturbed batch.
        self.assertGreater(float(twice(images, labels)[0]), 2 * clean_loss + 2.0)

    def test_a_streamed_dataset_trains_without_a_memory(self):
        config = training.TrainConfig(
            dataset="imagenet2012", method="sq_free", free_memory="none"
        ).resolved()
        self.assertFalse(training.takes_indices(config))


class TradesLossTest(parameterized.TestCase):
    def test_loss_and_gradients_are_the_trades_objectives(self):
        images, labels = _mnist(16)
        model = _model(quantizer=False)
        x = tf.constant(images)
        rng = np.random.default_rng(0)
        x_adv = tf.constant(
            np.clip(images + rng.uniform(-EPS, EPS, images.shape), 0, 1).astype(np.float32)
        )
        beta = 6.0
        per_example, adv_logits, grads, input_grad = training.free.trades_loss_and_gradients(
            lambda v: model(v, training=True),
            model.trainable_variables,
            x,
            x_adv,
            labels,
            beta=beta,
        )

        # The objective written out, clean and perturbed batches run apart.
        def objective(clean_images, adv_images):
            p = tf.nn.softmax(model(clean_images, training=True))
            q = tf.nn.softmax(model(adv_images, training=True))
            kl = tf.reduce_sum(p * (tf.math.log(p) - tf.math.log(q)), axis=-1)
            ce = -tf.math.log(tf.gather(p, labels, batch_dims=1))
            return ce + beta * kl, kl

        with tf.GradientTape(persistent=True) as tape:
            tape.watch(x_adv)
            expected, kl = objective(x, x_adv)
            total = tf.reduce_sum(expected)
            kl_total = tf.reduce_sum(kl)
        np.testing.assert_allclose(per_example, expected, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(adv_logits, model(x_adv, training=True), rtol=1e-5, atol=1e-5)
        self.assertGreater(float(tf.reduce_mean(kl)), 1e-5)  # the KL term is at work
        for variable, got, want in zip(
            model.trainable_variables, grads, tape.gradient(total, model.trainable_variables)
        ):
            np.testing.assert_allclose(
                got, want, rtol=1e-3, atol=1e-5 * np.abs(want).max(), err_msg=variable.path
            )
        # The perturbation climbs the KL: its input gradient is beta times the KL's.
        want_input = beta * tape.gradient(kl_total, x_adv)
        np.testing.assert_allclose(
            input_grad, want_input, rtol=0, atol=1e-4 * np.abs(want_input).max()
        )

    def test_a_trades_free_step_keeps_the_ball_and_raises_the_kl(self):
        images, labels = _mnist(128)
        model, _, step = _components(num_train=128, free_loss="trades")
        indices = np.arange(128)
        before = step.memory.start(tf.constant(images), indices).numpy()
        for _ in range(3):
            loss_sum, _, n = step(images, labels, indices)
            self.assertTrue(np.isfinite(float(loss_sum)))
        self.assertEqual(int(n), 128)
        perturbed = step.memory.start(tf.constant(images), indices).numpy()
        self.assertLessEqual(np.abs(perturbed - images).max(), EPS + 1e-6)
        self.assertGreaterEqual(perturbed.min(), 0.0)
        self.assertLessEqual(perturbed.max(), 1.0)

        def kl(x):
            p = tf.nn.softmax(model(images, training=False))
            q = tf.nn.softmax(model(x, training=False))
            return float(tf.reduce_mean(tf.reduce_sum(p * (tf.math.log(p) - tf.math.log(q)), -1)))

        # The stored perturbation moved the outputs further than its uniform start.
        self.assertGreater(kl(perturbed), kl(before))

    def test_unknown_free_loss_is_refused(self):
        with self.assertRaisesRegex(ValueError, "free_loss must be one of ce, trades"):
            training.TrainConfig(method="sq_free", free_loss="mart").resolved()


class SignedStepTest(parameterized.TestCase):
    def test_non_finite_gradient_entries_move_nothing_when_skipped(self):
        images, _ = _mnist(2)
        x = tf.constant(images)
        gradient = np.ones_like(images)
        gradient[0, 14, 14, 0], gradient[1, 3, 3, 0] = np.nan, np.inf
        moved = training.free.signed_step(x, gradient, x, eps=EPS, step_size=0.1).numpy()
        still = np.zeros(images.shape, bool)
        still[0, 14, 14, 0] = still[1, 3, 3, 0] = True
        np.testing.assert_array_equal(moved[still], images[still])
        np.testing.assert_allclose(moved[~still], np.minimum(images[~still] + 0.1, 1.0))
        unguarded = training.free.signed_step(
            x, gradient, x, eps=EPS, step_size=0.1, skip_non_finite=False
        ).numpy()
        self.assertTrue(np.isnan(unguarded[0, 14, 14, 0]))

    @parameterized.named_parameters(("loss_scaled", True), ("plain", False))
    def test_the_step_guards_gradients_only_under_loss_scaling(self, loss_scaled):
        images, labels = _mnist(16)
        config = training.TrainConfig(
            dataset="mnist", method="sq_free", eps=EPS, mixed_precision="float32"
        ).resolved()
        optimizer = keras.optimizers.Adam(1e-3)
        if loss_scaled:
            optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
        signed_step = training.free.signed_step
        with mock.patch.object(training.free, "signed_step", wraps=signed_step) as spy:
            step = training.build_free_step(
                _model(quantizer=True),
                optimizer,
                config,
                tf.distribute.get_strategy(),
                num_train=16,
            )
            step(images, labels, np.arange(16))
        self.assertEqual(spy.call_args.kwargs["skip_non_finite"], loss_scaled)


class FreeTrainingRunTest(parameterized.TestCase):
    @parameterized.named_parameters(
        ("constant_step", {}),
        # The scheduled step reads the checkpointed update counter.
        ("scheduled_step", {"free_step_end": 0.05}),
    )
    def test_a_run_killed_in_epoch_two_resumes_to_identical_metrics(self, schedule):
        kwargs = dict(
            method="sq_free",
            epochs=2,
            train_examples=600,
            eval_examples=500,
            deterministic=True,
            **schedule,
        )
        straight = training.train(small_config(self.create_tempdir().full_path, **kwargs))
        model_dir = self.create_tempdir().full_path
        # 6 steps per epoch: dies at step 3 of epoch 2, after the epoch-1 checkpoint.
        dying = dying_after(training.build_free_step, 8)
        with mock.patch.dict(training.STEP_BUILDERS, {"free": dying}):
            with self.assertRaises(Killed):
                training.train(small_config(model_dir, **kwargs))
        checkpoint = tf.train.latest_checkpoint(os.path.join(model_dir, "checkpoints"))
        self.assertTrue(checkpoint.endswith("ckpt-1"))
        stored = [shape for name, shape in tf.train.list_variables(checkpoint) if "perturb" in name]
        self.assertEqual(stored, [[600, 28, 28, 1]])
        lines = []
        resumed = training.train(small_config(model_dir, **kwargs), log=lines.append)
        self.assertTrue(any(line.startswith("Resumed from") for line in lines))
        keys = ("epochs_done", "test_accuracy", "train_loss", "train_accuracy", "thresholds")
        self.assertEqual({k: resumed[k] for k in keys}, {k: straight[k] for k in keys})

    def test_streamed_datasets_are_refused(self):
        with self.assertRaisesRegex(ValueError, "needs a dataset held in memory"):
            training.TrainConfig(dataset="imagenet2012", method="sq_free").resolved()

    def test_mirrored_two_replica_step_equals_one_replica_step(self):
        result = run_mirrored_probe(self, "sq_free")
        self.assertEqual(result["replicas"], 2)
        self.assertEqual(result["examples"], [64, 64])
        self.assertAlmostEqual(result["single_loss"], result["mirrored_loss"], places=5)
        self.assertGreater(result["max_weight_change"], 1e-4)
        self.assertLess(result["max_weight_diff"], 1e-5)
        # Both replicas wrote the whole global batch into one identical memory.
        self.assertEqual(result["perturbations_share_equal"], 1.0)


if __name__ == "__main__":
    absltest.main()
