"""Tests for sq_keras.throughput."""

from absl.testing import absltest
from absl.testing import parameterized

from sq_keras import throughput
from sq_keras import training


def config(method, **overrides):
    return training.TrainConfig(dataset="mnist", method=method, **overrides)


class TimeTrainStepsTest(parameterized.TestCase):
    def test_adversarial_training_costs_more_than_natural(self):
        costs = throughput.time_train_steps(
            {
                "natural": config("natural"),
                "sq_noisy": config("sq_noisy"),
                "pgd_at": config("pgd_at", pgd_steps=8),
            },
            batch_size=32,
            steps=3,
            repeats=3,
        )
        self.assertEqual(list(costs), ["natural", "sq_noisy", "pgd_at"])
        for cost in costs.values():
            self.assertLen(cost["all_repeats_seconds"], 3)
            self.assertAlmostEqual(cost["images_per_second"], 32 / cost["seconds_per_step"])
        # Eight attack steps (forward + backward each) before every update.
        self.assertGreater(
            costs["pgd_at"]["seconds_per_step"], 3 * costs["natural"]["seconds_per_step"]
        )

    @parameterized.parameters("batch_size", "steps", "repeats")
    def test_bad_counts_are_refused(self, name):
        with self.assertRaisesRegex(ValueError, name):
            throughput.time_train_steps({"natural": config("natural")}, **{name: 0})

    def test_mixed_datasets_are_refused(self):
        with self.assertRaisesRegex(ValueError, "one dataset"):
            throughput.time_train_steps(
                {"a": config("natural"), "b": training.TrainConfig(dataset="cifar10")}
            )


if __name__ == "__main__":
    absltest.main()
