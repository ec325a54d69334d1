"""`run`: the whole comparison, from training to the written table."""

import dataclasses
import os

from sq_keras import jsonio
from sq_keras import provenance
from sq_keras.reproduce.attacking import DEFAULT_SETTINGS
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

DEFAULT_ATTACKS = ("strong",)
DEFAULT_EPS_VALUES = (0.3,)


def _check_arguments(variants, *, train_examples, holdout_examples, headline_examples):
    names = [v.name for v in variants]
    if len(set(names)) != len(names):
        raise ValueError(f"Variant names must be unique. Received: {names}")
    if holdout_examples and train_examples is None:
        raise ValueError(
            "`holdout_examples` needs `train_examples`: the held-out images are the "
            "training images after the first `train_examples`."
        )
    if headline_examples < 0:
        raise ValueError(f"`headline_examples` must be >= 0. Received: {headline_examples}")


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


def run(
    variants,
    *,
    dataset,
    epochs,
    runs_dir,
    output_dir,
    num_examples,
    attacks=DEFAULT_ATTACKS,
    eps_values=DEFAULT_EPS_VALUES,
    settings=None,
    data_dir=None,
    seed=0,
    policy="float32",
    eval_policy="float32",
    train_examples=None,
    holdout_examples=0,
    curve_examples=None,
    timing_steps=20,
    timing_repeats=5,
    train_only=False,
    test_unselected=False,
    selection_attacks=None,
    select_only=False,
    headline_examples=0,
    command=None,
    log=print,
):
    """Trains and attacks every variant, then writes the comparison.

    Args:
        variants: `Variant`s; one named `pgd_at` is the cost reference and the
            transfer source for the others (else the first variant is).
        dataset: Dataset name.
        epochs: Training epochs of every variant.
        runs_dir: One run directory per variant; reruns resume.
        output_dir: Where `<dataset>.json`, `<dataset>.md` and the figures go.
        num_examples: Test images attacked per variant.
        attacks: Attack names or presets of `sq_keras.evaluation`.
        eps_values: Radii; the first is the table's.
        settings: `evaluation.AttackSettings` of the suite; default
            `DEFAULT_SETTINGS`, PGD-100 with 5 restarts and 5000 Square
            queries (the strongest setting measured).
        data_dir: Local dataset directory.
        seed: Training seed of every variant.
        policy: Training dtype policy (must be the global one).
        eval_policy: Dtype policy the attacked models are rebuilt in.
        train_examples: Use only the first N training examples.
        holdout_examples: With `train_examples`, also attack the candidate
            variants on this many training images after the first
            `train_examples` (never trained on) and select the candidate
            with the best worst case there.
        curve_examples: Test images scoring the reference after each epoch
            (default: `num_examples`); 0 skips the curves, this one and the
            held-out ones (the reference and every candidate after each
            epoch, on the held-out images).
        timing_steps: Steps per variant and repeat of the round-robin timing
            of the train steps, which sets the cost ratios.
        timing_repeats: Repeats of that timing (the median is kept).
        train_only: Stop after training (returns None).
        test_unselected: With a held-out selection, attack every candidate on
            the test set; by default only the selected one and `baseline`
            candidates are (the others keep their held-out numbers).
        selection_attacks: Attacks of the held-out selection (default:
            `attacks`), e.g. a cheaper screen of many candidates.
        select_only: Stop after the held-out selection (and its curves):
            nothing is attacked on the test set.
        headline_examples: Also attack the selected recipe (every tested
            candidate without a selection) and the reference with the
            `autoattack` cascade on this many test images (0: no headline),
            resuming from finished batches: the table's number on many
            more images than the whole suite runs on.
        command: The command line that ran this, recorded in the output.
        log: Callable taking one line of progress text.

    Returns:
        The dict written to `<dataset>.json`.
    """
    _check_arguments(
        variants,
        train_examples=train_examples,
        holdout_examples=holdout_examples,
        headline_examples=headline_examples,
    )
    if select_only and not holdout_examples:
        raise ValueError("`select_only` needs a held-out selection (`holdout_examples` > 0).")
    settings = settings or DEFAULT_SETTINGS
    attack_names = resolve_attacks(attacks)
    workspace = Workspace(dataset, runs_dir, data_dir, policy, eval_policy, log)
    trained = train_all(
        variants, workspace, epochs=epochs, seed=seed, train_examples=train_examples
    )
    if train_only:
        return None
    costs = time_steps(variants, workspace, steps=timing_steps, repeats=timing_repeats)
    source_name = REFERENCE if REFERENCE in trained else variants[0].name
    suite = workspace.suite(attacks=list(attacks), settings=settings, source_name=source_name)
    test = load_split(dataset, "test", num_examples=num_examples, data_dir=data_dir)
    eps = float(eps_values[0])
    selection_suite = suite
    if selection_attacks is not None:
        selection_suite = workspace.suite(
            attacks=list(selection_attacks), settings=settings, source_name=source_name
        )
    holdout = select_on_holdout(
        selection_suite, variants, train_examples, holdout_examples, eps=eps, data_dir=data_dir
    )
    curves = measure_holdout_curves(
        suite,
        trained,
        variants,
        holdout if curve_examples != 0 else None,
        eps=eps,
        data_dir=data_dir,
    )
    tested = (
        [] if select_only else choose_tested(variants, holdout, test_unselected=test_unselected)
    )
    reports = attack_tested(suite, tested, test, eps_values=eps_values)
    headlines = attack_headlines(
        suite,
        headline_names(tested, holdout),
        num_examples=headline_examples,
        eps=eps,
        data_dir=data_dir,
    )
    reference = measure_reference(
        suite, trained, costs, test, eps=eps, curve_examples=0 if select_only else curve_examples
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
    os.makedirs(output_dir, exist_ok=True)
    files = write_figures(rows, output_dir, dataset)
    payload = {
        "command": command,
        "dataset": dataset,
        "epochs": epochs,
        "seed": seed,
        "policy": policy,
        "eps": eps,
        "num_examples": len(test.labels),
        "headline_examples": headline_examples,
        "transfer_source": source_name,
        "attack_settings": dataclasses.asdict(settings),
        "train_examples": train_examples,
        "holdout_examples": holdout_examples,
        "test_unselected": test_unselected,
        "select_only": select_only,
        "environment": provenance.environment(),
        "selection": _selection(
            variants, holdout, tested, list(selection_attacks) if selection_attacks else None
        ),
        "reference_curve": reference.curve if reference is not None else None,
        "holdout_curves": curves,
        "rows": rows,
        "figures": files,
    }
    _write_outputs(payload, output_dir=output_dir, columns=table_columns(attack_names))
    return payload
