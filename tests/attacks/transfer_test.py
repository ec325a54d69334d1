"""Tests of sq_keras.attacks.transfer between two independently trained models."""

import numpy as np
from absl.testing import absltest
from absl.testing import parameterized

from sq_keras import attacks
from tests.attacks.fixtures import TOLERANCE
from tests.attacks.fixtures import eval_data
from tests.attacks.fixtures import model_fn_of
from tests.attacks.fixtures import run
from tests.attacks.fixtures import trained_model


class TransferTest(parameterized.TestCase):
    def test_transfer_from_an_independent_surrogate(self):
        target_fn = model_fn_of(trained_model("natural", seed=0))
        source_fn = model_fn_of(trained_model("natural", seed=1))
        x, y = eval_data()
        x_adv = run(attacks.transfer, source_fn, eps=0.3, step_size=0.01, num_steps=40)(x, y)
        self.assertLessEqual(np.abs(x_adv.numpy() - x).max(), 0.3 + TOLERANCE)
        transferred = attacks.accuracy(target_fn, x_adv, y)
        white_box = attacks.accuracy(
            target_fn, run(attacks.pgd, target_fn, eps=0.3, step_size=0.01, num_steps=40)(x, y), y
        )
        self.assertLess(transferred, attacks.accuracy(target_fn, x, y) - 0.3)
        self.assertLessEqual(white_box, transferred)


if __name__ == "__main__":
    absltest.main()
