"""Tests for sq_keras.models."""

import keras
import numpy as np
from absl.testing import absltest
from absl.testing import parameterized

from sq_keras import models
from sq_keras.layers import SoftQuantization


class BuildTest(parameterized.TestCase):
    def tearDown(self):
        keras.mixed_precision.set_global_policy("float32")
        super().tearDown()

    @parameterized.named_parameters(
        ("plain", None, 0), ("quantized", {"num_thresholds": 2, "alpha": 30.0}, 1)
    )
    def test_madry_mnist(self, quantizer, num_quantizers):
        model = models.build(
            "madry_mnist", input_shape=(28, 28, 1), num_classes=10, soft_quantization=quantizer
        )
        found = [layer for layer in model.layers if isinstance(layer, SoftQuantization)]
        self.assertLen(found, num_quantizers)
        if found:
            # The quantizer sees the raw input.
            self.assertIs(model.layers[1], found[0])
            self.assertEqual(float(found[0].alpha.numpy()), 30.0)
        convs = [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]
        self.assertEqual([(c.filters, c.kernel_size) for c in convs], [(32, (5, 5)), (64, (5, 5))])
        self.assertEqual(model.get_layer("fc1").units, 1024)
        # conv 5*5*32+32, conv 5*5*32*64+64, fc 7*7*64*1024+1024, logits 1024*10+10
        expected = 832 + 51264 + 3212288 + 10250 + (2 if quantizer else 0)
        self.assertEqual(model.count_params(), expected + (1 if quantizer else 0))
        logits = model(np.zeros((3, 28, 28, 1), np.float32))
        self.assertEqual(tuple(logits.shape), (3, 10))

    def test_logits_stay_float32_under_mixed_precision(self):
        keras.mixed_precision.set_global_policy("mixed_bfloat16")
        model = models.build(
            "madry_mnist",
            input_shape=(28, 28, 1),
            num_classes=10,
            soft_quantization={"num_thresholds": 1},
        )
        self.assertEqual(model(np.zeros((1, 28, 28, 1), np.float32)).dtype, "float32")
        self.assertEqual(model.get_layer("conv1").compute_dtype, "bfloat16")

    def test_unknown_model_lists_valid_ones(self):
        with self.assertRaisesRegex(ValueError, "Valid models: madry_mnist"):
            models.build("resnet", input_shape=(28, 28, 1), num_classes=10)


if __name__ == "__main__":
    absltest.main()
