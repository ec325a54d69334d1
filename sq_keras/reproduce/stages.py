"""The stages of a comparison; the costly ones are cached in the runs directory.

`run` calls them in order: `train_all` (resuming runs), `time_steps` (the
round-robin step timing that sets the cost ratios), `select_on_holdout` and
`choose_tested` (the recipe selection on held-out training images),
`measure_holdout_curves` (robustness after each epoch there),
`attack_tested` (the suite on the test set), `attack_headlines` (cascades
such as `autoattack` on more test images, for the selected recipe and the
reference) and `measure_reference` (the reference's costs and its
robustness after each epoch).
"""

import dataclasses
import os
import statistics
from typing import Callable

from sq_keras import jsonio
from sq_keras import throughput
from sq_keras import training
from sq_keras.reproduce.attacking import HEADLINE_ATTACKS
from sq_keras.reproduce.attacking import Suite
from sq_keras.reproduce.attacking import attack_headline
from sq_keras.reproduce.attacking import attack_variant
from sq_keras.reproduce.attacking import load_run
from sq_keras.reproduce.attacking import load_split
from sq_keras.reproduce.attacking import robustness_curve
from sq_keras.reproduce.variants import REFERENCE


@dataclasses.dataclass(frozen=True)
class TrainedRun:
    """One variant's finished training run.

    Attributes:
        results: What `training.train` returned.
        history: Per-epoch records of `history.json`.
        trained_at_commit: Git commit recorded in its `config.json` (or None).
    """

    results: dict
    history: list
    trained_at_commit: str | None


@dataclasses.dataclass(frozen=True)
class Workspace:
    """Where and how every stage runs.

    Attributes:
        dataset: Dataset name.
        runs_dir: One run directory per variant, plus the cached step timing.
        data_dir: Local dataset directory (None: the default).
        policy: Training dtype policy.
        eval_policy: Dtype policy the attacked models are rebuilt in.
        log: Callable taking one line of progress text.
    """

    dataset: str
    runs_dir: str
    data_dir: str | None
    policy: str
    eval_policy: str
    log: Callable

    def run_dir(self, name):
        """The run directory of variant `name`."""
        return os.path.join(self.runs_dir, name)

    def suite(self, *, attacks, settings, source_name):
        """The `Suite`, its transfer source the run of `source_name`."""
        return Suite(
            dataset=self.dataset,
            runs_dir=self.runs_dir,
            attacks=attacks,
            settings=settings,
            source=load_run(self.run_dir(source_name), policy=self.eval_policy),
            eval_policy=self.eval_policy,
            log=self.log,
        )


def _train_one(variant, workspace, *, epochs, seed, train_examples):
    # A variant's own "epochs" setting (e.g. fewer epochs of more replays)
    # overrides the comparison's.
    settings = {"epochs": epochs, **variant.train_settings()}
    config = training.TrainConfig(
        dataset=workspace.dataset,
        method=variant.method,
        seed=seed,
        train_examples=train_examples,
        model_dir=workspace.run_dir(variant.name),
        export_dir=None,
        data_dir=workspace.data_dir,
        mixed_precision=workspace.policy,
        # Robustness after each epoch (the reference's and the candidates')
        # sets the cost to reach a given robustness.
        keep_epoch_weights=variant.name == REFERENCE or variant.candidate,
        **settings,
    )
    workspace.log(f"== {variant.name}: training ({variant.method}, {config.epochs} epochs)")
    return training.train(config, log=workspace.log)


def _trained_at_commit(run_dir):
    config = jsonio.read_json(os.path.join(run_dir, "config.json"))
    return config.get("environment", {}).get("git_commit")


def train_all(variants, workspace, *, epochs, seed, train_examples):
    """Trains every variant in turn, resuming runs already in the runs directory.

    Args:
        variants: `Variant`s, trained in order.
        workspace: The `Workspace`.
        epochs: Training epochs of every variant.
        seed: Training seed of every variant.
        train_examples: Use only the first N training examples.

    Returns:
        `{name: TrainedRun}` in the order of `variants`.
    """
    trained = {}
    for variant in variants:
        results = _train_one(
            variant, workspace, epochs=epochs, seed=seed, train_examples=train_examples
        )
        run_dir = workspace.run_dir(variant.name)
        trained[variant.name] = TrainedRun(
            results,
            jsonio.read_json(os.path.join(run_dir, "history.json")),
            _trained_at_commit(run_dir),
        )
    return trained


@dataclasses.dataclass(frozen=True)
class StepCosts:
    """Seconds per train step of every variant, as `step_costs.json` holds them."""

    batch_size: int
    steps: int
    repeats: int
    policy: str
    seconds_per_step: dict


def time_steps(variants, workspace, *, steps, repeats):
    """Times the train step of every variant round-robin (cached in `step_costs.json`).

    A cached timing is reused when it covers every variant with the same
    `steps` and `repeats`.

    Returns:
        The `StepCosts`.
    """
    path = os.path.join(workspace.runs_dir, "step_costs.json")
    names = [v.name for v in variants]
    if os.path.exists(path):
        cached = StepCosts(**jsonio.read_json(path))
        same = (cached.steps, cached.repeats) == (steps, repeats)
        if same and set(names) <= set(cached.seconds_per_step):
            return cached
    workspace.log(f"== timing the train step of {', '.join(names)} round-robin")
    configs = {
        v.name: training.TrainConfig(
            dataset=workspace.dataset,
            method=v.method,
            mixed_precision=workspace.policy,
            **v.train_settings(),
        )
        for v in variants
    }
    batch_size = training.TrainConfig().batch_size
    timed = throughput.time_train_steps(
        configs, batch_size=batch_size, steps=steps, repeats=repeats, log=workspace.log
    )
    costs = StepCosts(
        batch_size=batch_size,
        steps=steps,
        repeats=repeats,
        policy=workspace.policy,
        seconds_per_step={n: t["seconds_per_step"] for n, t in timed.items()},
    )
    jsonio.write_json(path, dataclasses.asdict(costs))
    return costs


@dataclasses.dataclass(frozen=True)
class Holdout:
    """The candidates attacked on held-out training images.

    Attributes:
        split: The held-out split, `train[a:b]`.
        num_examples: Images in it.
        reports: `{candidate: held-out report}` in the order of the variants.
    """

    split: str
    num_examples: int
    reports: dict

    @property
    def ranked(self):
        """Candidate names, best held-out worst case first (ties keep their order)."""
        worst = {n: r["worst_case_accuracy"] for n, r in self.reports.items()}
        return sorted(worst, key=lambda n: worst[n], reverse=True)

    @property
    def selected(self):
        """The candidate with the best held-out worst case."""
        return self.ranked[0]

    def record(self, candidates, tested):
        """The selection as the output JSON records it.

        Args:
            candidates: Every candidate `Variant`.
            tested: The `Variant`s attacked on the test set.
        """
        ranked = self.ranked
        return {
            "split": self.split,
            "num_examples": self.num_examples,
            "worst_case_accuracy": {n: self.reports[n]["worst_case_accuracy"] for n in ranked},
            "selected": ranked[0],
            "tested_candidates": [v.name for v in tested if v.candidate],
            "untested": [v.name for v in candidates if v not in tested],
        }


def select_on_holdout(suite, variants, train_examples, holdout_examples, *, eps, data_dir):
    """Attacks every candidate on held-out training images at `eps` (cached reports).

    Args:
        suite: The `Suite`.
        variants: Every `Variant`; the candidates compete.
        train_examples: Training images the variants trained on.
        holdout_examples: Held-out images: those after the first
            `train_examples` (0: no selection).
        eps: The radius.
        data_dir: Local dataset directory.

    Returns:
        The `Holdout`, or None without held-out images or candidates.
    """
    candidates = [v for v in variants if v.candidate]
    if not holdout_examples or not candidates:
        return None
    split = f"train[{train_examples}:{train_examples + holdout_examples}]"
    examples = load_split(suite.dataset, split, data_dir=data_dir)
    reports = {
        v.name: attack_variant(
            suite,
            v,
            examples,
            eps_values=[eps],
            filename="holdout_report.json",
            add_large_eps=False,
        )
        for v in candidates
    }
    return Holdout(split, len(examples.labels), reports)


def choose_tested(variants, holdout, *, test_unselected):
    """The variants attacked on the test set.

    Every variant that is not a candidate is; of the candidates, with a
    held-out selection, only the selected one and the `baseline` ones are,
    unless `test_unselected`.
    """
    return [
        v
        for v in variants
        if not v.candidate
        or holdout is None
        or test_unselected
        or v.baseline
        or v.name == holdout.selected
    ]


def attack_tested(suite, tested, examples, *, eps_values):
    """`{name: test report}` of every tested variant (cached reports)."""
    return {v.name: attack_variant(suite, v, examples, eps_values=list(eps_values)) for v in tested}


def headline_names(tested, holdout):
    """Who gets the headline: the selected recipe (or, without a selection,
    every tested candidate) and the reference, in the order of `tested`."""
    chosen = {holdout.selected} if holdout is not None else {v.name for v in tested if v.candidate}
    return [v.name for v in tested if v.name in chosen or v.name == REFERENCE]


def attack_headlines(suite, names, *, num_examples, eps, data_dir, presets=HEADLINE_ATTACKS):
    """`{name: {preset: headline report}}` on the first `num_examples` test
    images (none when 0): each preset as its own cascade, every run's before
    the next preset's; each resumes from its finished batches."""
    if not num_examples or not names:
        return {}
    examples = load_split(suite.dataset, "test", num_examples=num_examples, data_dir=data_dir)
    headlines = {name: {} for name in names}
    for preset in presets:
        for name in names:
            headlines[name][preset] = attack_headline(suite, name, examples, eps=eps, preset=preset)
    return headlines


@dataclasses.dataclass(frozen=True)
class Reference:
    """The cost reference of the speed-ups.

    Attributes:
        seconds_per_epoch: Median wall-clock epoch of its training run.
        seconds_per_step: Its round-robin step time.
        curve: Its robustness after each epoch (`robustness_curve`),
            or None when skipped.
    """

    seconds_per_epoch: float
    seconds_per_step: float
    curve: dict | None


def measure_reference(suite, trained, costs, examples, *, eps, curve_examples):
    """The `Reference`, or None when `REFERENCE` is not among the variants.

    Args:
        suite: The `Suite`.
        trained: `{name: TrainedRun}`.
        costs: The `StepCosts`.
        examples: The test `Examples`.
        eps: Radius of the curve.
        curve_examples: Test images of the curve (None: all of `examples`;
            0 skips the curve).
    """
    if REFERENCE not in trained:
        return None
    history = trained[REFERENCE].history
    seconds_per_epoch = statistics.median(h["seconds"] for h in history)
    curve = None
    if curve_examples is None or curve_examples > 0:
        count = len(examples.labels) if curve_examples is None else curve_examples
        curve = robustness_curve(
            os.path.join(suite.runs_dir, REFERENCE),
            history,
            examples.first(count),
            dataset=suite.dataset,
            eps=eps,
            settings=suite.settings,
            eval_policy=suite.eval_policy,
            log=suite.log,
        )
    return Reference(
        seconds_per_epoch=seconds_per_epoch,
        seconds_per_step=costs.seconds_per_step[REFERENCE],
        curve=curve,
    )


def measure_holdout_curves(suite, trained, variants, holdout, *, eps, data_dir):
    """Robustness after each epoch on the held-out images (cached per run).

    For every candidate and the reference, so that the cost to reach a
    robustness level compares on images none of them trained on.

    Args:
        suite: The `Suite`.
        trained: `{name: TrainedRun}`.
        variants: Every `Variant`.
        holdout: The `Holdout` (None: no curves).
        eps: The radius.
        data_dir: Local dataset directory.

    Returns:
        `{name: curve}` as `robustness_curve` returns them, in variant order.
    """
    if holdout is None:
        return {}
    examples = load_split(suite.dataset, holdout.split, data_dir=data_dir)
    names = [v.name for v in variants if v.candidate or v.name == REFERENCE]
    return {
        name: robustness_curve(
            os.path.join(suite.runs_dir, name),
            trained[name].history,
            examples,
            dataset=suite.dataset,
            eps=eps,
            settings=suite.settings,
            eval_policy=suite.eval_policy,
            log=suite.log,
            filename="holdout_curve.json",
        )
        for name in names
        if name in trained
    }
