"""Tests for sq_keras.training.methods: the registry of methods."""

from absl.testing import absltest
from absl.testing import parameterized

from sq_keras import training


class MethodsTest(parameterized.TestCase):
    @parameterized.parameters(*sorted(training.METHODS))
    def test_every_method_names_a_step_builder_and_describes_itself(self, name):
        method = training.METHODS[name]
        self.assertIn(method.step, training.STEP_BUILDERS)
        self.assertTrue(method.description)

    def test_soft_quantization_methods_are_the_sq_ones(self):
        quantized = sorted(k for k, m in training.METHODS.items() if m.quantizer)
        self.assertEqual(quantized, ["sq_fgsm", "sq_free", "sq_natural", "sq_noisy"])
        noisy = sorted(k for k, m in training.METHODS.items() if m.noise)
        self.assertEqual(noisy, ["noisy", "sq_noisy"])
        indexed = sorted(k for k, m in training.METHODS.items() if m.indexed)
        self.assertEqual(indexed, ["free", "sq_free"])


if __name__ == "__main__":
    absltest.main()
