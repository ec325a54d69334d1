"""The attack suite: every chosen attack at every eps, then the report.

`evaluate` predicts the clean examples, runs each attack of the registry at
each eps of the sweep (`run_attack`), accumulates the results per example in
an `AttackResults`, then runs the two measurements that exist for the
masking checks (the 2x-steps convergence pass and the zero-gradient share)
and returns a `Report` with its checks.

Two modes. Per attack (the default): every attack runs on every example, and
each attack's accuracy is its own, as the masking checks need. Cascade
(`worst_case_only=True`, AutoAttack's protocol): each attack runs only on
the examples still robust after the earlier ones, in suite order, so each
attack's entry is the accuracy robust after it and every earlier one; the
worst case is the same as in the per-attack mode whenever the attacks' result
per example does not depend on the other examples of its batch.

With a `BatchStore`, every finished batch is written to disk and a rerun
reads it back instead of attacking again.
"""

import dataclasses

import numpy as np

from sq_keras.evaluation.attack_runner import predict
from sq_keras.evaluation.attack_runner import run_attack
from sq_keras.evaluation.attack_runner import zero_gradient_shares
from sq_keras.evaluation.batch_store import digest
from sq_keras.evaluation.checks import masking_checks
from sq_keras.evaluation.registry import DOUBLED
from sq_keras.evaluation.registry import REGISTRY
from sq_keras.evaluation.registry import AttackSettings
from sq_keras.evaluation.registry import Registry
from sq_keras.evaluation.report import Report
from sq_keras.evaluation.report import eps_key
from sq_keras.evaluation.report import percent

LARGE_EPS = 0.5
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
    return percent(int(np.count_nonzero(flags)), len(flags))


class AttackResults:
    """Per-attack results and per-example robustness, filled attack by attack.

    An example stays robust at an eps only while it is classified correctly
    clean and after every attack recorded at that eps.
    """

    def __init__(self, labels, clean_predictions, *, eps_values, primary, shown, cascade=False):
        self.labels = labels
        self.clean_predictions = clean_predictions
        self.clean_correct = clean_predictions == labels
        self.primary = primary
        self.shown = shown  # The clean images of the figure.
        self.num_shown = len(shown)
        self.cascade = cascade
        self.attacks = {}
        self.robust = {eps: self.clean_correct.copy() for eps in eps_values}
        self.adversarial = {}  # {name: (images, predictions)} at the primary eps.

    def survivors(self, eps):
        """Indices of the examples still robust at `eps`."""
        return np.flatnonzero(self.robust[eps])

    def _all_predictions(self, outcome):
        """Predictions on every example: the clean ones where not attacked."""
        if outcome.indices is None:
            return outcome.predictions
        predictions = self.clean_predictions.copy()
        predictions[outcome.indices] = outcome.predictions
        return predictions

    def _shown_adversarial(self, outcome):
        """The figure's images: adversarial where attacked, else clean."""
        if outcome.indices is None:
            return outcome.adversarial[: self.num_shown]
        images = self.shown.copy()
        images[outcome.indices[: len(outcome.adversarial)]] = outcome.adversarial
        return images

    def record(self, name, eps, outcome, *, settings, step_size=None):
        """Adds attack `name`'s `AttackOutcome` at `eps`.

        Args:
            name: Report entry name.
            eps: The eps it ran at.
            outcome: Its `AttackOutcome`.
            settings: The entry's settings dict (kept from the first record).
            step_size: The step size at `eps`, recorded when not None.
        """
        predictions = self._all_predictions(outcome)
        correct = self.clean_correct & (predictions == self.labels)
        self.robust[eps] &= correct
        entry = self.attacks.setdefault(name, {"settings": settings, "results": {}})
        attacked = len(self.labels) if outcome.indices is None else len(outcome.indices)
        result = {
            "robust_accuracy": _percent(self.robust[eps] if self.cascade else correct),
            "seconds": round(outcome.seconds, 3),
            "images_per_second": round(attacked / outcome.seconds, 2)
            if outcome.seconds > 0
            else None,
        }
        if self.cascade:
            result["attacked_examples"] = attacked
        if outcome.queries is not None:
            result["mean_queries"] = float(np.mean(outcome.queries))
            result["median_queries"] = float(np.median(outcome.queries))
        if step_size is not None:
            result["step_size"] = step_size
        entry["results"][eps_key(eps)] = result
        if eps == self.primary:
            shown = predictions[: self.num_shown]
            self.adversarial[name] = (self._shown_adversarial(outcome), shown)

    def worst_case_by_eps(self):
        """`{eps_key: accuracy}` of the examples every attack failed on."""
        return {eps_key(eps): _percent(robust) for eps, robust in self.robust.items()}

    def robust_examples(self):
        """Indices of every example robust at the primary eps."""
        return [int(i) for i in np.flatnonzero(self.robust[self.primary])]


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
    store: object = None
    num_shown: int = 0
    primary: float = None

    def run(self, name, eps, *, settings=None, description=None, indices=None):
        """`run_attack` of attack `name` at `eps` (settings: the suite's)."""
        options = {
            "source": self.source,
            "batch_size": self.batch_size,
            "progress": self.progress,
            "strategy": self.strategy,
            "registry": self.registry,
            "store": self.store,
            # The figure shows the primary eps only.
            "keep_adversarial": self.num_shown if eps == self.primary else 0,
        }
        settings = settings or self.settings
        data = (self.target, self.images, self.labels)
        return run_attack(
            name, eps, *data, settings=settings, description=description, indices=indices, **options
        )


def _run_attacks(suite, results, attacks, eps_values):
    """Runs every attack at every eps (in a cascade: on the survivors only);
    returns `{name: reason}` of the skipped."""
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
            indices = results.survivors(eps) if results.cascade else None
            outcome = suite.run(name, eps, indices=indices)
            results.record(name, eps, outcome, settings=settings, step_size=step_size)
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
    counts towards the worst case. Not in a cascade (the check needs the
    per-attack mode).
    """
    doubled_of = _doubled_of(suite, results)
    if doubled_of is None or results.primary <= 0 or results.cascade:
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


def _shown_examples(results, clean_predictions):
    n = results.num_shown
    return {
        "images": results.shown,
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
    worst_case_only=False,
    store=None,
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
        worst_case_only: Run as a cascade: each attack only on the examples
            every earlier one failed on (see the module docstring).
        store: Optional `BatchStore` to write finished batches to and read
            them back from on a rerun.

    Returns:
        A `Report`, its `checks` filled in.

    Raises:
        StoreMismatch: `store` holds the batches of another run.
    """
    _check_batch_size(batch_size)
    primary = float(eps_values[0])
    all_eps = sweep_eps(eps_values, add_large_eps=add_large_eps)
    num_classes = int(num_classes or int(np.max(labels)) + 1)
    images = np.asarray(images, np.float32)
    labels = np.asarray(labels, np.int64)
    suite = _Suite(
        target,
        images,
        labels,
        settings,
        registry,
        source,
        batch_size,
        progress,
        strategy,
        store,
        num_shown,
        primary,
    )
    if store is not None:
        store.begin(run_identity(suite, attacks, eps_values, add_large_eps, worst_case_only))
    clean_predictions = predict(target.model_fn, images, batch_size)
    results = AttackResults(
        labels,
        clean_predictions,
        eps_values=all_eps,
        primary=primary,
        shown=images[:num_shown],
        cascade=worst_case_only,
    )
    skipped = _run_attacks(suite, results, attacks, all_eps)
    _run_doubled_steps(suite, results)
    report = _report(suite, results, all_eps, eps_values, num_classes, skipped)
    report.examples = _shown_examples(results, clean_predictions)
    report.checks = masking_checks(report, registry=registry)
    return report


def run_identity(suite, attacks, eps_values, add_large_eps, worst_case_only):
    """What `evaluate` records in a `BatchStore`'s manifest: every argument
    that changes a batch's result, the examples by their digest."""
    return {
        "model": suite.target.path,
        "examples": {
            "num_examples": len(suite.labels),
            "sha256": digest(suite.images, suite.labels),
        },
        "attacks": list(attacks),
        "eps_values": [float(eps) for eps in eps_values],
        "add_large_eps": add_large_eps,
        "settings": dataclasses.asdict(suite.settings),
        "batch_size": suite.batch_size,
        "num_shown": suite.num_shown,
        "worst_case_only": bool(worst_case_only),
    }


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
        worst_case_only=results.cascade,
        worst_case_accuracy_by_eps=worst_case_by_eps,
        worst_case_accuracy=worst_case_by_eps[eps_key(results.primary)],
        robust_examples=results.robust_examples(),
        zero_gradient_examples_percent=zero_examples,
        zero_gradient_entries_percent=zero_entries,
    )
