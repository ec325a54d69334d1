"""Tests for sq_keras.throughput."""

import time

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

    def test_a_turn_after_another_run_is_timed_at_its_steady_cost(self):
        # A fake run whose first step after the other run's turn is slow, as a
        # real step is on the caches the previous turn left behind.
        last = {"run": None}

        def fake(name, seconds, cold_seconds):
            def step(*args):
                time.sleep(cold_seconds if last["run"] != name else seconds)
                last["run"] = name
                return [0.0]

            return step, lambda index: ()

        runs = {"light": fake("light", 0.001, 0.2), "heavy": fake("heavy", 0.01, 0.01)}
        seconds, _ = throughput._time_round_robin(runs, steps=4, repeats=2, log=None)
        for turns in seconds.values():
            self.assertLen(turns, 2)
        # Four steady steps of 1 ms each: far below one cold step of 200 ms.
        self.assertLess(max(seconds["light"]), 0.1)
        self.assertGreater(min(seconds["heavy"]), 0.04)

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
