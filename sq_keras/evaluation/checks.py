"""Gradient-masking checks of a `Report`, one small function per check.

Carlini et al. 2019, "On Evaluating Adversarial Robustness", section 5 and
the appendix checklist. Every check maps `(report, registry)` to
`{"passed": True/False/None, "message": ..., **numbers}`; None means it could
not be run. The attack sets each check compares (one-step, iterative, plain
gradient, gradient-free, transfer, BPDA) come from the attack registry.

A cascade (`report.worst_case_only`) leaves no per-attack accuracies: the
checks that compare attacks are not run there (None).
"""

from sq_keras.evaluation.registry import DOUBLED
from sq_keras.evaluation.registry import GRADIENT_FREE
from sq_keras.evaluation.registry import REGISTRY
from sq_keras.evaluation.registry import TRANSFER

SLACK = 1.0  # Points of accuracy tolerated by the masking checks.
ZERO_GRADIENT_SHARE = 1.0  # Percent of examples allowed an all-zero gradient.


def _check(passed, message, **numbers):
    return {"passed": passed, "message": message, **numbers}


def _verdict(passed, finding, failure, **numbers):
    """A check whose message is `finding`, then "." or the `failure` text."""
    return _check(passed, finding + ("." if passed else failure), **numbers)


def _ran(report, registry, predicate):
    """Names of the registry's attacks matching `predicate` that ran, in suite order."""
    return [name for name in registry.names_where(predicate) if name in report.attacks]


def _plain(spec):
    return spec.plain_gradient


def _rises(name, curve, eps_values):
    """Violations of a non-increasing accuracy `curve` along `eps_values`."""
    violations = []
    for (e0, a0), (e1, a1) in zip(zip(eps_values, curve), zip(eps_values[1:], curve[1:])):
        if a0 is not None and a1 is not None and a1 > a0 + SLACK:
            violations.append(f"{name}: {a0:.1f}% at eps={e0:g} -> {a1:.1f}% at eps={e1:g}")
    return violations


def accuracy_decreases_with_eps(report, registry):
    """Every attack and the worst case are non-increasing along the sweep."""
    del registry
    eps_values = report.eps_values
    if len(eps_values) < 2:
        return _check(None, "Only one eps: no sweep.")
    run = [name for name in report.attacks if name != DOUBLED]
    curves = {name: [report.robust_accuracy(name, e) for e in eps_values] for name in run}
    curves["worst_case"] = [report.worst_case_at(e) for e in eps_values]
    violations = [v for name, curve in curves.items() for v in _rises(name, curve, eps_values)]
    return _check(
        not violations,
        "Accuracy rises with eps: " + "; ".join(violations)
        if violations
        else "Accuracy is non-increasing along the eps sweep.",
        violations=violations,
    )


def chance_at_large_eps(report, registry):
    """At the largest eps the worst case is at or below chance."""
    del registry
    if len(report.eps_values) < 2:
        return _check(None, "Only one eps: no sweep.")
    chance = 100.0 / report.num_classes
    largest = report.eps_values[-1]
    worst = report.worst_case_at(largest)
    return _verdict(
        worst <= chance,
        f"Worst case at eps={largest:g} is {worst:.1f}% vs chance {chance:.1f}%",
        ": the attacks fail where no model can be robust.",
        eps=largest,
        accuracy=worst,
        chance=chance,
    )


def iterative_beats_single_step(report, registry):
    """Iterative plain attacks never leave more than `SLACK` over one-step ones."""
    single_step = registry.names_where(lambda s: s.plain_gradient and not s.iterative)
    iterative = registry.names_where(lambda s: s.plain_gradient and s.iterative)
    ran = set(report.attacks)
    if ran.isdisjoint(single_step) or ran.isdisjoint(iterative):
        return _check(None, f"Needs {' or '.join(single_step)} and an iterative attack.")
    violations = []
    for eps in report.eps_values:
        for one_step in single_step:
            single = report.robust_accuracy(one_step, eps)
            for name in iterative:
                value = report.robust_accuracy(name, eps)
                if value is not None and single is not None and value > single + SLACK:
                    violations.append(
                        f"{name} {value:.1f}% > {one_step} {single:.1f}% at eps={eps:g}"
                    )
    return _check(
        not violations,
        "; ".join(violations)
        if violations
        else "Every iterative attack is at least as strong as FGSM.",
        violations=violations,
    )


def pgd_steps_converged(report, registry):
    """Doubling the steps of a PGD-type attack moves accuracy by < `SLACK`."""
    del registry
    if DOUBLED not in report.attacks:
        return _check(None, "Needs a PGD-type attack at eps > 0.")
    of = report.attacks[DOUBLED]["settings"]["doubles"]
    base = report.robust_accuracy(of, report.eps)
    doubled = report.robust_accuracy(DOUBLED, report.eps)
    change = doubled - base
    return _verdict(
        abs(change) < SLACK,
        f"{of} with 2x steps: {base:.1f}% -> {doubled:.1f}% ({change:+.1f} points)",
        ": not converged, use more steps.",
        attack=of,
        accuracy=base,
        doubled_accuracy=doubled,
        change=change,
    )


def _strongest_vs_plain(report, registry, predicate):
    """At the primary eps: `(name, accuracy)` of the strongest attack run
    matching `predicate`, and the best plain gradient attack's accuracy; None
    unless both sides ran."""
    run = _ran(report, registry, predicate)
    plain = _ran(report, registry, _plain)
    if not run or not plain:
        return None
    name = min(run, key=lambda n: report.robust_accuracy(n, report.eps))
    best_plain = min(report.robust_accuracy(n, report.eps) for n in plain)
    return name, report.robust_accuracy(name, report.eps), best_plain


def _not_stronger_than_plain(report, registry, kind):
    """Attacks of `kind` do not beat the best plain white-box attack."""
    compared = _strongest_vs_plain(report, registry, lambda s: s.kind == kind)
    if compared is None:
        names = registry.names_where(lambda s: s.kind == kind)
        return _check(None, f"Needs {' or '.join(names)} and a plain gradient attack.")
    name, value, plain = compared
    numbers = {"accuracy": value, "best_white_box_accuracy": plain}
    finding = f"{name} {value:.1f}% vs best plain white-box {plain:.1f}% at eps={report.eps:g}"
    failure = ": the gradients are masked; trust the stronger attack."
    return _verdict(value >= plain - SLACK, finding, failure, **numbers)


def gradient_free_not_stronger(report, registry):
    """Gradient-free attacks (Square) do not beat the plain white-box ones."""
    return _not_stronger_than_plain(report, registry, GRADIENT_FREE)


def transfer_not_stronger(report, registry):
    """Transfer attacks do not beat the plain white-box ones."""
    return _not_stronger_than_plain(report, registry, TRANSFER)


def bpda_run(report, registry):
    """A BPDA attack ran whenever the model holds a quantizer."""
    if not report.has_quantizer:
        return _check(None, "The model holds no quantizer.")
    bpda = _ran(report, registry, lambda s: s.bpda)
    return _check(
        bool(bpda),
        "BPDA ran on the quantized model."
        if bpda
        else "The model holds a quantizer but no BPDA attack ran: the result may be masked.",
        attacks=bpda,
    )


def plain_gradients_not_masked(report, registry):
    """BPDA does not beat the plain gradient attacks."""
    compared = _strongest_vs_plain(report, registry, lambda s: s.bpda)
    if compared is None:
        return _check(None, "Needs BPDA and a plain gradient attack.")
    _, bpda, plain = compared
    finding = f"BPDA {bpda:.1f}% vs plain gradients {plain:.1f}% at eps={report.eps:g}"
    failure = ": plain gradient attacks overstate robustness."
    return _verdict(
        bpda >= plain - SLACK, finding, failure, bpda_accuracy=bpda, plain_accuracy=plain
    )


def zero_gradients(report, registry):
    """Under `ZERO_GRADIENT_SHARE` percent of examples have an all-zero gradient."""
    del registry
    share = report.zero_gradient_examples_percent
    entries = report.zero_gradient_entries_percent
    return _verdict(
        share < ZERO_GRADIENT_SHARE,
        f"{share:.1f}% of examples have an all-zero input gradient ({entries:.1f}% of entries)",
        ": gradient attacks cannot move them; use BPDA or Square.",
        examples_percent=share,
        entries_percent=entries,
    )


CHECKS = (
    accuracy_decreases_with_eps,
    chance_at_large_eps,
    iterative_beats_single_step,
    pgd_steps_converged,
    gradient_free_not_stronger,
    transfer_not_stronger,
    bpda_run,
    plain_gradients_not_masked,
    zero_gradients,
)


# Checks that compare one attack's accuracy with another's.
PER_ATTACK_CHECKS = (
    iterative_beats_single_step,
    pgd_steps_converged,
    gradient_free_not_stronger,
    transfer_not_stronger,
    plain_gradients_not_masked,
)


def _run_check(check, report, registry):
    if report.worst_case_only and check in PER_ATTACK_CHECKS:
        return _check(None, "Needs per-attack accuracies; the cascade (worst case only) has none.")
    return check(report, registry)


def masking_checks(report, *, registry=REGISTRY):
    """The gradient-masking checks of a `Report`, as `{name: check}`."""
    return {check.__name__: _run_check(check, report, registry) for check in CHECKS}


def failed_checks(report):
    """`(name, message)` of every failed masking check of a `Report`."""
    return [(name, c["message"]) for name, c in report.checks.items() if c["passed"] is False]
