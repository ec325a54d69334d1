"""Tests of sq_keras.attacks.pgd on small models trained on real MNIST."""

import numpy as np
import tensorflow as tf
from absl.testing import absltest
from absl.testing import parameterized

from sq_keras import attacks
from tests.attacks.fixtures import counting
from tests.attacks.fixtures import eval_data
from tests.attacks.fixtures import fooled_mask
from tests.attacks.fixtures import madry_cnn
from tests.attacks.fixtures import model_fn_of
from tests.attacks.fixtures import run
from tests.attacks.fixtures import square_images
from tests.attacks.fixtures import trained_model


class PropertyTest(parameterized.TestCase):
    def test_accuracy_falls_as_eps_grows(self):
        model_fn = model_fn_of(trained_model("natural"))
        x, y = eval_data()
        accuracies = [
            attacks.accuracy(
                model_fn,
                run(attacks.pgd, model_fn, eps=eps, step_size=eps / 4, num_steps=10)(x, y),
                y,
            )
            for eps in (0.02, 0.05, 0.1, 0.2)
        ]
        self.assertEqual(accuracies, sorted(accuracies, reverse=True), accuracies)
        self.assertGreater(accuracies[0] - accuracies[-1], 0.5, accuracies)

    def test_more_steps_never_help_the_model(self):
        model_fn = model_fn_of(trained_model("natural"))
        x, y = eval_data()
        short = run(attacks.pgd, model_fn, eps=0.06, step_size=0.01, num_steps=3, seed=3)(x, y)
        long = run(attacks.pgd, model_fn, eps=0.06, step_size=0.01, num_steps=12, seed=3)(x, y)
        fooled_short = fooled_mask(model_fn, short, y)
        fooled_long = fooled_mask(model_fn, long, y)
        # Every example fooled by 3 steps is fooled by 12, and 12 fool more.
        self.assertTrue(np.all(fooled_long[fooled_short]))
        self.assertGreater(fooled_long.sum(), fooled_short.sum())

    def test_restarts_never_help_the_model(self):
        model_fn = model_fn_of(trained_model("natural"))
        x, y = eval_data()
        kwargs = {"eps": 0.06, "step_size": 0.015, "num_steps": 5, "seed": 1}
        one = run(attacks.pgd, model_fn, restarts=1, **kwargs)(x, y)
        four = run(attacks.pgd, model_fn, restarts=4, **kwargs)(x, y)
        fooled_one = fooled_mask(model_fn, one, y)
        fooled_four = fooled_mask(model_fn, four, y)
        self.assertTrue(np.all(fooled_four[fooled_one]))
        self.assertGreaterEqual(fooled_four.sum(), fooled_one.sum())

    def test_restarts_attack_each_example_alike_in_any_batch(self):
        # Later restarts only run on the examples still classified correctly;
        # an example's result must not depend on the rest of its batch.
        model_fn = model_fn_of(trained_model("natural"))
        x, y = eval_data(60)
        kwargs = {"eps": 0.05, "step_size": 0.0125, "num_steps": 4, "restarts": 3, "seed": 4}
        whole = run(attacks.pgd, model_fn, **kwargs)(x, y).numpy()
        part = run(attacks.pgd, model_fn, **kwargs)(x[:25], y[:25]).numpy()
        np.testing.assert_allclose(whole[:25], part, atol=1e-6)
        fooled = fooled_mask(model_fn, whole, y)
        self.assertTrue(0 < fooled.sum() < len(y), fooled.sum())

    def test_restarts_when_the_first_fools_every_example(self):
        # Later restarts then have nothing left to attack (an empty batch,
        # which convolutions on some CPU kernels refuse).
        model = madry_cnn()
        x, y = eval_data(40)
        kwargs = {"eps": 0.3, "step_size": 0.05, "num_steps": 5, "seed": 6}
        first = run(attacks.pgd, model_fn_of(model), **kwargs)(x, y)
        fooled = fooled_mask(model_fn_of(model), first, y)
        self.assertGreater(fooled.sum(), 5)
        x, y = x[fooled], y[fooled]
        for model_fn in (model_fn_of(model), attacks.input_gradient_model(model)):
            again = run(attacks.pgd, model_fn, restarts=3, **kwargs)(x, y)
            self.assertTrue(np.all(fooled_mask(model_fn_of(model), again, y)))

    def test_most_damaging_point_beats_last_iterate(self):
        model_fn = model_fn_of(trained_model("natural"))
        x, y = eval_data()
        kwargs = {"eps": 0.06, "step_size": 0.02, "num_steps": 6, "seed": 2}
        best = run(attacks.pgd, model_fn, **kwargs)(x, y)
        last = run(attacks.pgd, model_fn, keep_most_damaging=False, **kwargs)(x, y)
        fooled_best = fooled_mask(model_fn, best, y)
        fooled_last = fooled_mask(model_fn, last, y)
        self.assertTrue(np.all(fooled_best[fooled_last]))
        self.assertGreater(fooled_last.sum(), 0)

    def test_same_seed_same_result(self):
        model_fn = model_fn_of(trained_model("natural"))
        x, y = eval_data(50)
        first = attacks.pgd(model_fn, x, y, eps=0.1, step_size=0.02, num_steps=3, seed=7)
        second = attacks.pgd(model_fn, x, y, eps=0.1, step_size=0.02, num_steps=3, seed=7)
        np.testing.assert_array_equal(first, second)


class StopWhenAllFooledTest(parameterized.TestCase):
    """PGD ends a restart once every example is fooled, and only then."""

    def _calls_and_images(self, x, y, **kwargs):
        model_fn = model_fn_of(trained_model("natural"))
        counted_fn, calls = counting(model_fn)
        images = run(attacks.pgd, counted_fn, **kwargs)(x, y).numpy()
        return int(calls.numpy()), images, fooled_mask(model_fn, images, y)

    def test_stops_once_every_example_is_fooled(self):
        x, y = eval_data(100)
        kwargs = {"eps": 0.3, "step_size": 0.05, "num_steps": 60, "seed": 0}
        stopped_calls, _, stopped_fooled = self._calls_and_images(x, y, **kwargs)
        full_calls, _, full_fooled = self._calls_and_images(
            x, y, stop_when_all_fooled=False, **kwargs
        )
        self.assertTrue(np.all(full_fooled))
        self.assertTrue(np.all(stopped_fooled))
        self.assertGreaterEqual(full_calls, 60)
        self.assertLess(stopped_calls, 20)

    def test_runs_every_step_while_an_example_survives(self):
        x, y = eval_data(100)
        kwargs = {"eps": 0.03, "step_size": 0.01, "num_steps": 8, "restarts": 2, "seed": 0}
        stopped_calls, stopped, fooled = self._calls_and_images(x, y, **kwargs)
        full_calls, full, _ = self._calls_and_images(x, y, stop_when_all_fooled=False, **kwargs)
        self.assertFalse(np.all(fooled))
        self.assertEqual(stopped_calls, full_calls)
        np.testing.assert_array_equal(stopped, full)

    def test_training_mode_runs_every_step(self):
        # Without the most damaging point there is nothing to stop on.
        x, y = eval_data(100)
        kwargs = {"eps": 0.3, "step_size": 0.05, "num_steps": 30, "keep_most_damaging": False}
        calls, _, _ = self._calls_and_images(x, y, **kwargs)
        self.assertEqual(calls, 30)


class StrengthTest(parameterized.TestCase):
    def test_natural_model_is_broken_at_eps_0_3(self):
        model_fn = model_fn_of(trained_model("natural"))
        x, y = eval_data()
        self.assertGreater(attacks.accuracy(model_fn, x, y), 0.85)
        x_pgd = run(attacks.pgd, model_fn, eps=0.3, step_size=0.01, num_steps=40)(x, y)
        self.assertLess(attacks.accuracy(model_fn, x_pgd, y), 0.02)
        x_square = run(square_images, model_fn, eps=0.3, max_queries=1000)(x, y)
        self.assertLess(attacks.accuracy(model_fn, x_square, y), 0.10)


class CrossCheckTest(parameterized.TestCase):
    """Our PGD against cleverhans' on the same examples."""

    def test_pgd_agrees_with_cleverhans(self):
        from cleverhans.tf2.attacks.projected_gradient_descent import projected_gradient_descent

        model_fn = model_fn_of(trained_model("natural"))
        x, y = eval_data()
        eps, step_size, num_steps = 0.08, 0.008, 40
        ours = attacks.accuracy(
            model_fn,
            run(attacks.pgd, model_fn, eps=eps, step_size=step_size, num_steps=num_steps)(x, y),
            y,
        )
        theirs_fn = tf.function(
            lambda images, labels: projected_gradient_descent(
                model_fn,
                images,
                eps,
                step_size,
                num_steps,
                np.inf,
                clip_min=0.0,
                clip_max=1.0,
                y=labels,
                rand_init=True,
                sanity_checks=False,
            )
        )
        theirs = attacks.accuracy(model_fn, theirs_fn(x, y), y)
        self.assertGreater(theirs, 0.1)  # Not a trivial 0 == 0 comparison.
        self.assertLessEqual(abs(ours - theirs), 0.015, (ours, theirs))


if __name__ == "__main__":
    absltest.main()
