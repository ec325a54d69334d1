"""The attack suite: every chosen attack at every eps, then the report.

`evaluate` predicts the clean examples, runs each attack of the registry at
each eps of the sweep (`run_attack`), accumulates the results per example in
an `AttackResults`, then runs the two measurements that exist for the
masking checks (the 2x-steps convergence pass and the zero-gradient share)
and returns a `Report` with its checks.
"""

import dataclasses

import numpy as np

from sq_keras.evaluation.attack_runner import predict
from sq_keras.evaluation.attack_runner import run_attack
from sq_keras.evaluation.attack_runner import zero_gradient_shares
from sq_keras.evaluation.checks import masking_checks
from sq_keras.evaluation.registry import DOUBLED
from sq_keras.evaluation.registry import REGISTRY
from sq_keras.evaluation.registry import AttackSettings
from sq_keras.evaluation.registry import Registry
from sq_keras.evaluation.report import Report
from sq_keras.evaluation.report import eps_key

LARGE_EPS = 0.5
NUM_ROBUST_EXAMPLES = 1000  # Indices of robust examples kept in the report.
DEFAULT_SETTINGS = AttackSettings()


def sweep_eps(eps_values, *, add_large_eps=True):
    """Sorted distinct eps values, with `LARGE_EPS` appended when asked.

    Raises:
        ValueError: An eps outside [0, 1] or an empty list.
    """
    values = [float(eps) for eps in eps_values]
    if not values:
        raise ValueError("At least one eps is needed.")
    for eps in values:
        if not 0.0 <= eps <= 1.0:
            raise ValueError(f"eps must be in [0, 1] (pixel units). Received: eps={eps}")
    if add_large_eps and max(values) < LARGE_EPS:
        values.append(LARGE_EPS)
    return sorted(set(values))


def _percent(flags):
    return round(100.0 * float(np.mean(flags)), 4)


class AttackResults:
    """Per-attack results and per-example robustness, filled attack by attack.

    An example stays robust at an eps only while it is classified correctly
    clean and after every attack recorded at that eps.
    """

    def __init__(self, labels, clean_predictions, *, eps_values, primary, num_shown):
        self.labels = labels
        self.clean_correct = clean_predictions == labels
        self.primary = primary
        self.num_shown = num_shown
        self.attacks = {}
        self.robust = {eps: self.clean_correct.copy() for eps in eps_values}
        self.adversarial = {}  # {name: (images, predictions)} at the primary eps.

    def record(self, name, eps, outcome, *, settings, step_size=None):
        """Adds attack `name`'s `AttackOutcome` at `eps`.

        Args:
            name: Report entry name.
            eps: The eps it ran at.
            outcome: Its `AttackOutcome`.
            settings: The entry's settings dict (kept from the first record).
            step_size: The step size at `eps`, recorded when not None.
        """
        correct = self.clean_correct & (outcome.predictions == self.labels)
        self.robust[eps] &= correct
        entry = self.attacks.setdefault(name, {"settings": settings, "results": {}})
        result = {
            "robust_accuracy": _percent(correct),
            "seconds": round(outcome.seconds, 3),
            "images_per_second": round(len(self.labels) / outcome.seconds, 2)
            if outcome.seconds > 0
            else None,
        }
        if outcome.queries is not None:
            result["mean_queries"] = float(np.mean(outcome.queries))
            result["median_queries"] = float(np.median(outcome.queries))
        if step_size is not None:
            result["step_size"] = step_size
        entry["results"][eps_key(eps)] = result
        if eps == self.primary:
            shown = slice(self.num_shown)
            self.adversarial[name] = (outcome.adversarial[shown], outcome.predictions[shown])

    def worst_case_by_eps(self):
        """`{eps_key: accuracy}` of the examples every attack failed on."""
        return {eps_key(eps): _percent(robust) for eps, robust in self.robust.items()}

    def robust_examples(self):
        """Indices of the first examples robust at the primary eps."""
        indices = np.flatnonzero(self.robust[self.primary])
        return [int(i) for i in indices][:NUM_ROBUST_EXAMPLES]


@dataclasses.dataclass(frozen=True)
class _Suite:
    """What every attack run of one `evaluate` call shares."""

    target: object
    images: np.ndarray
    labels: np.ndarray
    settings: AttackSettings
    registry: Registry
    source: object
    batch_size: int
    progress: bool
    strategy: object

    def run(self, name, eps, *, settings=None, description=None):
        """`run_attack` of attack `name` at `eps` (settings: the suite's)."""
        options = {
            "source": self.source,
            "batch_size": self.batch_size,
            "progress": self.progress,
            "strategy": self.strategy,
            "registry": self.registry,
        }
        settings = settings or self.settings
        data = (self.target, self.images, self.labels)
        return run_attack(name, eps, *data, settings=settings, description=description, **options)


def _run_attacks(suite, results, attacks, eps_values):
    """Runs every attack at every eps; returns `{name: reason}` of the skipped."""
    skipped = {}
    for name in attacks:
        reason = suite.registry.skip_reason(name, suite.target, suite.source)
        if reason:
            skipped[name] = reason
            continue
        spec = suite.registry[name]
        settings = spec.settings(results.primary, suite.settings)
        for eps in eps_values:
            step_size = spec.settings(eps, suite.settings).get("step_size")
            results.record(name, eps, suite.run(name, eps), settings=settings, step_size=step_size)
    return skipped


def _doubled_of(suite, results):
    """The first attack run that the convergence check may double, or None."""
    return next(
        (spec.name for spec in suite.registry if spec.doubles and spec.name in results.attacks),
        None,
    )


def _run_doubled_steps(suite, results):
    """For `pgd_steps_converged`: the first doubling attack again with 2x steps.

    Recorded as `DOUBLED` at the primary eps; like every attack run, it also
    counts towards the worst case.
    """
    doubled_of = _doubled_of(suite, results)
    if doubled_of is None or results.primary <= 0:
        return
    doubled = dataclasses.replace(suite.settings, pgd_steps=2 * suite.settings.pgd_steps)
    outcome = suite.run(doubled_of, results.primary, settings=doubled, description=DOUBLED)
    settings = suite.registry[doubled_of].settings(results.primary, doubled)
    results.record(DOUBLED, results.primary, outcome, settings={**settings, "doubles": doubled_of})


def _check_batch_size(batch_size):
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size <= 0:
        raise ValueError(
            f"`batch_size` must be a positive integer. Received: batch_size={batch_size}"
        )


def _shown_examples(results, images, clean_predictions):
    n = results.num_shown
    return {
        "images": images[:n],
        "labels": results.labels[:n],
        "predictions": clean_predictions[:n],
        "adversarial": results.adversarial,
    }


def evaluate(
    target,
    images,
    labels,
    *,
    attacks,
    eps_values,
    settings=DEFAULT_SETTINGS,
    source=None,
    num_classes=None,
    batch_size=250,
    progress=True,
    add_large_eps=True,
    num_shown=8,
    strategy=None,
    registry=REGISTRY,
):
    """Runs the attack suite and builds the report.

    Args:
        target: The `Target` to evaluate.
        images: float32 `[N, H, W, C]` in [0, 1].
        labels: int `[N]`.
        attacks: Attack names, see `resolve_attacks`.
        eps_values: l-inf radii; the first is the primary eps of the report.
        settings: `AttackSettings`.
        source: `Target` to craft the "transfer" attack on.
        num_classes: Number of classes (for chance level); default
            `max(labels) + 1`.
        batch_size: Examples per attack batch.
        progress: Report each attack batch (a bar on a terminal, plain
            lines elsewhere).
        add_large_eps: Append `LARGE_EPS` to the sweep (for the chance check).
        num_shown: Examples kept for the clean-vs-adversarial figure.
        strategy: Optional `tf.distribute` strategy; attack batches are split
            across its replicas.
        registry: The attack `Registry` the names refer to.

    Returns:
        A `Report`, its `checks` filled in.
    """
    _check_batch_size(batch_size)
    primary = float(eps_values[0])
    all_eps = sweep_eps(eps_values, add_large_eps=add_large_eps)
    num_classes = int(num_classes or int(np.max(labels)) + 1)
    images = np.asarray(images, np.float32)
    labels = np.asarray(labels, np.int64)
    suite = _Suite(
        target, images, labels, settings, registry, source, batch_size, progress, strategy
    )
    clean_predictions = predict(target.model_fn, images, batch_size)
    results = AttackResults(
        labels, clean_predictions, eps_values=all_eps, primary=primary, num_shown=num_shown
    )
    skipped = _run_attacks(suite, results, attacks, all_eps)
    _run_doubled_steps(suite, results)
    report = _report(suite, results, all_eps, eps_values, num_classes, skipped)
    report.examples = _shown_examples(results, images, clean_predictions)
    report.checks = masking_checks(report, registry=registry)
    return report


def _report(suite, results, all_eps, eps_values, num_classes, skipped):
    """The `Report` of a finished suite, with the zero-gradient measurement."""
    zero_examples, zero_entries = zero_gradient_shares(
        suite.target.model_fn, suite.images, suite.labels, batch_size=suite.batch_size
    )
    worst_case_by_eps = results.worst_case_by_eps()
    large_eps_added = LARGE_EPS in all_eps and LARGE_EPS not in eps_values
    return Report(
        model=suite.target.path,
        num_examples=len(suite.labels),
        num_classes=num_classes,
        eps=results.primary,
        eps_values=all_eps,
        large_eps_added=LARGE_EPS if large_eps_added else None,
        has_quantizer=suite.target.has_quantizer,
        clean_accuracy=_percent(results.clean_correct),
        attacks=results.attacks,
        skipped=skipped,
        settings=dataclasses.asdict(suite.settings),
        worst_case_accuracy_by_eps=worst_case_by_eps,
        worst_case_accuracy=worst_case_by_eps[eps_key(results.primary)],
        robust_examples=results.robust_examples(),
        zero_gradient_examples_percent=zero_examples,
        zero_gradient_entries_percent=zero_entries,
    )
