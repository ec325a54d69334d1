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

    def test_small_mnist_resnet_has_three_residual_stages(self):
        model = models.build("preact_resnet_mnist", input_shape=(28, 28, 1), num_classes=10)
        adds = [layer for layer in model.layers if isinstance(layer, keras.layers.Add)]
        self.assertEqual(
            [a.output.shape[1:] for a in adds], [(28, 28, 32), (14, 14, 64), (7, 7, 128)]
        )
        logits = model(np.zeros((3, 28, 28, 1), np.float32))
        self.assertEqual(tuple(logits.shape), (3, 10))

    def test_madry_mnist_levers_change_width_and_activation_only(self):
        wide = models.build("madry_mnist_x2", input_shape=(28, 28, 1), num_classes=10)
        convs = [layer for layer in wide.layers if isinstance(layer, keras.layers.Conv2D)]
        self.assertEqual([c.filters for c in convs], [64, 128])
        self.assertEqual(wide.get_layer("fc1").units, 2048)
        # conv 5*5*64+64, conv 5*5*64*128+128, fc 7*7*128*2048+2048, logits 2048*10+10
        self.assertEqual(wide.count_params(), 1664 + 204928 + 12847104 + 20490)
        wider = models.build("madry_mnist_x4", input_shape=(28, 28, 1), num_classes=10)
        self.assertEqual(wider.get_layer("fc1").units, 4096)
        # conv 5*5*128+128, conv 5*5*128*256+256, fc 7*7*256*4096+4096, logits 4096*10+10
        self.assertEqual(wider.count_params(), 3328 + 819456 + 51384320 + 40970)
        silu = models.build("madry_mnist_silu", input_shape=(28, 28, 1), num_classes=10)
        plain = models.build("madry_mnist", input_shape=(28, 28, 1), num_classes=10)
        self.assertEqual(silu.count_params(), plain.count_params())
        self.assertEqual(silu.get_layer("conv2").activation.__name__, "silu")
        self.assertEqual(plain.get_layer("conv2").activation.__name__, "relu")
        # SiLU lets negative pre-activations through, ReLU does not.
        silu.set_weights(plain.get_weights())
        x = np.random.default_rng(0).random((4, 28, 28, 1)).astype(np.float32)
        self.assertGreater(np.abs(silu(x) - plain(x)).max(), 1e-4)

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

    @parameterized.named_parameters(
        # Trainable parameters of the usual PyTorch definitions: PreAct ResNet-18
        # with the final BN before pooling (Wong et al. 2020: 11,171,146 + 1,024),
        # WRN-34-10 46,160,474.
        ("preact_resnet18", "preact_resnet18", 11_172_170),
        ("wide_resnet", "wide_resnet", 46_160_474),
    )
    def test_resnets(self, name, trainable):
        model = models.build(
            name, input_shape=(32, 32, 3), num_classes=10, soft_quantization={"num_thresholds": 2}
        )
        counted = sum(int(np.prod(w.shape)) for w in model.trainable_weights)
        self.assertEqual(counted, trainable + 2)  # + the two thresholds
        self.assertEqual(tuple(model(np.zeros((2, 32, 32, 3), np.float32)).shape), (2, 10))

    def test_with_soft_quantization_keeps_base_weights_and_preprocessing(self):
        base = keras.applications.MobileNetV2(
            weights=None,
            input_shape=(32, 32, 3),
            classes=10,
            classifier_activation=None,
            alpha=0.35,
        )
        model = models.with_soft_quantization(
            base, preprocessing=[keras.layers.Rescaling(2.0, offset=-1.0)], num_thresholds=3
        )
        self.assertEqual(model.name, f"{base.name}_sq")
        self.assertIsInstance(model.layers[1], SoftQuantization)
        self.assertIs(model.layers[-2], base)  # shared, not copied
        x = np.random.default_rng(0).random((2, 32, 32, 3), dtype=np.float32)
        quantized = model.layers[1](x)
        expected = base(2.0 * quantized - 1.0, training=False)
        np.testing.assert_allclose(model(x, training=False), expected, rtol=1e-5, atol=1e-5)

    def test_unknown_model_lists_valid_ones(self):
        with self.assertRaisesRegex(ValueError, "Valid models: madry_mnist"):
            models.build("resnet", input_shape=(28, 28, 1), num_classes=10)


if __name__ == "__main__":
    absltest.main()
