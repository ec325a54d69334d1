"""Tests for sq_keras.reproduce.config."""

from absl.testing import absltest
from absl.testing import parameterized

from sq_keras import reproduce

_REQUIRED = dict(dataset="mnist", epochs=1, runs_dir="x", output_dir="y", num_examples=1)


class ComparisonConfigTest(parameterized.TestCase):
    @parameterized.named_parameters(
        ("holdout_without_train_examples", {"holdout_examples": 10}, "needs `train_examples`"),
        ("select_only_without_selection", {"select_only": True}, "`select_only` needs"),
        (
            "negative_headline_examples",
            {"headline_examples": -1},
            "`headline_examples` must be >= 0. Received: -1",
        ),
        (
            "repeated_headline_attacks",
            {"headline_attacks": ("strong", "strong")},
            "`headline_attacks` must be unique. Received: strong, strong",
        ),
    )
    def test_bad_settings_are_refused(self, options, message):
        with self.assertRaisesRegex(ValueError, message):
            reproduce.ComparisonConfig(**_REQUIRED, **options)

    def test_defaults_are_the_strong_suite_at_the_first_eps(self):
        config = reproduce.ComparisonConfig(**_REQUIRED, eps_values=(0.2, 0.4))
        self.assertEqual(config.attacks, ("strong",))
        self.assertEqual(config.settings, reproduce.DEFAULT_SETTINGS)
        self.assertEqual(config.eps, 0.2)
        self.assertEqual(config.headline_attacks, ("autoattack",))
        held_out = reproduce.ComparisonConfig(
            **_REQUIRED, train_examples=100, holdout_examples=10, select_only=True
        )
        self.assertTrue(held_out.select_only)


if __name__ == "__main__":
    absltest.main()
