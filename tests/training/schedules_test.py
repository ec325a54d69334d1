"""Tests for sq_keras.training.schedules."""

from absl.testing import absltest
from absl.testing import parameterized

from sq_keras import layers
from sq_keras import training


class AlphaAtTest(parameterized.TestCase):
    @parameterized.parameters(*training.ALPHA_SCHEDULES)
    def test_every_schedule_is_one_layers_knows(self, kind):
        config = training.TrainConfig(epochs=3, alpha_start=2.0, alpha_end=8.0, alpha_schedule=kind)
        alphas = [training.alpha_at(config, epoch) for epoch in range(3)]
        expected = [layers.alpha_schedule(e, 3, start=2.0, end=8.0, kind=kind) for e in range(3)]
        self.assertEqual(alphas, expected)
        self.assertEqual(alphas[-1], 8.0)

    def test_geometric_schedule_values(self):
        config = training.TrainConfig(epochs=3, alpha_start=2.0, alpha_end=8.0)
        self.assertEqual([training.alpha_at(config, e) for e in range(3)], [2.0, 4.0, 8.0])


if __name__ == "__main__":
    absltest.main()
