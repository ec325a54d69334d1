"""Tests of sq_keras.attacks.fab on linear models and a small MNIST model.

On a linear binary classifier the smallest l-inf perturbation that flips the
class is known in closed form (away from the box) or from a linear program
(with it), so FAB's minimal norms can be checked to a tight tolerance.
"""

import numpy as np
import tensorflow as tf
from absl.testing import absltest
from absl.testing import parameterized
from scipy import optimize

from sq_keras import attacks
from sq_keras.attacks.fab import project_onto_hyperplane
from tests.attacks.fixtures import TOLERANCE
from tests.attacks.fixtures import counting
from tests.attacks.fixtures import eval_data
from tests.attacks.fixtures import fooled_mask
from tests.attacks.fixtures import model_fn_of
from tests.attacks.fixtures import run
from tests.attacks.fixtures import trained_model


def _linf_distance_lp(point, w, b, low, high):
    """`min ||d||_inf` with `w . (point + d) = b` in the box, by linear programming.

    Returns None when the box does not reach the hyperplane.
    """
    n = len(point)
    cost = np.r_[np.zeros(n), 1.0]  # Variables: d, then the bound t on |d_i|.
    eye = np.eye(n)
    bound_rows = np.block([[eye, -np.ones((n, 1))], [-eye, -np.ones((n, 1))]])
    result = optimize.linprog(
        cost,
        A_ub=bound_rows,
        b_ub=np.zeros(2 * n),
        A_eq=np.r_[w, 0.0][None],
        b_eq=[b - w @ point],
        bounds=[(low - p, high - p) for p in point] + [(0.0, None)],
        method="highs",
    )
    return result.x[n] if result.status == 0 else None


def _binary_linear(w, c):
    """A 2-class model on 2x2x2 images: logits `[0, w . x + c]`."""
    w = tf.constant(w, tf.float32)

    def model_fn(images):
        score = tf.reshape(images, [tf.shape(images)[0], -1]) @ w[:, None] + c
        return tf.concat([tf.zeros_like(score), score], axis=1)

    return model_fn


def _linear_case(seed, margin=0.05):
    """A random binary linear model and 8 images of class 0 with pixels in [0.3, 0.7].

    The largest score `w . x + c` is `-margin`.
    """
    rng = np.random.default_rng(seed)
    w = rng.normal(size=8).astype(np.float32)
    x = rng.uniform(0.3, 0.7, size=(8, 2, 2, 2)).astype(np.float32)
    c = -float(np.max(x.reshape(8, -1) @ w)) - margin  # Every image is class 0.
    return _binary_linear(w, c), x, np.zeros(8, np.int64), w, c


def _multiclass_linear(seed, num_classes=4):
    """A random linear model on 8 images of class 0, and their exact minimal norms.

    The images are misclassified where some `z_k - z_0 > 0`, a union of
    half-spaces, so (away from the box) the smallest l-inf perturbation is
    `min_k |z_k - z_0| / ||w_k - w_0||_1`.
    """
    rng = np.random.default_rng(seed)
    w = rng.normal(size=(num_classes, 8)).astype(np.float32)
    x = rng.uniform(0.3, 0.7, size=(8, 2, 2, 2)).astype(np.float32)
    flat = x.reshape(8, -1)
    rises = flat @ (w - w[0]).T  # [8, num_classes], column 0 is zero.
    bias = -rises.max(axis=0) - 0.05
    bias[0] = 0.0
    gaps = rises[:, 1:] + bias[1:]
    exact = np.min(np.abs(gaps) / np.abs(w[1:] - w[0]).sum(axis=1), axis=1)

    def model_fn(images):
        return tf.reshape(images, [tf.shape(images)[0], -1]) @ w.T + bias

    return model_fn, x, np.zeros(8, np.int64), exact


class ProjectionTest(parameterized.TestCase):
    @parameterized.named_parameters(("unit_box", 0.0, 1.0), ("tight_box", 0.35, 0.65))
    def test_matches_linear_program(self, low, high):
        rng = np.random.default_rng(0)
        points = rng.uniform(max(low, 0.2), min(high, 0.8), (30, 12)).astype(np.float32)
        w = rng.normal(size=(30, 12)).astype(np.float32)
        w[:, :2] = 0.0  # Coordinates the hyperplane ignores must not move.
        b = np.sum(w * points, 1) + 2.0 * rng.normal(size=30).astype(np.float32)
        d = project_onto_hyperplane(points, w, b, clip_min=low, clip_max=high).numpy()
        self.assertTrue(np.all(d[:, :2] == 0.0))
        self.assertTrue(np.all((points + d >= low - 1e-6) & (points + d <= high + 1e-6)))
        cases = {"unreachable": 0, "box_binds": 0}
        for i in range(30):
            best = _linf_distance_lp(points[i], w[i], b[i], low, high)
            if best is None:  # The box corner nearest the hyperplane.
                cases["unreachable"] += 1
                corner = np.where(w[i] * (w[i] @ points[i] - b[i]) > 0, low, high)
                np.testing.assert_allclose(points[i, 2:] + d[i, 2:], corner[2:], atol=1e-6)
                continue
            self.assertAlmostEqual(np.abs(d[i]).max(), best, delta=1e-5 + 1e-4 * best)
            self.assertAlmostEqual(w[i] @ (points[i] + d[i]), b[i], delta=1e-4)
            unboxed = abs(w[i] @ points[i] - b[i]) / np.abs(w[i]).sum()
            cases["box_binds"] += int(best > unboxed + 1e-4)
        # Every branch is exercised: unreachable, reached with and without the box binding.
        self.assertTrue(0 < cases["unreachable"] < 25 and cases["box_binds"] > 3, cases)


class StopWhenAllFooledTest(parameterized.TestCase):
    """FAB-T ends a run once every example is fooled within eps, and only then."""

    def _calls_and_norms(self, x, y, **kwargs):
        model_fn = model_fn_of(trained_model("natural"))
        counted_fn, calls = counting(model_fn)
        images, norms = run(attacks.fab_targeted, counted_fn, return_norms=True, **kwargs)(x, y)
        return int(calls.numpy()), images.numpy(), norms.numpy()

    def test_stops_once_every_example_is_fooled_within_eps(self):
        x, y = eval_data(100)
        kwargs = {"eps": 0.3, "num_steps": 50, "num_targets": 3}
        stopped_calls, _, stopped_norms = self._calls_and_norms(x, y, **kwargs)
        full_calls, _, full_norms = self._calls_and_norms(
            x, y, stop_when_all_fooled=False, **kwargs
        )
        self.assertTrue(np.all(full_norms <= 0.3))
        self.assertTrue(np.all(stopped_norms <= 0.3))
        # Without the stop the run keeps shrinking the perturbations.
        self.assertLess(np.mean(full_norms), np.mean(stopped_norms))
        self.assertGreaterEqual(full_calls, 50)
        self.assertLess(stopped_calls, 20)

    def test_runs_every_step_while_an_example_survives(self):
        x, y = eval_data(100)
        kwargs = {"eps": 0.03, "num_steps": 10, "num_targets": 2}
        stopped_calls, stopped, norms = self._calls_and_norms(x, y, **kwargs)
        full_calls, full, _ = self._calls_and_norms(x, y, stop_when_all_fooled=False, **kwargs)
        self.assertFalse(np.all(norms <= 0.03))
        self.assertEqual(stopped_calls, full_calls)
        np.testing.assert_array_equal(stopped, full)

    def test_fab_keeps_minimal_norms_by_default(self):
        x, y = eval_data(50)
        model_fn = model_fn_of(trained_model("natural"))
        kwargs = {"eps": 0.3, "num_steps": 20, "num_targets": 1, "return_norms": True}
        _, default = attacks.fab(model_fn, x, y, **kwargs)
        _, full = attacks.fab(model_fn, x, y, stop_when_all_fooled=False, **kwargs)
        np.testing.assert_array_equal(default, full)


class LinearModelTest(parameterized.TestCase):
    def test_finds_the_minimal_norm_away_from_the_box(self):
        model_fn, x, y, w, c = _linear_case(seed=1)
        exact = np.abs(x.reshape(8, -1) @ w + c) / np.abs(w).sum()
        for eta, slack in ((1.001, 1e-3), (1.05, 0.05)):
            x_adv, norms = attacks.fab_targeted(
                model_fn,
                x,
                y,
                eps=1.0,
                num_steps=20,
                num_targets=1,
                eta=eta,
                return_norms=True,
                stop_when_all_fooled=False,
            )
            # Never below the true minimum, at most `eta - 1` above it.
            self.assertTrue(np.all(norms >= exact * (1 - 1e-5)), (norms, exact))
            self.assertTrue(np.all(norms <= exact * (1 + slack)), (norms, exact))
            self.assertTrue(np.all(fooled_mask(model_fn, x_adv, y)))
            np.testing.assert_allclose(np.abs(x_adv - x).reshape(8, -1).max(1), norms)

    @parameterized.named_parameters(("box_binds", 1.0, True), ("box_unreachable", 1.5, False))
    def test_finds_the_minimal_norm_within_a_tight_box(self, margin, reachable):
        model_fn, x, y, w, c = _linear_case(seed=2, margin=margin)
        low, high = 0.25, 0.75
        flat = x.reshape(8, -1)
        exact = np.array([_linf_distance_lp(p, w, -c, low, high) or np.inf for p in flat])
        x_adv, norms = attacks.fab_targeted(
            model_fn,
            x,
            y,
            eps=1.0,
            num_steps=20,
            num_targets=1,
            eta=1.001,
            clip_min=low,
            clip_max=high,
            return_norms=True,
            stop_when_all_fooled=False,
        )
        self.assertTrue(np.all((x_adv >= low) & (x_adv <= high)))
        np.testing.assert_array_equal(fooled_mask(model_fn, x_adv, y), reachable)
        if reachable:
            # The box binds: every minimum is above the one without a box.
            unboxed = np.abs(flat @ w + c) / np.abs(w).sum()
            self.assertTrue(np.all(exact > unboxed + 1e-3), (exact, unboxed))
            np.testing.assert_allclose(norms, exact, rtol=1e-3)
        else:
            self.assertTrue(np.all(np.isinf(exact)) and np.all(np.isinf(norms)), norms)
            np.testing.assert_array_equal(x_adv, x)

    def test_untargeted_finds_the_nearest_class(self):
        model_fn, x, y, exact = _multiclass_linear(seed=3)
        self.assertLess(exact.max(), 0.25)  # The box does not bind.
        x_adv, norms = attacks.fab(
            model_fn, x, y, eps=1.0, num_steps=20, eta=1.001, return_norms=True
        )
        self.assertTrue(np.all(norms >= exact * (1 - 1e-5)), (norms, exact))
        np.testing.assert_allclose(norms, exact, rtol=1e-3)
        self.assertTrue(np.all(fooled_mask(model_fn, x_adv, y)))
        # Targeted runs may cross another boundary first, never below the minimum.
        _, targeted = attacks.fab_targeted(
            model_fn, x, y, eps=1.0, num_steps=20, num_targets=3, return_norms=True
        )
        self.assertTrue(np.all(targeted >= exact * (1 - 1e-5)), (targeted, exact))

    def test_eps_decides_success(self):
        model_fn, x, y, w, c = _linear_case(seed=1)
        exact = np.abs(x.reshape(8, -1) @ w + c) / np.abs(w).sum()
        eps = float(np.median(exact))
        x_adv, norms = attacks.fab_targeted(
            model_fn, x, y, eps=eps, num_steps=20, num_targets=1, return_norms=True
        )
        fooled = fooled_mask(model_fn, x_adv, y)
        np.testing.assert_array_equal(fooled, norms.numpy() <= eps)
        self.assertTrue(0 < fooled.sum() < 8, fooled)
        np.testing.assert_array_equal(x_adv.numpy()[~fooled], x[~fooled])

    def test_num_targets_must_be_below_num_classes(self):
        model_fn, x, y, _, _ = _linear_case(seed=1)
        with self.assertRaisesRegex(ValueError, "num_targets"):
            attacks.fab_targeted(model_fn, x, y, eps=0.1, num_targets=2)


class PropertyTest(parameterized.TestCase):
    def test_within_eps_and_bounds_on_mnist(self):
        model_fn = model_fn_of(trained_model("natural"))
        x, y = eval_data(40)
        x_adv = run(
            attacks.fab_targeted,
            model_fn,
            eps=0.1,
            num_steps=10,
            num_targets=2,
            restarts=2,
            clip_min=0.05,
            clip_max=0.95,
        )(x, y).numpy()
        self.assertLessEqual(np.abs(x_adv - x).max(), 0.1 + TOLERANCE)
        self.assertTrue(np.all((x_adv >= 0.05) & (x_adv <= 0.95)))
        self.assertGreater(fooled_mask(model_fn, x_adv, y).sum(), 5)

    def test_eps_zero_returns_x(self):
        model_fn, x, y, _, _ = _linear_case(seed=1)
        x_adv, norms = attacks.fab_targeted(
            model_fn, x, y, eps=0.0, num_steps=5, num_targets=1, restarts=2, return_norms=True
        )
        np.testing.assert_array_equal(x_adv, x)
        self.assertTrue(np.all(norms > 0), norms)

    def test_misclassified_examples_are_not_attacked(self):
        model_fn, x, _, _, _ = _linear_case(seed=1)
        wrong = np.ones(8, np.int64)  # Every image is class 0.
        x_adv, norms = attacks.fab_targeted(
            model_fn, x, wrong, eps=0.1, num_steps=5, num_targets=1, return_norms=True
        )
        np.testing.assert_array_equal(x_adv, x)
        np.testing.assert_array_equal(norms, np.zeros(8))

    def test_seeded_determinism_and_eager_matches_graph(self):
        model_fn = model_fn_of(trained_model("natural"))
        x, y = eval_data(20)
        kwargs = {"eps": 0.08, "num_steps": 4, "num_targets": 2, "restarts": 2, "seed": 3}
        attack = run(attacks.fab_targeted, model_fn, **kwargs)
        first = attack(x, y).numpy()
        np.testing.assert_array_equal(attack(x, y), first)
        np.testing.assert_allclose(attacks.fab_targeted(model_fn, x, y, **kwargs), first, atol=1e-5)
        self.assertFalse(np.array_equal(first, x))

    def test_bad_constants_raise(self):
        model_fn, x, y, _, _ = _linear_case(seed=1)
        for kwargs in (
            {"eta": 0.9},
            {"beta": 1.0},
            {"alpha_max": 1.5},
            {"num_targets": 0},
            {"num_targets": None},
        ):
            with self.assertRaises(ValueError):
                attacks.fab_targeted(model_fn, x, y, eps=0.1, **kwargs)


class MnistTest(parameterized.TestCase):
    def test_accuracy_falls_with_eps_and_matches_pgd(self):
        model_fn = model_fn_of(trained_model("natural"))
        x, y = eval_data(100)
        attack = tf.function(
            lambda x, y, eps: attacks.fab_targeted(
                model_fn, x, y, eps=eps, num_steps=30, num_targets=3, return_norms=True
            )
        )
        accuracies = []
        for eps in (0.03, 0.1):
            x_adv, norms = attack(x, y, tf.constant(eps))
            fooled = fooled_mask(model_fn, x_adv, y)
            # The norms are the true distances of misclassified points.
            np.testing.assert_array_equal(fooled, norms.numpy() <= eps)
            np.testing.assert_allclose(
                np.abs(x_adv - x).reshape(100, -1).max(1)[fooled & (norms > 0)],
                norms.numpy()[fooled & (norms > 0)],
            )
            pgd = run(
                attacks.pgd, model_fn, eps=eps, step_size=eps / 8, num_steps=30, loss="margin"
            )(x, y)
            accuracies.append(1.0 - fooled.mean())
            # A minimal-norm attack is as strong as PGD at the same eps, and
            # finds nothing PGD misses by far (no spurious tiny norms).
            self.assertLessEqual(abs(accuracies[-1] - attacks.accuracy(model_fn, pgd, y)), 0.04)
        self.assertGreater(accuracies[0] - accuracies[1], 0.3, accuracies)


if __name__ == "__main__":
    absltest.main()
