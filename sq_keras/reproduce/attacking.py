"""The comparison's only door into `sq_keras.evaluation`.

Attacks one variant with the suite (cached by its report file, so a rerun
attacks nothing twice) and scores a run after each epoch (cached in
`curve.json` or `holdout_curve.json`, each epoch's score in `<stem>_epochs/`
until then). Everything else in the package reads the reports as the JSON
dicts written to disk.

```python
suite = Suite(dataset="mnist", runs_dir="runs/reproduce", attacks=["strong"],
              settings=DEFAULT_SETTINGS, source=None, eval_policy="float32", log=print)
report = attack_variant(suite, variant, load_split("mnist", "test", num_examples=1000),
                        eps_values=[0.3])
```
"""

import dataclasses
import os
from typing import Any
from typing import Callable

import numpy as np

from sq_keras import data
from sq_keras import evaluation
from sq_keras import jsonio
from sq_keras import training
from sq_keras.reproduce.variants import CURVE_ATTACKS
from sq_keras.reproduce.variants import REFERENCE

# PGD-100 with 5 restarts and 5000 Square queries: the strongest setting
# measured, and the one the published comparison used.
DEFAULT_SETTINGS = evaluation.AttackSettings(pgd_steps=100, restarts=5, square_queries=5000)


# The headline of the selected recipe and the reference, on many more test
# images than the whole suite runs on: by default AutoAttack's attacks as a
# cascade (through BPDA on a quantized model). Each preset of a headline runs
# as its own cascade.
HEADLINE_ATTACKS = ("autoattack",)

# The key of an eps in a report's per-eps results.
eps_key = evaluation.eps_key


def resolve_attacks(attacks):
    """Every attack the suite runs on some variant, presets expanded for a
    model with a quantizer and for one without, in suite order.

    Raises:
        ValueError: An unknown name; the message lists the valid ones.
    """
    return evaluation.REGISTRY.columns(list(attacks))


def table_columns(attack_names):
    """The table's attack columns: the suite, then the doubled-steps PGD check."""
    return attack_names + [evaluation.DOUBLED]


def load_run(run_dir, *, policy):
    """The trained model of `run_dir` as an attack target in dtype `policy`."""
    return evaluation.load_target(run_dir, policy=policy)


@dataclasses.dataclass(frozen=True)
class Examples:
    """Images to attack, with the split they come from.

    Attributes:
        split: Split name as the reports record it (`test`, `train[a:b]`).
        images: float32 images in [0, 1].
        labels: int64 labels.
    """

    split: str
    images: np.ndarray
    labels: np.ndarray

    def first(self, count):
        """The first `count` examples of the same split."""
        return Examples(self.split, self.images[:count], self.labels[:count])


def load_split(dataset, split, *, num_examples=None, data_dir=None):
    """The first `num_examples` of `split` (all of it when None) as `Examples`."""
    images, labels = evaluation.load_examples(
        dataset, split, num_examples=num_examples, data_dir=data_dir
    )
    return Examples(split, images, labels)


@dataclasses.dataclass(frozen=True)
class Suite:
    """What every variant is attacked with.

    Attributes:
        dataset: Dataset name (sets the number of classes).
        runs_dir: One run directory per variant; reports go to its
            `evaluation/` folder.
        attacks: Attack names or presets, resolved against each attacked
            model (a preset's BPDA members run on quantized variants only).
        settings: `evaluation.AttackSettings` of the suite.
        source: Target of the transfer attack (None: no transfer source).
        eval_policy: Dtype policy the attacked models are rebuilt in.
        log: Callable taking one line of progress text.
    """

    dataset: str
    runs_dir: str
    attacks: list
    settings: Any
    source: Any
    eval_policy: str
    log: Callable


def attack_variant(
    suite, variant, examples, *, eps_values, filename="report.json", add_large_eps=True
):
    """The suite's report on one variant, read back when its file exists.

    The reference is attacked without the transfer attack (it is the source).
    Every finished batch is kept in `<stem>_batches/` beside the report, so
    a killed comparison resumes the variant where it stopped.

    Args:
        suite: The `Suite`.
        variant: The `Variant` whose run is attacked.
        examples: `Examples` to attack; their split is recorded in the report.
        eps_values: Radii of the sweep.
        filename: Report file name in the run's `evaluation/` folder.
        add_large_eps: Also attack at `evaluation.LARGE_EPS` (a masking check).

    Returns:
        The report as written to (or read from) the file.
    """
    path = os.path.join(suite.runs_dir, variant.name, "evaluation", filename)
    if os.path.exists(path):
        return _cached_report(path, suite.attacks)
    suite.log(f"== {variant.name}: attacking {len(examples.labels)} {examples.split} images")
    target = load_run(os.path.join(suite.runs_dir, variant.name), policy=suite.eval_policy)
    source = suite.source if variant.name != REFERENCE else None
    store = _batch_store(path, suite, target, examples.split, source=source)
    report = evaluation.evaluate(
        target,
        examples.images,
        examples.labels,
        attacks=evaluation.resolve_attacks(suite.attacks, target=target),
        eps_values=eps_values,
        settings=suite.settings,
        source=source,
        num_classes=data.get_info(suite.dataset).num_classes,
        add_large_eps=add_large_eps,
        store=store,
    )
    report.metadata["split"] = examples.split
    report.metadata["requested_attacks"] = list(suite.attacks)
    return evaluation.write_report(report, path)


def headline_filename(preset):
    """The report file of the `preset` headline in a run's `evaluation/` folder."""
    return f"headline_{evaluation.file_safe(preset)}_report.json"


def _cached_headline(path, preset, examples):
    """The headline report in `path`, refused when it is on other examples
    or of other attacks."""
    report = jsonio.read_json(path)
    found = (report.get("split"), report["num_examples"])
    if found != (examples.split, len(examples.labels)):
        raise ValueError(
            f"{path} holds a report on {found[1]} {found[0]} images, not "
            f"{len(examples.labels)} {examples.split} images. Delete it to attack again."
        )
    return _cached_report(path, [preset])


def attack_headline(suite, name, examples, *, eps, preset=HEADLINE_ATTACKS[0]):
    """The `preset` cascade's report on one run, resumable batch by batch.

    The preset runs on its own settings over the library's defaults, the
    suite's seed only (the suite's restarts or budgets do not carry over),
    at `eps` alone, each attack on the images every earlier one failed on.
    A preset with the transfer attack crafts it on the suite's source,
    except on the source itself. Every finished batch is kept in
    `headline_<preset>_report_batches/` beside the report, described as
    `apps.evaluate` describes its runs: the batches of `python -m
    apps.evaluate --model=<run> --attacks=<preset> --eps=<eps>
    --noadd_large_eps --worst_case_only --num_examples=<n> --seed=<seed>`
    (with `--source_model=<source>` for a preset with the transfer attack)
    resume this stage once moved there.

    Args:
        suite: The `Suite` (its settings give the seed only).
        name: The variant whose run is attacked.
        examples: `Examples` to attack.
        eps: The radius.
        preset: Attack name or preset of `sq_keras.evaluation`.

    Returns:
        The report as written to (or read from) `headline_<preset>_report.json`.

    Raises:
        ValueError: A cached report on other examples or of other attacks.
    """
    path = os.path.join(suite.runs_dir, name, "evaluation", headline_filename(preset))
    if os.path.exists(path):
        return _cached_headline(path, preset, examples)
    suite.log(f"== {name}: {preset} on {len(examples.labels)} {examples.split} images")
    target = load_run(os.path.join(suite.runs_dir, name), policy=suite.eval_policy)
    settings = evaluation.AttackSettings(seed=suite.settings.seed)
    plan = evaluation.REGISTRY.plan(
        [preset], settings, target=target, explicit=("seed",), worst_case_only=True
    )
    transfer = any(a in evaluation.TRANSFER_ATTACKS for a in plan.attacks)
    source = suite.source if transfer and name != REFERENCE else None
    store = _batch_store(path, suite, target, examples.split, source=source)
    report = evaluation.evaluate(
        target,
        examples.images,
        examples.labels,
        attacks=plan.attacks,
        eps_values=[eps],
        settings=plan.settings,
        source=source,
        num_classes=data.get_info(suite.dataset).num_classes,
        add_large_eps=False,
        worst_case_only=plan.worst_case_only,
        store=store,
    )
    report.metadata["split"] = examples.split
    report.metadata["requested_attacks"] = [preset]
    return evaluation.write_report(report, path)


def _batch_store(path, suite, target, split, *, source=None):
    """The `BatchStore` beside the report `path`, describing the run as
    `apps.evaluate` describes its own."""
    return evaluation.BatchStore(
        evaluation.batches_dir(path),
        run=evaluation.model_run(
            target,
            dataset=suite.dataset,
            split=split,
            policy=suite.eval_policy,
            source_path=source.path if source is not None else None,
        ),
        hint=f"delete it (and {os.path.basename(path)}) to attack again",
    )


def _cached_report(path, attacks):
    """The report in `path`, refused when it answers other attacks than `attacks`."""
    report = jsonio.read_json(path)
    requested = report.get("requested_attacks")
    if requested is not None and list(requested) != list(attacks):
        raise ValueError(
            f"{path} holds a report of the attacks {', '.join(requested)}, not of "
            f"{', '.join(attacks)}. Delete it to attack again with the new list."
        )
    return report


def _epoch_weights(run_dir, epoch):
    weights = training.epoch_weights_path(run_dir, epoch)
    if not os.path.exists(weights):
        raise ValueError(
            f"{weights} is missing: the run in {run_dir} was trained without "
            "keep_epoch_weights. Retrain it in a fresh runs directory."
        )
    return weights


def curve_attacks(target):
    """`CURVE_ATTACKS` as they run on `target`: through the identity BPDA
    stand-in where it has a quantizer (its own gradients are masked)."""
    if not target.has_quantizer:
        return list(CURVE_ATTACKS)
    return [evaluation.bpda_name("identity", name) for name in CURVE_ATTACKS]


def _score(target, examples, *, dataset, eps, settings):
    """Clean and worst-case robust accuracy under `curve_attacks` at `eps`."""
    report = evaluation.evaluate(
        target,
        examples.images,
        examples.labels,
        attacks=curve_attacks(target),
        eps_values=[eps],
        settings=settings,
        num_classes=data.get_info(dataset).num_classes,
        add_large_eps=False,
        progress=False,
    )
    return report.clean_accuracy, report.worst_case_accuracy


def _point_key(weights, target, examples, *, eps, settings):
    """What one epoch's score depends on: its weights, attacks, radius,
    images and attack settings."""
    return jsonio.jsonable(
        {
            "weights_sha256": evaluation.file_digest(weights),
            "attacks": curve_attacks(target),
            "eps": eps,
            "split": examples.split,
            "num_examples": len(examples.labels),
            "settings": dataclasses.asdict(settings),
        }
    )


def _epoch_score(run_dir, epoch, target, examples, *, cache_dir, dataset, eps, settings):
    """`(clean, robust, read_back)` after `epoch`, cached in
    `cache_dir/epoch_<n>.json`; a cached score of other weights or settings
    is scored again."""
    weights = _epoch_weights(run_dir, epoch)
    key = _point_key(weights, target, examples, eps=eps, settings=settings)
    path = os.path.join(cache_dir, f"epoch_{epoch:03d}.json")
    if os.path.exists(path):
        cached = jsonio.read_json(path)
        if cached.get("key") == key:
            return cached["clean_accuracy"], cached["robust_accuracy"], True
    target.keras_model.load_weights(weights)
    clean, robust = _score(target, examples, dataset=dataset, eps=eps, settings=settings)
    jsonio.write_json(path, {"key": key, "clean_accuracy": clean, "robust_accuracy": robust})
    return clean, robust, False


def robustness_curve(
    run_dir, history, examples, *, dataset, eps, settings, eval_policy, log, filename="curve.json"
):
    """Robust accuracy of a run after each epoch, with training time.

    Scored with `curve_attacks` on the weights `keep_epoch_weights` saved;
    cached in the run's `evaluation/<filename>`. Each epoch's score is also
    kept in `evaluation/<stem>_epochs/`, so a stopped curve resumes at the
    first epoch it had not scored.

    Args:
        run_dir: The run directory.
        history: Its per-epoch training records (`history.json`).
        examples: `Examples` to attack.
        dataset: Dataset name.
        eps: The radius.
        settings: `evaluation.AttackSettings`.
        eval_policy: Dtype policy the model is rebuilt in.
        log: Callable taking one line of progress text.
        filename: Cache file name in the run's `evaluation/` folder.

    Returns:
        `{"attacks", "eps", "split", "points"}`, one point per epoch with its
        cumulative training seconds, clean and robust accuracy.

    Raises:
        ValueError: The run kept no per-epoch weights.
    """
    path = os.path.join(run_dir, "evaluation", filename)
    if os.path.exists(path):
        return jsonio.read_json(path)
    name = os.path.basename(os.path.normpath(run_dir))
    log(f"== {name}: robustness after each of {len(history)} epochs ({examples.split})")
    target = load_run(run_dir, policy=eval_policy)
    cache_dir = os.path.splitext(path)[0] + "_epochs"
    points, elapsed = [], 0.0
    for record in history:
        elapsed += record["seconds"]
        clean, robust, read_back = _epoch_score(
            run_dir,
            record["epoch"],
            target,
            examples,
            cache_dir=cache_dir,
            dataset=dataset,
            eps=eps,
            settings=settings,
        )
        points.append(
            {
                "epoch": record["epoch"],
                "train_seconds": elapsed,
                "clean_accuracy": clean,
                "robust_accuracy": robust,
            }
        )
        suffix = " (read back)" if read_back else ""
        log(f"  epoch {record['epoch']}: robust accuracy {robust:.2f}{suffix}")
    curve = {
        "attacks": curve_attacks(target),
        "eps": eps,
        "split": examples.split,
        "points": points,
    }
    jsonio.write_json(path, curve)
    return curve
