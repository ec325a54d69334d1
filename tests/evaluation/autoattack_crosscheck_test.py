"""Cross-check of the `autoattack` preset against ART's AutoAttack.

What is compared: on the tiny natural CNN of `tests.evaluation.fixtures`
(no quantizer, so no BPDA on either side), the first `NUM_EXAMPLES` MNIST
test images at eps = `EPS` (where about half of them stay robust), the
robust accuracy left by

* ours: `evaluation.evaluate` with the `autoattack` plan (a cascade of
  APGD-CE, APGD-T, FAB-T and Square) at reduced budgets: `STEPS` steps per
  APGD run and per target, `NUM_TARGETS` targets, `SQUARE_QUERIES` queries;
* ART 1.20.1's `art.attacks.evasion.AutoAttack` (its cascade over the
  examples still robust) with the closest attacks ART has, at the same
  budgets: `AutoProjectedGradientDescent` with the cross-entropy, untargeted;
  the same with ART's DLR loss, targeted (ART's untargeted DLR with the
  target in place of the label), against the `NUM_TARGETS` classes
  of largest clean logit but the true one (AutoAttack's APGD-T targets, Croce
  and Hein 2020, section 5; ART's own targeted mode would take every class in
  index order, so a small wrapper picks them); `SquareAttack` with p_init
  0.8, one restart. ART has no FAB, so our side runs one attack more.

Asserted: the two robust accuracies are within `TOLERANCE` points, so ours
is never weaker than ART's by more than that.
"""

import contextlib
import dataclasses
import importlib.util
import sys
import types

import keras
import numpy as np
from absl.testing import absltest
from art.attacks.attack import EvasionAttack
from art.attacks.evasion import AutoAttack
from art.attacks.evasion import AutoProjectedGradientDescent
from art.attacks.evasion import SquareAttack
from art.estimators.classification import TensorFlowV2Classifier

from sq_keras import attacks
from sq_keras import evaluation
from sq_keras.evaluation import registry
from tests.evaluation.fixtures import examples
from tests.evaluation.fixtures import target_of
from tests.evaluation.fixtures import trained_model

NUM_EXAMPLES = 200
EPS = 0.06
STEPS = 20
NUM_TARGETS = 3
SQUARE_QUERIES = 200
TOLERANCE = 1.5  # Percentage points.
TARGETED = ("apgd_t", "fab_t")


@contextlib.contextmanager
def _without_multiprocess():
    """ART 1.20.1's `AutoAttack.generate` imports `multiprocess` on every call
    but uses it only with `parallel_pool_size > 0`; without the package, an
    empty module stands in during the call (this test runs ART's attacks
    in-process), and is removed afterwards."""
    if importlib.util.find_spec("multiprocess") is not None:
        yield
        return
    sys.modules["multiprocess"] = types.ModuleType("multiprocess")
    try:
        yield
    finally:
        sys.modules.pop("multiprocess", None)


def _few_targets(eps, settings):
    return {**registry.targeted_kwargs(eps, settings), "num_targets": NUM_TARGETS}


def reduced_registry():
    """`REGISTRY` with `NUM_TARGETS` targets for APGD-T and FAB-T."""
    entries = [
        dataclasses.replace(spec, kwargs=_few_targets) if spec.name in TARGETED else spec
        for spec in evaluation.REGISTRY
    ]
    return evaluation.Registry(entries, presets=registry.PRESET_TABLE, aliases=registry.ALIASES)


def ours(model, images, labels):
    """The worst case of the `autoattack` plan, as `apps.evaluate` runs it."""
    reduced = reduced_registry()
    target = target_of(model)
    settings = evaluation.AttackSettings(pgd_steps=STEPS, square_queries=SQUARE_QUERIES)
    plan = reduced.plan(
        ["autoattack"], settings, target=target, explicit=("pgd_steps", "square_queries")
    )
    report = evaluation.evaluate(
        target,
        images,
        labels,
        attacks=plan.attacks,
        eps_values=[EPS],
        settings=plan.settings,
        progress=False,
        add_large_eps=False,
        num_shown=0,
        registry=reduced,
        worst_case_only=plan.worst_case_only,
    )
    return report, plan


class TopTargetsAPGD(EvasionAttack):
    """ART's targeted APGD-DLR against each of the `num_targets` classes of
    largest logit but the top one, on the examples not yet fooled.

    To ART's AutoAttack it is untargeted (success: any wrong class), so it
    runs in its cascade with the other attacks.
    """

    attack_params = EvasionAttack.attack_params
    _estimator_requirements = ()

    def __init__(self, estimator, *, num_targets, **apgd_kwargs):
        super().__init__(estimator=estimator)
        self.num_targets = num_targets
        self.apgd = AutoProjectedGradientDescent(
            estimator=estimator, targeted=True, loss_type="difference_logits_ratio", **apgd_kwargs
        )

    def generate(self, x, y=None, **kwargs):
        labels = np.argmax(y, axis=1)
        ranked = np.argsort(-self.estimator.predict(x), axis=1)
        x_adv = x.copy()
        for rank in range(1, self.num_targets + 1):
            left = np.argmax(self.estimator.predict(x_adv), axis=1) == labels
            if not left.any():
                break
            targets = np.eye(y.shape[1], dtype=y.dtype)[ranked[left, rank]]
            x_adv[left] = self.apgd.generate(x[left], y=targets)
        return x_adv


def art_autoattack(model, images, labels):
    """ART's AutoAttack with the closest attacks; returns the adversarial images."""
    np.random.seed(0)  # ART draws its random starts and squares from numpy.
    classifier = TensorFlowV2Classifier(
        model=model,
        nb_classes=10,
        input_shape=(28, 28, 1),
        clip_values=(0.0, 1.0),
        loss_object=keras.losses.CategoricalCrossentropy(from_logits=True),
    )
    apgd = {
        "norm": np.inf,
        "eps": EPS,
        "eps_step": 2 * EPS,  # APGD's first step size, 2 eps (Croce and Hein 2020).
        "max_iter": STEPS,
        "nb_random_init": 1,
        "batch_size": NUM_EXAMPLES,
        "verbose": False,
    }
    chosen = [
        AutoProjectedGradientDescent(
            estimator=classifier, targeted=False, loss_type="cross_entropy", **apgd
        ),
        TopTargetsAPGD(classifier, num_targets=NUM_TARGETS, **apgd),
        SquareAttack(
            estimator=classifier,
            norm=np.inf,
            eps=EPS,
            max_iter=SQUARE_QUERIES,
            p_init=0.8,
            nb_restarts=1,
            batch_size=NUM_EXAMPLES,
            verbose=False,
        ),
    ]
    autoattack = AutoAttack(
        classifier, norm=np.inf, eps=EPS, attacks=chosen, batch_size=NUM_EXAMPLES
    )
    with _without_multiprocess():
        return autoattack.generate(images, y=labels)


class AutoAttackCrossCheckTest(absltest.TestCase):
    def test_robust_accuracy_matches_art(self):
        model = trained_model("natural")
        images, labels = examples(NUM_EXAMPLES)
        report, plan = ours(model, images, labels)
        self.assertEqual(plan.attacks, ["apgd_ce", "apgd_t", "fab_t", "square"])
        x_adv = art_autoattack(model, images, labels)
        self.assertLessEqual(np.abs(x_adv - images).max(), EPS + 1e-6)
        model_fn = lambda x: model(x, training=False)  # noqa: E731
        art_accuracy = 100.0 * attacks.accuracy(model_fn, x_adv, labels)
        ours_accuracy = report.worst_case_accuracy
        # Mid-range, so both attacks have room to differ.
        self.assertBetween(ours_accuracy, 20.0, 80.0)
        self.assertLess(ours_accuracy, report.clean_accuracy - 10.0)
        self.assertLessEqual(
            abs(ours_accuracy - art_accuracy),
            TOLERANCE,
            f"ours {ours_accuracy}%, ART {art_accuracy:.1f}%",
        )


if __name__ == "__main__":
    absltest.main()
