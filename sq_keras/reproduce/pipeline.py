"""`run`: the whole comparison, from training to the written table."""

import dataclasses
import os

from sq_keras import jsonio
from sq_keras import provenance
from sq_keras.reproduce.attacking import load_split
from sq_keras.reproduce.attacking import resolve_attacks
from sq_keras.reproduce.attacking import table_columns
from sq_keras.reproduce.figures import write_figures
from sq_keras.reproduce.markdown import markdown
from sq_keras.reproduce.markdown import provenance_line
from sq_keras.reproduce.stages import Workspace
from sq_keras.reproduce.stages import attack_headlines
from sq_keras.reproduce.stages import attack_tested
from sq_keras.reproduce.stages import choose_tested
from sq_keras.reproduce.stages import headline_names
from sq_keras.reproduce.stages import measure_holdout_curves
from sq_keras.reproduce.stages import measure_reference
from sq_keras.reproduce.stages import select_on_holdout
from sq_keras.reproduce.stages import time_steps
from sq_keras.reproduce.stages import train_all
from sq_keras.reproduce.table import build_rows
from sq_keras.reproduce.variants import REFERENCE


def _check_variants(variants):
    names = [v.name for v in variants]
    if len(set(names)) != len(names):
        raise ValueError(f"Variant names must be unique. Received: {names}")


def _selection(variants, holdout, tested, attacks):
    """The selection record; `attacks` are the selection's own (None: the suite's)."""
    if holdout is None:
        return None
    return {**holdout.record([v for v in variants if v.candidate], tested), "attacks": attacks}


def _write_outputs(payload, *, output_dir, columns):
    """Writes `<dataset>.json` and `<dataset>.md` of `payload` into `output_dir`."""
    dataset = payload["dataset"]
    jsonio.write_json(os.path.join(output_dir, f"{dataset}.json"), payload)
    page = markdown(
        payload["rows"],
        columns,
        payload["eps"],
        selection=payload["selection"],
        curve=payload["reference_curve"],
        holdout_curves=payload.get("holdout_curves"),
        provenance=provenance_line(payload),
    )
    with open(os.path.join(output_dir, f"{dataset}.md"), "w") as f:
        f.write(page)


@dataclasses.dataclass
class _Measured:
    """What the comparison measured of its trained variants, for the outputs."""

    source_name: str
    num_tested_examples: int
    holdout: object
    tested: list
    curves: dict
    reference: object
    rows: list


def _suites(config, workspace, source_name):
    """`(suite, selection_suite)`: the test set's attacks and the held-out screen's."""
    suite = workspace.suite(
        attacks=list(config.attacks), settings=config.settings, source_name=source_name
    )
    if config.selection_attacks is None:
        return suite, suite
    selection_suite = workspace.suite(
        attacks=list(config.selection_attacks), settings=config.settings, source_name=source_name
    )
    return suite, selection_suite


def _measure(variants, config, workspace, trained):
    """Times the steps, selects on held-out images, attacks the test set."""
    costs = time_steps(
        variants, workspace, steps=config.timing_steps, repeats=config.timing_repeats
    )
    source_name = REFERENCE if REFERENCE in trained else variants[0].name
    suite, selection_suite = _suites(config, workspace, source_name)
    data_dir, eps = config.data_dir, config.eps
    test = load_split(config.dataset, "test", num_examples=config.num_examples, data_dir=data_dir)
    holdout = select_on_holdout(
        selection_suite,
        variants,
        config.train_examples,
        config.holdout_examples,
        eps=eps,
        data_dir=data_dir,
    )
    curve_holdout = holdout if config.curve_examples != 0 else None
    curves = measure_holdout_curves(
        suite, trained, variants, curve_holdout, eps=eps, data_dir=data_dir
    )
    tested = []
    if not config.select_only:
        tested = choose_tested(variants, holdout, test_unselected=config.test_unselected)
    reports = attack_tested(suite, tested, test, eps_values=config.eps_values)
    headlines = attack_headlines(
        suite,
        headline_names(tested, holdout),
        num_examples=config.headline_examples,
        eps=eps,
        data_dir=data_dir,
        presets=config.headline_attacks,
    )
    curve_examples = 0 if config.select_only else config.curve_examples
    reference = measure_reference(
        suite, trained, costs, test, eps=eps, curve_examples=curve_examples
    )
    rows = build_rows(
        variants,
        trained,
        costs,
        reports=reports,
        reference=reference,
        holdout=holdout,
        holdout_curves=curves,
        headlines=headlines,
    )
    return _Measured(source_name, len(test.labels), holdout, tested, curves, reference, rows)


def _payload(variants, config, measured, figures):
    """The record written to `<dataset>.json`."""
    selection_attacks = list(config.selection_attacks) if config.selection_attacks else None
    reference = measured.reference
    return {
        "command": config.command,
        "dataset": config.dataset,
        "epochs": config.epochs,
        "seed": config.seed,
        "policy": config.policy,
        "eps": config.eps,
        "num_examples": measured.num_tested_examples,
        "headline_examples": config.headline_examples,
        "headline_attacks": list(config.headline_attacks),
        "transfer_source": measured.source_name,
        "attack_settings": dataclasses.asdict(config.settings),
        "train_examples": config.train_examples,
        "holdout_examples": config.holdout_examples,
        "test_unselected": config.test_unselected,
        "select_only": config.select_only,
        "environment": provenance.environment(),
        "selection": _selection(variants, measured.holdout, measured.tested, selection_attacks),
        "reference_curve": reference.curve if reference is not None else None,
        "holdout_curves": measured.curves,
        "rows": measured.rows,
        "figures": figures,
    }


def run(variants, config, *, log=print):
    """Trains and attacks every variant, then writes the comparison.

    Args:
        variants: `Variant`s; one named `pgd_at` is the cost reference and the
            transfer source for the others (else the first variant is).
        config: A `ComparisonConfig`.
        log: Callable taking one line of progress text.

    Returns:
        The dict written to `<dataset>.json`; None with `config.train_only`.

    Raises:
        ValueError: Variant names that are not unique, or a bad setting.
    """
    _check_variants(variants)
    # Unknown attack names fail here, not after hours of training.
    columns = table_columns(resolve_attacks(config.attacks))
    resolve_attacks(config.headline_attacks)
    workspace = Workspace(
        config.dataset, config.runs_dir, config.data_dir, config.policy, config.eval_policy, log
    )
    trained = train_all(
        variants,
        workspace,
        epochs=config.epochs,
        seed=config.seed,
        train_examples=config.train_examples,
    )
    if config.train_only:
        return None
    measured = _measure(variants, config, workspace, trained)
    os.makedirs(config.output_dir, exist_ok=True)
    figures = write_figures(measured.rows, config.output_dir, config.dataset)
    payload = _payload(variants, config, measured, figures)
    _write_outputs(payload, output_dir=config.output_dir, columns=columns)
    return payload
