"""Tests of sq_keras.attacks.fast_input_gradients: outputs and input gradients
of `input_gradient_model` against TensorFlow's own.
"""

import keras
import numpy as np
from absl.testing import absltest
from absl.testing import parameterized

from sq_keras import attacks
from tests.attacks.fixtures import eval_data
from tests.attacks.fixtures import input_gradient
from tests.attacks.fixtures import madry_cnn
from tests.attacks.fixtures import model_fn_of
from tests.attacks.fixtures import run


class InputGradientModelTest(parameterized.TestCase):
    def assert_same_outputs_and_gradients(self, model, x, y):
        """`input_gradient_model`: TensorFlow's outputs exactly, its input
        gradient to 1e-5 of the largest entry."""
        logits, grad = input_gradient(model_fn_of(model), x, y)
        fast_logits, fast_grad = input_gradient(attacks.input_gradient_model(model), x, y)
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
        _, exact = input_gradient(model_fn_of(reference), x, y)
        logits, grad = input_gradient(model_fn_of(model), x, y)
        fast_logits, fast_grad = input_gradient(attacks.input_gradient_model(model), x, y)
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
        logits, grad = input_gradient(model_fn_of(model), x, y)
        fast_logits, fast_grad = input_gradient(attacks.input_gradient_model(model), x, y)
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


if __name__ == "__main__":
    absltest.main()
