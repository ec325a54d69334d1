"""Tests of sq_keras.attacks.apgd on a small model trained on real MNIST."""

from absl.testing import absltest
from absl.testing import parameterized

from sq_keras import attacks
from tests.attacks.fixtures import eval_data
from tests.attacks.fixtures import model_fn_of
from tests.attacks.fixtures import run
from tests.attacks.fixtures import trained_model


class ApgdTest(parameterized.TestCase):
    def test_apgd_checkpoints_match_paper_for_100_steps(self):
        self.assertEqual(attacks.apgd_checkpoints(100), [0, 22, 41, 57, 70, 80, 87, 93, 99])

    def test_iterative_at_least_as_strong_as_single_step(self):
        model_fn = model_fn_of(trained_model("natural"))
        x, y = eval_data()
        fgsm_acc = attacks.accuracy(model_fn, run(attacks.fgsm, model_fn, eps=0.08)(x, y), y)
        pgd_acc = attacks.accuracy(
            model_fn, run(attacks.pgd, model_fn, eps=0.08, step_size=0.01, num_steps=20)(x, y), y
        )
        apgd_acc = attacks.accuracy(
            model_fn, run(attacks.apgd, model_fn, eps=0.08, num_steps=20)(x, y), y
        )
        self.assertLessEqual(pgd_acc, fgsm_acc)
        self.assertLessEqual(apgd_acc, fgsm_acc)
        # APGD needs no step size and is at least as strong as tuned PGD.
        self.assertLessEqual(apgd_acc, pgd_acc + 0.01)


if __name__ == "__main__":
    absltest.main()
