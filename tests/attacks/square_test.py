"""Tests of sq_keras.attacks.square on a small model trained on real MNIST."""

import keras
import numpy as np
from absl.testing import absltest
from absl.testing import parameterized

from sq_keras import attacks
from tests.attacks.fixtures import eval_data
from tests.attacks.fixtures import fooled_mask
from tests.attacks.fixtures import model_fn_of
from tests.attacks.fixtures import run
from tests.attacks.fixtures import trained_model


class SquareTest(parameterized.TestCase):
    def test_square_fraction_halves_on_schedule(self):
        self.assertAlmostEqual(float(attacks.square_fraction(5, 10000, 0.8)), 0.8)
        self.assertAlmostEqual(float(attacks.square_fraction(30, 10000, 0.8)), 0.4)
        # Rescaled: iteration 30 of 1,000 is iteration 300 of 10,000.
        self.assertAlmostEqual(float(attacks.square_fraction(30, 1000, 0.8)), 0.1)

    def test_square_reports_queries_within_budget(self):
        model_fn = model_fn_of(trained_model("natural"))
        x, y = eval_data(100)
        x_adv, queries = run(attacks.square, model_fn, eps=0.15, max_queries=40)(x, y)
        queries = queries.numpy()
        fooled = fooled_mask(model_fn, x_adv, y)
        self.assertLessEqual(queries.max(), 40)
        self.assertGreaterEqual(queries.min(), 1)
        # Examples still classified correctly used the whole budget.
        self.assertTrue(np.all(queries[~fooled] == 40))
        self.assertLess(queries[fooled].mean(), 40)


class CrossCheckTest(parameterized.TestCase):
    """Our Square Attack against ART's on the same examples."""

    def test_square_agrees_with_art(self):
        from art.attacks.evasion import SquareAttack
        from art.estimators.classification import TensorFlowV2Classifier

        model = trained_model("natural")
        model_fn = model_fn_of(model)
        x, y = eval_data()
        eps, iterations = 0.1, 300
        x_ours, _ = attacks.square(model_fn, x, y, eps=eps, max_queries=iterations + 1, seed=0)
        ours = attacks.accuracy(model_fn, x_ours, y)
        classifier = TensorFlowV2Classifier(
            model=model,
            nb_classes=10,
            input_shape=(28, 28, 1),
            clip_values=(0.0, 1.0),
            loss_object=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        )
        np.random.seed(0)
        art_attack = SquareAttack(
            estimator=classifier,
            norm=np.inf,
            eps=eps,
            max_iter=iterations,
            p_init=0.8,
            nb_restarts=1,
            batch_size=len(x),
            verbose=False,
        )
        theirs = attacks.accuracy(model_fn, art_attack.generate(x, y=y), y)
        self.assertGreater(theirs, 0.1)
        self.assertLessEqual(abs(ours - theirs), 0.05, (ours, theirs))


if __name__ == "__main__":
    absltest.main()
