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
                "sq_free": config("sq_free"),
            },
            batch_size=32,
            steps=3,
            repeats=3,
            num_train=100,
        )
        self.assertEqual(list(costs), ["natural", "sq_noisy", "pgd_at", "sq_free"])
        for cost in costs.values():
            self.assertLen(cost["all_repeats_seconds"], 3)
            self.assertAlmostEqual(cost["images_per_second"], 32 / cost["seconds_per_step"])
            self.assertLen(cost["all_repeats_cpu_seconds"], 3)
            self.assertGreater(cost["cpu_seconds_per_step"], 0.0)
        # CPU time: the work done, whatever else the shared machine runs.
        cpu = {name: cost["cpu_seconds_per_step"] for name, cost in costs.items()}
        # Eight attack steps (forward + backward each) before every update.
        self.assertGreater(cpu["pgd_at"], 3 * cpu["natural"])
        # Free training's attack rides on the update's own backward pass.
        self.assertLess(cpu["sq_free"], 0.5 * cpu["pgd_at"])

    @parameterized.parameters("batch_size", "steps", "repeats", "num_train")
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
