"""Tests of the sq_keras.attacks package: its public names."""

from absl.testing import absltest
from absl.testing import parameterized

from sq_keras import attacks

FUNCTIONS = (
    "project_linf",
    "clip_to_bounds",
    "predictions",
    "accuracy",
    "cross_entropy_loss",
    "margin_loss",
    "dlr_loss",
    "dlr_targeted_loss",
    "targeted_loss",
    "loss_gradient",
    "fgsm",
    "pgd",
    "apgd",
    "apgd_checkpoints",
    "apgd_targeted",
    "fab",
    "fab_targeted",
    "square",
    "square_fraction",
    "transfer",
    "bpda",
    "input_gradient_model",
    "has_quantizer",
)


class ExportsTest(parameterized.TestCase):
    @parameterized.parameters(*FUNCTIONS)
    def test_function_is_exported(self, name):
        # A function, not the submodule of the same name (pgd, square, ...).
        self.assertTrue(callable(getattr(attacks, name)), name)
        self.assertIn(name, attacks.__all__)

    def test_choices_are_exported(self):
        self.assertEqual(attacks.LOSSES, ("ce", "margin", "dlr"))
        self.assertEqual(attacks.TARGETED_LOSSES, ("dlr_targeted",))
        self.assertEqual(attacks.STAND_INS, ("identity", "smooth"))
        self.assertEqual(
            set(attacks.__all__), set(FUNCTIONS) | {"LOSSES", "STAND_INS", "TARGETED_LOSSES"}
        )


if __name__ == "__main__":
    absltest.main()
