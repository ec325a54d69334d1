"""The rows of the comparison: one dict per variant, as the output JSON holds them.

A row carries the variant's training cost, its test-set robustness (when it
was attacked there), its headlines (each preset's cascade on more test
images, where it has them), its held-out numbers (when it was a candidate) and its
speed-ups against the reference: per epoch, from the round-robin step times,
and to reach its own robustness, from the reference's curve; candidates also
carry their robustness after each epoch on the held-out images and the
speed-up to reach it there.
"""

import statistics

from sq_keras.reproduce.attacking import eps_key
from sq_keras.reproduce.variants import REFERENCE


def epochs_to_reach(curve, accuracy):
    """The first epoch after which `curve` reaches `accuracy` (or None)."""
    for point in curve["points"]:
        if point["robust_accuracy"] >= accuracy:
            return point["epoch"]
    return None


def _base(variant, trained, *, per_epoch, step_seconds, tested):
    return {
        "name": variant.name,
        "method": variant.method,
        "settings": variant.train_settings(),
        "note": variant.note,
        "epochs": trained.results["epochs_done"],
        "seconds_per_epoch": per_epoch,
        "total_train_seconds": trained.results["total_train_seconds"],
        "seconds_per_step": step_seconds,
        "tested": tested,
        "clean_accuracy": None,
        "robust_accuracy": {},
        "skipped": {},
        "worst_case_accuracy": None,
        "worst_case_accuracy_by_eps": {},
        "failed_checks": [],
        "num_examples": None,
        "grad_l1": [h["grad_l1"] for h in trained.history],
        "trained_at_commit": trained.trained_at_commit,
    }


def _test_results(report):
    """The row's test-set cells: robust accuracy per attack at the report's eps."""
    eps = eps_key(report["eps"])
    return {
        "clean_accuracy": report["clean_accuracy"],
        "robust_accuracy": {
            name: entry["results"][eps]["robust_accuracy"]
            for name, entry in report["attacks"].items()
            if eps in entry["results"]
        },
        "skipped": report.get("skipped", {}),
        "worst_case_accuracy": report["worst_case_accuracy"],
        "worst_case_accuracy_by_eps": report["worst_case_accuracy_by_eps"],
        "failed_checks": [k for k, c in report["checks"].items() if c.get("passed") is False],
        "num_examples": report["num_examples"],
    }


def _headline(report):
    """One headline of a row: the cascade's accuracy after each attack and at the end."""
    eps = eps_key(report["eps"])
    return {
        "attacks": list(report["attacks"]),
        "num_examples": report["num_examples"],
        "clean_accuracy": report["clean_accuracy"],
        "robust_accuracy": {
            name: entry["results"][eps]["robust_accuracy"]
            for name, entry in report["attacks"].items()
            if eps in entry["results"]
        },
        "worst_case_accuracy": report["worst_case_accuracy"],
    }


def _speedups_per_epoch(reference, *, step_seconds, per_epoch):
    # Every variant trains on the same batches, so the cost ratio of one
    # step is that of one epoch; timed round-robin, it does not depend on
    # other load on the machine, unlike the wall-clock seconds per epoch.
    speedups = {"speedup_per_epoch_vs_pgd_at": reference.seconds_per_step / step_seconds}
    if per_epoch:
        speedups["wall_speedup_per_epoch_vs_pgd_at"] = reference.seconds_per_epoch / per_epoch
    return speedups


def _speedup_to_reach(reference, *, worst_case, epochs, step_seconds):
    # Training cost until the attacks of the curve leave the reference as
    # robust as this variant is under the whole suite, over this variant's
    # whole training cost.
    reach = epochs_to_reach(reference.curve, worst_case)
    return {
        "pgd_at_epochs_to_reach": reach,
        "speedup_to_reach_vs_pgd_at": (
            reach * reference.seconds_per_step / (epochs * step_seconds)
            if reach is not None
            else None
        ),
    }


def _holdout_reach(curve, reference_curve, *, step_seconds, reference_step_seconds):
    # On the held-out images: the epochs this variant needs to first reach
    # the robustness it ends with, and those the reference needs to reach
    # it; the speed-up is the ratio of their training costs.
    final = curve["points"][-1]["robust_accuracy"] if curve["points"] else None
    own = epochs_to_reach(curve, final) if final is not None else None
    cells = {
        "holdout_curve": [p["robust_accuracy"] for p in curve["points"]],
        "holdout_epochs_to_reach": own,
    }
    if reference_curve is None:
        return cells
    reach = epochs_to_reach(reference_curve, final) if final is not None else None
    cells["holdout_pgd_at_epochs_to_reach"] = reach
    cells["holdout_speedup_to_reach_vs_pgd_at"] = (
        reach * reference_step_seconds / (own * step_seconds) if reach and own else None
    )
    return cells


def row(
    variant,
    trained,
    *,
    step_seconds,
    report=None,
    reference=None,
    holdout=None,
    holdout_curve=None,
    reference_holdout_curve=None,
    headlines=None,
):
    """One variant's row.

    Args:
        variant: The `Variant`.
        trained: Its `stages.TrainedRun`.
        step_seconds: Its round-robin step time.
        report: Its test-set report (None: not attacked on the test set).
        reference: The `stages.Reference` (None: no speed-ups).
        holdout: Its held-out report (None: not a candidate).
        holdout_curve: Its robustness after each epoch on the held-out
            images (None: not measured).
        reference_holdout_curve: The reference's, on the same images.
        headlines: `{preset: headline report}` (`attacking.attack_headline`),
            or None.

    Returns:
        The row dict, keys in the order the JSON records them.
    """
    history = trained.history
    per_epoch = statistics.median(h["seconds"] for h in history) if history else None
    cells = _base(
        variant, trained, per_epoch=per_epoch, step_seconds=step_seconds, tested=report is not None
    )
    if report is not None:
        cells.update(_test_results(report))
    if headlines:
        cells["headlines"] = {preset: _headline(r) for preset, r in headlines.items()}
    if holdout is not None:
        cells["holdout_worst_case_accuracy"] = holdout["worst_case_accuracy"]
        cells["holdout_clean_accuracy"] = holdout["clean_accuracy"]
    if holdout_curve is not None:
        cells.update(
            _holdout_reach(
                holdout_curve,
                reference_holdout_curve,
                step_seconds=step_seconds,
                reference_step_seconds=reference.seconds_per_step if reference else None,
            )
        )
    if reference is not None:
        cells.update(_speedups_per_epoch(reference, step_seconds=step_seconds, per_epoch=per_epoch))
        if reference.curve is not None and report is not None:
            cells.update(
                _speedup_to_reach(
                    reference,
                    worst_case=report["worst_case_accuracy"],
                    epochs=cells["epochs"],
                    step_seconds=step_seconds,
                )
            )
    return cells


def build_rows(
    variants, trained, costs, *, reports, reference, holdout, holdout_curves=None, headlines=None
):
    """The rows of every variant, in order.

    Args:
        variants: The `Variant`s.
        trained: `{name: stages.TrainedRun}`.
        costs: The `stages.StepCosts`.
        reports: `{name: test report}` of the tested variants.
        reference: The `stages.Reference` or None.
        holdout: The `stages.Holdout` or None.
        holdout_curves: `{name: held-out curve}` (`stages.measure_holdout_curves`).
        headlines: `{name: {preset: headline report}}` (`stages.attack_headlines`).
    """
    held = holdout.reports if holdout is not None else {}
    curves = holdout_curves or {}
    headlines = headlines or {}
    return [
        row(
            v,
            trained[v.name],
            step_seconds=costs.seconds_per_step[v.name],
            report=reports.get(v.name),
            reference=reference,
            holdout=held.get(v.name),
            holdout_curve=curves.get(v.name),
            reference_holdout_curve=curves.get(REFERENCE) if v.name != REFERENCE else None,
            headlines=headlines.get(v.name),
        )
        for v in variants
    ]
