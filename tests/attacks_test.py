"""Tests of sq_keras.attacks on small models trained on real MNIST.

The models are tiny CNNs trained for two epochs on 5,000 training images
(about 2 s each on two cores); they are trained once per module and shared.
"""

import functools
import os

import keras
import numpy as np
import tensorflow as tf
from absl.testing import absltest
from absl.testing import parameterized

from sq_keras import attacks
from sq_keras import data
from sq_keras import models
from sq_keras.layers import SoftQuantization

NUM_TEST = 300
TOLERANCE = 1e-6  # float32 rounding of |x_adv - x| around eps.


def _data_dir():
    return os.environ.get("SQ_KERAS_DATA_DIR")


@functools.lru_cache(maxsize=None)
def mnist(split):
    images, labels = data.load_arrays("mnist", split, data_dir=_data_dir())
    return images.astype(np.float32) / 255.0, labels


def tiny_cnn(quantizer=None, seed=0):
    """A small CNN, optionally after a SoftQuantization layer."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((28, 28, 1), name="images")
    x = inputs
    if quantizer is not None:
        x = SoftQuantization(name="soft_quantization", **quantizer)(x)
    x = keras.layers.Conv2D(16, 3, strides=2, activation="relu")(x)
    x = keras.layers.Conv2D(32, 3, strides=2, activation="relu")(x)
    x = keras.layers.Flatten()(x)
    x = keras.layers.Dense(64, activation="relu")(x)
    return keras.Model(inputs, keras.layers.Dense(10)(x))


@functools.lru_cache(maxsize=None)
def trained_model(kind, seed=0):
    """'natural': plain CNN; 'masked': CNN behind an exact 10-level rounding.

    The masked toy rounds every pixel to the nearest of 10 levels at
    inference (`SoftQuantization(hard=True)`), so its input gradient is zero
    almost everywhere while eps = 0.3 still crosses two or three levels: plain
    PGD is stuck, yet the model is not robust.
    """
    quantizer = None
    if kind == "masked":
        quantizer = {"num_thresholds": 9, "hard": True, "trainable_thresholds": False}
    model = tiny_cnn(quantizer, seed=seed)
    model.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    images, labels = mnist("train[:5000]")
    model.fit(images, labels, batch_size=64, epochs=2, verbose=0)
    return model


def model_fn_of(model):
    return lambda images: model(images, training=False)


def eval_data(num=NUM_TEST):
    images, labels = mnist("test[:1000]")
    return images[:num], labels[:num]


def run(attack, *args, **kwargs):
    """Runs an attack inside tf.function, as the evaluator does."""
    return tf.function(lambda x, y: attack(*args, x, y, **kwargs))


def _square_images(model_fn, x, y, **kwargs):
    return attacks.square(model_fn, x, y, **kwargs)[0]


ATTACK_CASES = (
    ("fgsm", attacks.fgsm, {}),
    ("pgd_ce", attacks.pgd, {"step_size": 0.05, "num_steps": 10}),
    (
        "pgd_margin_restarts",
        attacks.pgd,
        {"step_size": 0.05, "num_steps": 5, "restarts": 2, "loss": "margin"},
    ),
    (
        "pgd_last_iterate",
        attacks.pgd,
        {"step_size": 0.05, "num_steps": 10, "keep_most_damaging": False},
    ),
    ("apgd_ce", attacks.apgd, {"num_steps": 10}),
    ("apgd_dlr", attacks.apgd, {"num_steps": 10, "loss": "dlr"}),
    ("square", _square_images, {"max_queries": 50}),
)


class LossTest(parameterized.TestCase):
    def test_margin_positive_exactly_when_misclassified(self):
        logits = tf.constant([[3.0, 1.0, 0.0], [1.0, 4.0, 2.0]])
        labels = tf.constant([0, 0], tf.int64)
        np.testing.assert_allclose(attacks.margin_loss(logits, labels), [-2.0, 3.0])

    def test_dlr_hand_computed_and_scale_invariant(self):
        logits = tf.constant([[3.0, 1.0, 0.0, -1.0]])
        labels = tf.constant([0], tf.int64)
        # -(3 - 1) / (3 - 0) = -2/3.
        np.testing.assert_allclose(attacks.dlr_loss(logits, labels), [-2.0 / 3.0], rtol=1e-6)
        np.testing.assert_allclose(
            attacks.dlr_loss(5.0 * logits + 7.0, labels), [-2.0 / 3.0], rtol=1e-5
        )

    def test_dlr_needs_three_classes(self):
        with self.assertRaisesRegex(ValueError, "at least 3 classes"):
            attacks.dlr_loss(tf.zeros([1, 2]), tf.constant([0], tf.int64))

    def test_apgd_checkpoints_match_paper_for_100_steps(self):
        self.assertEqual(attacks.apgd_checkpoints(100), [0, 22, 41, 57, 70, 80, 87, 93, 99])

    def test_square_fraction_halves_on_schedule(self):
        self.assertAlmostEqual(float(attacks.square_fraction(5, 10000, 0.8)), 0.8)
        self.assertAlmostEqual(float(attacks.square_fraction(30, 10000, 0.8)), 0.4)
        # Rescaled: iteration 30 of 1,000 is iteration 300 of 10,000.
        self.assertAlmostEqual(float(attacks.square_fraction(30, 1000, 0.8)), 0.1)


class PropertyTest(parameterized.TestCase):
    @parameterized.named_parameters(*ATTACK_CASES)
    def test_within_eps_and_bounds(self, attack, kwargs):
        model_fn = model_fn_of(trained_model("natural"))
        x, y = eval_data(100)
        eps = 0.2
        x_adv = run(attack, model_fn, eps=eps, **kwargs)(x, y).numpy()
        self.assertEqual(x_adv.shape, x.shape)
        self.assertLessEqual(np.abs(x_adv - x).max(), eps + TOLERANCE)
        self.assertGreaterEqual(x_adv.min(), 0.0)
        self.assertLessEqual(x_adv.max(), 1.0)
        # The attack did move the images and hurt the model.
        self.assertGreater(np.abs(x_adv - x).max(), eps / 2)
        self.assertLess(attacks.accuracy(model_fn, x_adv, y), attacks.accuracy(model_fn, x, y))

    @parameterized.named_parameters(*ATTACK_CASES)
    def test_eps_zero_gives_clean_accuracy(self, attack, kwargs):
        model_fn = model_fn_of(trained_model("natural"))
        x, y = eval_data(100)
        x_adv = run(attack, model_fn, eps=0.0, **kwargs)(x, y).numpy()
        np.testing.assert_array_equal(x_adv, x)

    def test_tighter_bounds_are_respected(self):
        model_fn = model_fn_of(trained_model("natural"))
        x, y = eval_data(50)
        x_adv = attacks.pgd(
            model_fn, x, y, eps=0.3, step_size=0.1, num_steps=3, clip_min=0.1, clip_max=0.8
        ).numpy()
        self.assertGreaterEqual(x_adv.min(), 0.1 - TOLERANCE)
        self.assertLessEqual(x_adv.max(), 0.8 + TOLERANCE)

    def test_accuracy_falls_as_eps_grows(self):
        model_fn = model_fn_of(trained_model("natural"))
        x, y = eval_data()
        accuracies = [
            attacks.accuracy(
                model_fn,
                run(attacks.pgd, model_fn, eps=eps, step_size=eps / 4, num_steps=10)(x, y),
                y,
            )
            for eps in (0.02, 0.05, 0.1, 0.2)
        ]
        self.assertEqual(accuracies, sorted(accuracies, reverse=True), accuracies)
        self.assertGreater(accuracies[0] - accuracies[-1], 0.5, accuracies)

    def _fooled(self, model_fn, x_adv, y):
        return attacks.predictions(model_fn, x_adv).numpy() != y

    def test_more_steps_never_help_the_model(self):
        model_fn = model_fn_of(trained_model("natural"))
        x, y = eval_data()
        short = run(attacks.pgd, model_fn, eps=0.06, step_size=0.01, num_steps=3, seed=3)(x, y)
        long = run(attacks.pgd, model_fn, eps=0.06, step_size=0.01, num_steps=12, seed=3)(x, y)
        fooled_short = self._fooled(model_fn, short, y)
        fooled_long = self._fooled(model_fn, long, y)
        # Every example fooled by 3 steps is fooled by 12, and 12 fool more.
        self.assertTrue(np.all(fooled_long[fooled_short]))
        self.assertGreater(fooled_long.sum(), fooled_short.sum())

    def test_restarts_never_help_the_model(self):
        model_fn = model_fn_of(trained_model("natural"))
        x, y = eval_data()
        kwargs = {"eps": 0.06, "step_size": 0.015, "num_steps": 5, "seed": 1}
        one = run(attacks.pgd, model_fn, restarts=1, **kwargs)(x, y)
        four = run(attacks.pgd, model_fn, restarts=4, **kwargs)(x, y)
        fooled_one = self._fooled(model_fn, one, y)
        fooled_four = self._fooled(model_fn, four, y)
        self.assertTrue(np.all(fooled_four[fooled_one]))
        self.assertGreaterEqual(fooled_four.sum(), fooled_one.sum())

    def test_restarts_attack_each_example_alike_in_any_batch(self):
        # Later restarts only run on the examples still classified correctly;
        # an example's result must not depend on the rest of its batch.
        model_fn = model_fn_of(trained_model("natural"))
        x, y = eval_data(60)
        kwargs = {"eps": 0.05, "step_size": 0.0125, "num_steps": 4, "restarts": 3, "seed": 4}
        whole = run(attacks.pgd, model_fn, **kwargs)(x, y).numpy()
        part = run(attacks.pgd, model_fn, **kwargs)(x[:25], y[:25]).numpy()
        np.testing.assert_allclose(whole[:25], part, atol=1e-6)
        fooled = self._fooled(model_fn, whole, y)
        self.assertTrue(0 < fooled.sum() < len(y), fooled.sum())

    def test_restarts_when_the_first_fools_every_example(self):
        # Later restarts then have nothing left to attack (an empty batch,
        # which convolutions on some CPU kernels refuse).
        model = madry_cnn()
        x, y = eval_data(40)
        kwargs = {"eps": 0.3, "step_size": 0.05, "num_steps": 5, "seed": 6}
        first = run(attacks.pgd, model_fn_of(model), **kwargs)(x, y)
        fooled = self._fooled(model_fn_of(model), first, y)
        self.assertGreater(fooled.sum(), 5)
        x, y = x[fooled], y[fooled]
        for model_fn in (model_fn_of(model), attacks.input_gradient_model(model)):
            again = run(attacks.pgd, model_fn, restarts=3, **kwargs)(x, y)
            self.assertTrue(np.all(self._fooled(model_fn_of(model), again, y)))

    def test_most_damaging_point_beats_last_iterate(self):
        model_fn = model_fn_of(trained_model("natural"))
        x, y = eval_data()
        kwargs = {"eps": 0.06, "step_size": 0.02, "num_steps": 6, "seed": 2}
        best = run(attacks.pgd, model_fn, **kwargs)(x, y)
        last = run(attacks.pgd, model_fn, keep_most_damaging=False, **kwargs)(x, y)
        fooled_best = self._fooled(model_fn, best, y)
        fooled_last = self._fooled(model_fn, last, y)
        self.assertTrue(np.all(fooled_best[fooled_last]))
        self.assertGreater(fooled_last.sum(), 0)

    def test_same_seed_same_result(self):
        model_fn = model_fn_of(trained_model("natural"))
        x, y = eval_data(50)
        first = attacks.pgd(model_fn, x, y, eps=0.1, step_size=0.02, num_steps=3, seed=7)
        second = attacks.pgd(model_fn, x, y, eps=0.1, step_size=0.02, num_steps=3, seed=7)
        np.testing.assert_array_equal(first, second)

    def test_square_reports_queries_within_budget(self):
        model_fn = model_fn_of(trained_model("natural"))
        x, y = eval_data(100)
        x_adv, queries = run(attacks.square, model_fn, eps=0.15, max_queries=40)(x, y)
        queries = queries.numpy()
        fooled = self._fooled(model_fn, x_adv, y)
        self.assertLessEqual(queries.max(), 40)
        self.assertGreaterEqual(queries.min(), 1)
        # Examples still classified correctly used the whole budget.
        self.assertTrue(np.all(queries[~fooled] == 40))
        self.assertLess(queries[fooled].mean(), 40)

    def test_iterative_at_least_as_strong_as_single_step(self):
        model_fn = model_fn_of(trained_model("natural"))
        x, y = eval_data()
        fgsm_acc = attacks.accuracy(model_fn, run(attacks.fgsm, model_fn, eps=0.08)(x, y), y)
        pgd_acc = attacks.accuracy(
            model_fn, run(attacks.pgd, model_fn, eps=0.08, step_size=0.01, num_steps=20)(x, y), y
        )
        apgd_acc = attacks.accuracy(
            model_fn, run(attacks.apgd, model_fn, eps=0.08, num_steps=20)(x, y), y
        )
        self.assertLessEqual(pgd_acc, fgsm_acc)
        self.assertLessEqual(apgd_acc, fgsm_acc)
        # APGD needs no step size and is at least as strong as tuned PGD.
        self.assertLessEqual(apgd_acc, pgd_acc + 0.01)


class ValidationTest(parameterized.TestCase):
    @parameterized.named_parameters(
        ("negative_eps", attacks.pgd, {"eps": -0.1, "step_size": 0.1, "num_steps": 1}, "eps"),
        ("eps_above_one", attacks.fgsm, {"eps": 1.5}, "eps"),
        ("zero_steps", attacks.pgd, {"eps": 0.1, "step_size": 0.1, "num_steps": 0}, "num_steps"),
        (
            "zero_restarts",
            attacks.pgd,
            {"eps": 0.1, "step_size": 0.1, "num_steps": 1, "restarts": 0},
            "restarts",
        ),
        ("bad_step_size", attacks.pgd, {"eps": 0.1, "step_size": 0.0, "num_steps": 1}, "step_size"),
        ("unknown_loss", attacks.apgd, {"eps": 0.1, "num_steps": 1, "loss": "hinge"}, "loss"),
        ("zero_queries", attacks.square, {"eps": 0.1, "max_queries": 0}, "max_queries"),
        ("bad_p_init", attacks.square, {"eps": 0.1, "max_queries": 5, "p_init": 0.0}, "p_init"),
    )
    def test_bad_arguments_raise(self, attack, kwargs, name):
        x, y = eval_data(2)
        with self.assertRaisesRegex(ValueError, name):
            attack(lambda images: tf.zeros([tf.shape(images)[0], 10]), x, y, **kwargs)

    def test_labels_are_required(self):
        x, _ = eval_data(2)
        with self.assertRaises(TypeError):
            attacks.pgd(lambda images: images, x, eps=0.1, step_size=0.1, num_steps=1)


class BpdaTest(parameterized.TestCase):
    def test_forward_pass_is_the_real_model(self):
        model = trained_model("masked")
        x, _ = eval_data(50)
        for stand_in in attacks.STAND_INS:
            np.testing.assert_array_equal(attacks.bpda(model, stand_in=stand_in)(x), model(x))

    def test_gradient_flows_where_the_model_has_none(self):
        model = trained_model("masked")
        x, y = eval_data(20)
        x = tf.constant(x)

        def input_gradient(model_fn):
            with tf.GradientTape() as tape:
                tape.watch(x)
                loss = attacks.cross_entropy_loss(model_fn(x), tf.constant(y))
            return tape.gradient(loss, x)

        plain = input_gradient(model_fn_of(model))
        self.assertTrue(plain is None or float(tf.reduce_max(tf.abs(plain))) == 0.0)
        for stand_in in attacks.STAND_INS:
            through = input_gradient(attacks.bpda(model, stand_in=stand_in))
            self.assertGreater(float(tf.reduce_mean(tf.abs(through))), 0.0, stand_in)

    @parameterized.named_parameters(("identity", "identity"), ("smooth", "smooth"))
    def test_quantizer_in_front_of_a_nested_model(self, stand_in):
        keras.utils.set_random_seed(0)
        base = keras.Sequential(
            [
                keras.Input((28, 28, 1)),
                keras.layers.Conv2D(4, 3),
                keras.layers.BatchNormalization(),
                keras.layers.Flatten(),
                keras.layers.Dense(10),
            ],
            name="base",
        )
        model = models.with_soft_quantization(base, num_thresholds=1, alpha=200.0)
        x, y = eval_data(16)
        x = tf.constant(x)
        bpda_fn = attacks.bpda(model, stand_in=stand_in)
        np.testing.assert_array_equal(bpda_fn(x), model(x, training=False))
        with tf.GradientTape() as tape:
            tape.watch(x)
            loss = attacks.cross_entropy_loss(bpda_fn(x), tf.constant(y))
        gradient = tape.gradient(loss, x).numpy()
        with tf.GradientTape() as tape:
            tape.watch(x)
            loss = attacks.cross_entropy_loss(model(x, training=False), tf.constant(y))
        plain = tape.gradient(loss, x).numpy()
        # alpha = 200 saturates the sigmoid on most pixels; the stand-in does not.
        self.assertGreater(np.mean(gradient != 0), np.mean(plain != 0) + 0.3)

    def test_model_without_quantizer_is_rejected(self):
        with self.assertRaisesRegex(ValueError, "no SoftQuantization"):
            attacks.bpda(trained_model("natural"))

    def test_unknown_stand_in_is_rejected(self):
        with self.assertRaisesRegex(ValueError, "stand_in"):
            attacks.bpda(trained_model("masked"), stand_in="zero")


def _input_gradient(model_fn, x, y):
    x = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(x)
        logits = tf.cast(model_fn(x), tf.float32)
        loss = tf.reduce_sum(attacks.cross_entropy_loss(logits, tf.constant(y)))
    return logits.numpy(), tape.gradient(loss, x).numpy()


def madry_cnn(policy="float32"):
    keras.utils.set_random_seed(1)
    keras.config.set_dtype_policy(policy)
    try:
        return models.build(
            "madry_mnist",
            input_shape=(28, 28, 1),
            num_classes=10,
            soft_quantization={"num_thresholds": 1, "alpha": 10.0},
        )
    finally:
        keras.config.set_dtype_policy("float32")


class InputGradientModelTest(parameterized.TestCase):
    def assert_same_outputs_and_gradients(self, model, x, y):
        """`input_gradient_model`: TensorFlow's outputs exactly, its input
        gradient to 1e-5 of the largest entry."""
        logits, grad = _input_gradient(model_fn_of(model), x, y)
        fast_logits, fast_grad = _input_gradient(attacks.input_gradient_model(model), x, y)
        np.testing.assert_array_equal(fast_logits, logits)
        self.assertGreater(np.abs(grad).max(), 1e-3)
        np.testing.assert_allclose(fast_grad, grad, rtol=0, atol=1e-5 * np.abs(grad).max())

    def test_float32_outputs_and_gradients_equal_tensorflows(self):
        # Madry CNN: a one-channel 'same' 5x5 Conv2D and float32 Dense layers,
        # the layers whose input gradients are rewritten.
        model = madry_cnn()
        x, y = eval_data(40)
        self.assert_same_outputs_and_gradients(model, x, y)

    def test_bfloat16_gradients_as_accurate_as_tensorflows(self):
        # In bfloat16 the one-channel conv's input gradient is rewritten (the
        # Dense layers keep TensorFlow's): measured against the float32
        # gradient, ours must be as accurate as TensorFlow's own bfloat16 one.
        model = madry_cnn("mixed_bfloat16")
        reference = madry_cnn()
        x, y = eval_data(40)
        _, exact = _input_gradient(model_fn_of(reference), x, y)
        logits, grad = _input_gradient(model_fn_of(model), x, y)
        fast_logits, fast_grad = _input_gradient(attacks.input_gradient_model(model), x, y)
        np.testing.assert_array_equal(fast_logits, logits)
        self.assertGreater(np.abs(exact).max(), 1e-3)
        tf_error = np.abs(grad - exact).mean()
        self.assertLess(np.abs(fast_grad - exact).mean(), 1.05 * tf_error)
        self.assertGreater(np.mean(np.sign(fast_grad) == np.sign(grad)), 0.99)

    def test_other_layers_keep_tensorflows_gradient(self):
        # Strided convolutions and a softmax Dense on a 3-D input are left alone.
        keras.utils.set_random_seed(2)
        inputs = keras.Input((28, 28, 1))
        h = keras.layers.Conv2D(4, 3, strides=2, activation="relu")(inputs)
        h = keras.layers.Reshape((13, 52))(h)
        h = keras.layers.Dense(6, activation="softmax")(h)
        h = keras.layers.Flatten()(h)
        model = keras.Model(inputs, keras.layers.Dense(10, activation="tanh")(h))
        x, y = eval_data(20)
        logits, grad = _input_gradient(model_fn_of(model), x, y)
        fast_logits, fast_grad = _input_gradient(attacks.input_gradient_model(model), x, y)
        np.testing.assert_array_equal(fast_logits, logits)
        np.testing.assert_array_equal(fast_grad, grad)

    def test_relu_after_pool_only_where_the_pool_alone_reads_the_conv(self):
        # conv_a feeds only a max pool (its ReLU may move after the pool);
        # conv_b also feeds a Flatten, which must keep seeing ReLU outputs.
        keras.utils.set_random_seed(3)
        inputs = keras.Input((28, 28, 1))
        a = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="conv_a")(inputs)
        a = keras.layers.MaxPooling2D(2, name="pool_a")(a)
        b = keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="conv_b")(a)
        pooled = keras.layers.Flatten()(keras.layers.MaxPooling2D(2, padding="same")(b))
        both = keras.layers.Concatenate()([pooled, keras.layers.Flatten()(b)])
        model = keras.Model(inputs, keras.layers.Dense(10)(both))
        x, y = eval_data(30)
        self.assert_same_outputs_and_gradients(model, x, y)

    def test_pgd_finds_the_same_examples(self):
        model = madry_cnn()
        x, y = eval_data(60)
        kwargs = {"eps": 0.1, "step_size": 0.02, "num_steps": 10, "seed": 5}
        plain = run(attacks.pgd, model_fn_of(model), **kwargs)(x, y).numpy()
        fast = run(attacks.pgd, attacks.input_gradient_model(model), **kwargs)(x, y).numpy()
        # Rounding can flip the sign of a near-zero gradient entry, nothing more.
        self.assertLess(np.mean(np.abs(fast - plain) > 1e-6), 1e-3)
        fooled = lambda images: attacks.predictions(model_fn_of(model), images).numpy() != y  # noqa: E731
        self.assertLessEqual(abs(int(fooled(fast).sum()) - int(fooled(plain).sum())), 1)
        self.assertGreater(fooled(plain).sum(), 0)


class StrengthTest(parameterized.TestCase):
    def test_natural_model_is_broken_at_eps_0_3(self):
        model_fn = model_fn_of(trained_model("natural"))
        x, y = eval_data()
        self.assertGreater(attacks.accuracy(model_fn, x, y), 0.85)
        x_pgd = run(attacks.pgd, model_fn, eps=0.3, step_size=0.01, num_steps=40)(x, y)
        self.assertLess(attacks.accuracy(model_fn, x_pgd, y), 0.02)
        x_square = run(_square_images, model_fn, eps=0.3, max_queries=1000)(x, y)
        self.assertLess(attacks.accuracy(model_fn, x_square, y), 0.10)

    def test_masked_toy_fools_pgd_but_not_bpda_or_square(self):
        model = trained_model("masked")
        model_fn = model_fn_of(model)
        x, y = eval_data()
        clean = attacks.accuracy(model_fn, x, y)
        self.assertGreater(clean, 0.85)
        pgd = dict(eps=0.3, step_size=0.01, num_steps=40)
        plain = attacks.accuracy(model_fn, run(attacks.pgd, model_fn, **pgd)(x, y), y)
        self.assertGreater(plain, 0.8 * clean)
        for stand_in in attacks.STAND_INS:
            bpda_fn = attacks.bpda(model, stand_in=stand_in)
            broken = attacks.accuracy(model_fn, run(attacks.pgd, bpda_fn, **pgd)(x, y), y)
            self.assertLess(broken, 0.05, stand_in)
        x_square = run(_square_images, model_fn, eps=0.3, max_queries=1000)(x, y)
        self.assertLess(attacks.accuracy(model_fn, x_square, y), 0.10)

    def test_transfer_from_an_independent_surrogate(self):
        target_fn = model_fn_of(trained_model("natural", seed=0))
        source_fn = model_fn_of(trained_model("natural", seed=1))
        x, y = eval_data()
        x_adv = run(attacks.transfer, source_fn, eps=0.3, step_size=0.01, num_steps=40)(x, y)
        self.assertLessEqual(np.abs(x_adv.numpy() - x).max(), 0.3 + TOLERANCE)
        transferred = attacks.accuracy(target_fn, x_adv, y)
        white_box = attacks.accuracy(
            target_fn, run(attacks.pgd, target_fn, eps=0.3, step_size=0.01, num_steps=40)(x, y), y
        )
        self.assertLess(transferred, attacks.accuracy(target_fn, x, y) - 0.3)
        self.assertLessEqual(white_box, transferred)


class CrossCheckTest(parameterized.TestCase):
    """Our attacks against independent implementations on the same examples."""

    def test_pgd_agrees_with_cleverhans(self):
        from cleverhans.tf2.attacks.projected_gradient_descent import projected_gradient_descent

        model_fn = model_fn_of(trained_model("natural"))
        x, y = eval_data()
        eps, step_size, num_steps = 0.08, 0.008, 40
        ours = attacks.accuracy(
            model_fn,
            run(attacks.pgd, model_fn, eps=eps, step_size=step_size, num_steps=num_steps)(x, y),
            y,
        )
        theirs_fn = tf.function(
            lambda images, labels: projected_gradient_descent(
                model_fn,
                images,
                eps,
                step_size,
                num_steps,
                np.inf,
                clip_min=0.0,
                clip_max=1.0,
                y=labels,
                rand_init=True,
                sanity_checks=False,
            )
        )
        theirs = attacks.accuracy(model_fn, theirs_fn(x, y), y)
        self.assertGreater(theirs, 0.1)  # Not a trivial 0 == 0 comparison.
        self.assertLessEqual(abs(ours - theirs), 0.015, (ours, theirs))

    def test_square_agrees_with_art(self):
        from art.attacks.evasion import SquareAttack
        from art.estimators.classification import TensorFlowV2Classifier

        model = trained_model("natural")
        model_fn = model_fn_of(model)
        x, y = eval_data()
        eps, iterations = 0.1, 300
        x_ours, _ = attacks.square(model_fn, x, y, eps=eps, max_queries=iterations + 1, seed=0)
        ours = attacks.accuracy(model_fn, x_ours, y)
        classifier = TensorFlowV2Classifier(
            model=model,
            nb_classes=10,
            input_shape=(28, 28, 1),
            clip_values=(0.0, 1.0),
            loss_object=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        )
        np.random.seed(0)
        art_attack = SquareAttack(
            estimator=classifier,
            norm=np.inf,
            eps=eps,
            max_iter=iterations,
            p_init=0.8,
            nb_restarts=1,
            batch_size=len(x),
            verbose=False,
        )
        theirs = attacks.accuracy(model_fn, art_attack.generate(x, y=y), y)
        self.assertGreater(theirs, 0.1)
        self.assertLessEqual(abs(ours - theirs), 0.05, (ours, theirs))


if __name__ == "__main__":
    absltest.main()
