"""Side-by-side reproduction: train several methods, attack each, tabulate.

Every variant is a training method plus settings. `run` trains each one
(resuming any run already in `runs_dir`), attacks each with the evaluation
suite (skipping variants whose report exists), and writes a JSON and a
Markdown table with robustness, masking checks and training cost, plus two
figures: worst-case robust accuracy against eps for every variant, and the
`grad_l1` curves over training.

```python
results = run(MNIST_VARIANTS, dataset="mnist", epochs=10, runs_dir="runs/reproduce",
              output_dir="results", num_examples=10_000)
```

A stopped run continues where it stopped: rerun the same call.
"""

import dataclasses
import json
import os
import statistics

import numpy as np

from sq_keras import data
from sq_keras import evaluation
from sq_keras import provenance
from sq_keras import throughput
from sq_keras import training


@dataclasses.dataclass(frozen=True)
class Variant:
    """One row of the comparison.

    Attributes:
        name: Row name and run sub-directory.
        method: Key of `sq_keras.training.METHODS`.
        settings: `TrainConfig` overrides.
        note: What the row is, for the table.
        candidate: A cheap recipe competing in the held-out selection.
        baseline: A candidate the comparison reports on the test set even
            when it is not selected (the paper's recipe).
    """

    name: str
    method: str
    settings: dict = dataclasses.field(default_factory=dict)
    note: str = ""
    candidate: bool = False
    baseline: bool = False


# Optimizer steps (two epochs of 50,000 images at batch 128) over which the
# adversarial-training baselines ramp eps up: at full eps from the first step
# PGD-40 training of the fresh Madry CNN stayed at chance for two epochs here.
WARMUP_STEPS = 782

MNIST_VARIANTS = (
    Variant("natural", "natural", note="clean training, no quantizer"),
    Variant("noisy", "noisy", note="uniform noise +-eps, no quantizer"),
    Variant("sq_natural", "sq_natural", note="quantizer, clean images"),
    Variant(
        "sq_noisy",
        "sq_noisy",
        note="the paper's recipe: quantizer K=1 + uniform noise +-eps",
        candidate=True,
        baseline=True,
    ),
    Variant(
        "sq_noisy_sign",
        "sq_noisy",
        {"noise": "sign"},
        "quantizer + random-sign noise",
        candidate=True,
    ),
    Variant(
        "sq_fgsm",
        "sq_fgsm",
        note="quantizer + FGSM-RS through the straight-through stand-in",
        candidate=True,
    ),
    Variant(
        "sq_fgsm_half",
        "sq_fgsm",
        {"adv_fraction": 0.5, "noise": "sign"},
        "as sq_fgsm on half of each batch, random-sign noise on the rest",
        candidate=True,
    ),
    Variant(
        "sq_fgsm_quarter",
        "sq_fgsm",
        {"adv_fraction": 0.25, "noise": "sign"},
        "as sq_fgsm on a quarter of each batch, random-sign noise on the rest",
        candidate=True,
    ),
    Variant(
        "sq_noisy_large",
        "sq_noisy",
        {"noise_scale": 0.45},
        "quantizer + uniform noise +-1.5 eps",
        candidate=True,
    ),
    Variant("gradnorm", "gradnorm", note="CE + eps ||grad_x CE||_1 by double backpropagation"),
    Variant(
        "fgsm_rs",
        "fgsm_rs",
        {"eps_warmup_steps": WARMUP_STEPS},
        "FGSM-RS adversarial training (Wong et al. 2020), eps ramped up over the first steps",
    ),
    Variant(
        "pgd_at",
        "pgd_at",
        {"eps_warmup_steps": WARMUP_STEPS},
        "PGD-40 adversarial training (Madry et al. 2018), eps ramped up over the first steps",
    ),
)
VARIANTS = {"mnist": MNIST_VARIANTS}
REFERENCE = "pgd_at"
# Attacks scoring the reference after every epoch: strong on a model without
# masked gradients, and far cheaper than the whole suite.
CURVE_ATTACKS = ("apgd_ce", "apgd_dlr")


def _train(variant, *, dataset, epochs, runs_dir, data_dir, seed, policy, train_examples, log):
    config = training.TrainConfig(
        dataset=dataset,
        method=variant.method,
        epochs=epochs,
        seed=seed,
        train_examples=train_examples,
        model_dir=os.path.join(runs_dir, variant.name),
        export_dir=None,
        data_dir=data_dir,
        mixed_precision=policy,
        # The reference's robustness after each epoch sets the speed-up to
        # reach a given robustness.
        keep_epoch_weights=variant.name == REFERENCE,
        **variant.settings,
    )
    log(f"== {variant.name}: training ({variant.method}, {epochs} epochs)")
    return training.train(config, log=log)


def _evaluate(
    variant,
    *,
    runs_dir,
    dataset,
    images,
    labels,
    attacks,
    eps_values,
    settings,
    source,
    eval_policy,
    log,
    filename="report.json",
    split="test",
    add_large_eps=True,
):
    path = os.path.join(runs_dir, variant.name, "evaluation", filename)
    if os.path.exists(path):
        with open(path) as f:
            return json.load(f)
    log(f"== {variant.name}: attacking {len(labels)} {split} images")
    target = evaluation.load_target(os.path.join(runs_dir, variant.name), policy=eval_policy)
    report = evaluation.evaluate(
        target,
        images,
        labels,
        attacks=attacks,
        eps_values=eps_values,
        settings=settings,
        source=source if variant.name != REFERENCE else None,
        num_classes=data.get_info(dataset).num_classes,
        add_large_eps=add_large_eps,
    )
    report["split"] = split
    return evaluation.write_report(report, path)


def _reference_curve(*, runs_dir, dataset, images, labels, eps, settings, eval_policy, log):
    """Robust accuracy of the reference after each epoch, with training time.

    Scored with `CURVE_ATTACKS` on the weights `keep_epoch_weights` saved.
    """
    run_dir = os.path.join(runs_dir, REFERENCE)
    path = os.path.join(run_dir, "evaluation", "curve.json")
    if os.path.exists(path):
        with open(path) as f:
            return json.load(f)
    with open(os.path.join(run_dir, "history.json")) as f:
        history = json.load(f)
    log(f"== {REFERENCE}: robustness after each of {len(history)} epochs")
    target = evaluation.load_target(run_dir, policy=eval_policy)
    points, elapsed = [], 0.0
    for record in history:
        elapsed += record["seconds"]
        weights = training.epoch_weights_path(run_dir, record["epoch"])
        if not os.path.exists(weights):
            raise ValueError(
                f"{weights} is missing: the {REFERENCE} run was trained without "
                "keep_epoch_weights. Retrain it in a fresh runs directory."
            )
        target.keras_model.load_weights(weights)
        report = evaluation.evaluate(
            target,
            images,
            labels,
            attacks=list(CURVE_ATTACKS),
            eps_values=[eps],
            settings=settings,
            num_classes=data.get_info(dataset).num_classes,
            add_large_eps=False,
            progress=False,
        )
        points.append(
            {
                "epoch": record["epoch"],
                "train_seconds": elapsed,
                "clean_accuracy": report["clean_accuracy"],
                "robust_accuracy": report["worst_case_accuracy"],
            }
        )
        log(f"  epoch {record['epoch']}: robust accuracy {points[-1]['robust_accuracy']:.2f}")
    curve = {"attacks": list(CURVE_ATTACKS), "eps": eps, "points": points}
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump(curve, f, indent=2)
    return curve


def _trained_at_commit(run_dir):
    with open(os.path.join(run_dir, "config.json")) as f:
        return json.load(f).get("environment", {}).get("git_commit")


def epochs_to_reach(curve, accuracy):
    """The first epoch after which `curve` reaches `accuracy` (or None)."""
    for point in curve["points"]:
        if point["robust_accuracy"] >= accuracy:
            return point["epoch"]
    return None


def _step_costs(variants, *, dataset, policy, runs_dir, steps, repeats, log):
    """Seconds per train step of every variant, timed round-robin (cached)."""
    path = os.path.join(runs_dir, "step_costs.json")
    names = [v.name for v in variants]
    if os.path.exists(path):
        with open(path) as f:
            cached = json.load(f)
        if set(names) <= set(cached["seconds_per_step"]):
            return cached
    log(f"== timing the train step of {', '.join(names)} round-robin")
    configs = {
        v.name: training.TrainConfig(
            dataset=dataset, method=v.method, mixed_precision=policy, **v.settings
        )
        for v in variants
    }
    batch_size = training.TrainConfig().batch_size
    timed = throughput.time_train_steps(
        configs, batch_size=batch_size, steps=steps, repeats=repeats, log=log
    )
    costs = {
        "batch_size": batch_size,
        "steps": steps,
        "repeats": repeats,
        "policy": policy,
        "seconds_per_step": {n: t["seconds_per_step"] for n, t in timed.items()},
    }
    os.makedirs(runs_dir, exist_ok=True)
    with open(path, "w") as f:
        json.dump(costs, f, indent=2)
    return costs


def _row(variant, results, history, report, reference, step_seconds, **extra):
    per_epoch = statistics.median(h["seconds"] for h in history) if history else None
    row = {
        "name": variant.name,
        "method": variant.method,
        "settings": variant.settings,
        "note": variant.note,
        "epochs": results["epochs_done"],
        "seconds_per_epoch": per_epoch,
        "total_train_seconds": results["total_train_seconds"],
        "seconds_per_step": step_seconds,
        "tested": report is not None,
        "clean_accuracy": None,
        "robust_accuracy": {},
        "skipped": {},
        "worst_case_accuracy": None,
        "worst_case_accuracy_by_eps": {},
        "failed_checks": [],
        "num_examples": None,
        "grad_l1": [h["grad_l1"] for h in history],
        "trained_at_commit": extra.get("trained_at_commit"),
    }
    if report is not None:
        eps = f"{report['eps']:g}"
        row.update(
            clean_accuracy=report["clean_accuracy"],
            robust_accuracy={
                name: entry["results"][eps]["robust_accuracy"]
                for name, entry in report["attacks"].items()
                if eps in entry["results"]
            },
            skipped=report.get("skipped", {}),
            worst_case_accuracy=report["worst_case_accuracy"],
            worst_case_accuracy_by_eps=report["worst_case_accuracy_by_eps"],
            failed_checks=[k for k, c in report["checks"].items() if c.get("passed") is False],
            num_examples=report["num_examples"],
        )
    holdout, curve = extra.get("holdout"), extra.get("curve")
    if holdout is not None:
        row["holdout_worst_case_accuracy"] = holdout["worst_case_accuracy"]
        row["holdout_clean_accuracy"] = holdout["clean_accuracy"]
    if reference:
        # Every variant trains on the same batches, so the cost ratio of one
        # step is that of one epoch; timed round-robin, it does not depend on
        # other load on the machine, unlike the wall-clock seconds per epoch.
        row["speedup_per_epoch_vs_pgd_at"] = reference["seconds_per_step"] / step_seconds
        if per_epoch:
            row["wall_speedup_per_epoch_vs_pgd_at"] = reference["seconds_per_epoch"] / per_epoch
    if reference and curve is not None and report is not None:
        # Training cost until the attacks of the curve leave the reference as
        # robust as this variant is under the whole suite, over this
        # variant's whole training cost.
        reach = epochs_to_reach(curve, report["worst_case_accuracy"])
        row["pgd_at_epochs_to_reach"] = reach
        row["speedup_to_reach_vs_pgd_at"] = (
            reach * reference["seconds_per_step"] / (row["epochs"] * step_seconds)
            if reach is not None
            else None
        )
    return row


def _provenance(payload):
    env = payload["environment"]
    trained = sorted({r["trained_at_commit"] for r in payload["rows"] if r["trained_at_commit"]})
    return (
        f"Made by `{payload['command'] or 'sq_keras.reproduce.run'}` (seed {payload['seed']}, "
        f"training policy {payload['policy']}) at commit {env['git_commit']}, models trained "
        f"at {', '.join(trained) or 'unknown commits'}; {env['machine']}, TensorFlow "
        f"{env['tensorflow']}, Keras {env['keras']}."
    )


def _fmt(value, pattern="{:.2f}"):
    return "-" if value is None else pattern.format(value)


def _markdown(rows, attacks, eps, selection=None, curve=None, provenance=None):
    columns = [a for a in attacks if any(a in r["robust_accuracy"] for r in rows)]
    holdout = any("holdout_worst_case_accuracy" in r for r in rows)
    head = (
        ["variant", "clean"]
        + columns
        + ["worst case"]
        + (["held-out worst case"] if holdout else [])
        + [
            "failed checks",
            "s/step",
            "s/epoch (wall)",
            "epochs",
            "speed-up/epoch vs pgd_at",
            "speed-up to its robustness vs pgd_at",
        ]
    )
    lines = []
    if provenance:
        lines += [provenance, ""]
    lines += [
        f"Robust accuracy (%) at eps = {eps:g} on "
        f"{next(r['num_examples'] for r in rows if r['tested'])} test images.",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for r in rows:
        cells = [r["name"], _fmt(r["clean_accuracy"])]
        cells += [_fmt(r["robust_accuracy"].get(a)) for a in columns]
        cells.append(_fmt(r["worst_case_accuracy"]))
        if holdout:
            cells.append(_fmt(r.get("holdout_worst_case_accuracy")))
        reach = r.get("speedup_to_reach_vs_pgd_at", "absent")
        if reach is None:
            reach = "pgd_at never as robust"
        elif reach != "absent":
            reach = f"{reach:.1f}x"
        else:
            reach = "-"
        checks = ", ".join(r["failed_checks"]) or "none"
        cells += [
            checks if r["tested"] else "not attacked on the test set (not selected)",
            f"{r['seconds_per_step']:.3f}",
            _fmt(r["seconds_per_epoch"], "{:.1f}"),
            str(r["epochs"]),
            _fmt(r.get("speedup_per_epoch_vs_pgd_at"), "{:.1f}x"),
            reach,
        ]
        lines.append("| " + " | ".join(cells) + " |")
    if selection:
        lines += [
            "",
            f"Recipe selection: worst case over the suite on {selection['num_examples']} "
            f"held-out training images (`{selection['split']}`, never trained on); "
            f"selected: `{selection['selected']}`."
            + (
                " Of the candidates, only "
                + ", ".join(f"`{n}`" for n in selection["tested_candidates"])
                + " (the selected one and the paper's recipe) are attacked on the test "
                "set; the others keep their held-out numbers."
                if selection.get("untested")
                else ""
            ),
        ]
    if curve:
        points = ", ".join(f"{p['epoch']}: {p['robust_accuracy']:.1f}" for p in curve["points"])
        lines += [
            "",
            f"`{REFERENCE}` robust accuracy after each epoch ({' + '.join(curve['attacks'])}, "
            f"worst case, same test images): {points}. The speed-up to a variant's "
            f"robustness is the training cost `{REFERENCE}` needs to first reach the "
            "variant's worst case, over the variant's training cost.",
        ]
    lines += [
        "",
        "s/step: median seconds of one train step (batch 128), every variant's step "
        "timed round-robin in one process, so the ratios do not depend on other load "
        "on the machine; the speed-ups use them. s/epoch (wall): median wall-clock "
        "epoch of the actual training run, which shares the machine with whatever "
        "else ran.",
    ]
    lines += ["", "Variants:", ""]
    lines += [
        f"- `{r['name']}`: {r['note']} (`--method={r['method']}`"
        + "".join(f" --{k}={v}" for k, v in r["settings"].items())
        + ")"
        for r in rows
    ]
    return "\n".join(lines) + "\n"


def _plots(rows, output_dir, dataset):
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    def figure(name, xlabel, ylabel, curves, log_y=False, log_x=False):
        fig, ax = plt.subplots(figsize=(6, 4))
        for label, xs, ys, marker in curves:
            ax.plot(xs, ys, marker=marker, label=label, linestyle="-" if len(xs) > 1 else "")
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        if log_y:
            ax.set_yscale("log")
        if log_x:
            ax.set_xscale("log")
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
        path = os.path.join(output_dir, f"{dataset}_{name}.png")
        fig.tight_layout()
        fig.savefig(path, dpi=120)
        plt.close(fig)
        return path

    sweeps = []
    for r in rows:
        if not r["tested"]:
            continue
        by_eps = sorted((float(e), a) for e, a in r["worst_case_accuracy_by_eps"].items())
        sweeps.append((r["name"], [e for e, _ in by_eps], [a for _, a in by_eps], "o"))
    grads = [(r["name"], np.arange(1, len(r["grad_l1"]) + 1), r["grad_l1"], ".") for r in rows]
    files = {}
    costed = [r for r in rows if r.get("speedup_per_epoch_vs_pgd_at") and r["tested"]]
    if costed:
        files["tradeoff"] = figure(
            "cost_vs_robustness",
            "training cost per epoch, pgd_at = 1 (round-robin step timing)",
            "worst-case robust accuracy (%)",
            [
                (
                    r["name"],
                    [1.0 / r["speedup_per_epoch_vs_pgd_at"]],
                    [r["worst_case_accuracy"]],
                    "o",
                )
                for r in costed
            ],
            log_x=True,
        )
    return {
        **files,
        "sweep": figure(
            "robustness_vs_eps", "eps (l-inf)", "worst-case robust accuracy (%)", sweeps
        ),
        "grad_l1": figure(
            "grad_l1", "epoch", "mean ||grad_x CE||_1 (clean test batch)", grads, log_y=True
        ),
    }


def run(
    variants,
    *,
    dataset,
    epochs,
    runs_dir,
    output_dir,
    num_examples,
    attacks=("strong",),
    eps_values=(0.3,),
    settings=None,
    data_dir=None,
    seed=0,
    policy="float32",
    eval_policy="float32",
    train_examples=None,
    holdout_examples=0,
    curve_examples=None,
    timing_steps=5,
    timing_repeats=3,
    train_only=False,
    test_unselected=False,
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
        settings: `evaluation.AttackSettings` of the suite; default PGD-100
            with 5 restarts (the strongest setting measured in RESEARCH.md).
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
            (default: `num_examples`); 0 skips the curve.
        timing_steps: Steps per variant and repeat of the round-robin timing
            of the train steps, which sets the cost ratios.
        timing_repeats: Repeats of that timing (the median is kept).
        train_only: Stop after training (returns None).
        test_unselected: With a held-out selection, attack every candidate on
            the test set; by default only the selected one and `baseline`
            candidates are (the others keep their held-out numbers).
        command: The command line that ran this, recorded in the output.
        log: Callable taking one line of progress text.

    Returns:
        The dict written to `<dataset>.json`.
    """
    names = [v.name for v in variants]
    if len(set(names)) != len(names):
        raise ValueError(f"Variant names must be unique. Received: {names}")
    if holdout_examples and train_examples is None:
        raise ValueError(
            "`holdout_examples` needs `train_examples`: the held-out images are the "
            "training images after the first `train_examples`."
        )
    settings = settings or evaluation.AttackSettings(pgd_steps=100, restarts=5)
    attack_names = evaluation.resolve_attacks(list(attacks))
    trained = {}
    for variant in variants:
        results = _train(
            variant,
            dataset=dataset,
            epochs=epochs,
            runs_dir=runs_dir,
            data_dir=data_dir,
            seed=seed,
            policy=policy,
            train_examples=train_examples,
            log=log,
        )
        with open(os.path.join(runs_dir, variant.name, "history.json")) as f:
            trained[variant.name] = (results, json.load(f))
    if train_only:
        return None
    costs = _step_costs(
        variants,
        dataset=dataset,
        policy=policy,
        runs_dir=runs_dir,
        steps=timing_steps,
        repeats=timing_repeats,
        log=log,
    )["seconds_per_step"]

    source_name = REFERENCE if REFERENCE in trained else names[0]
    source = evaluation.load_target(os.path.join(runs_dir, source_name), policy=eval_policy)
    images, labels = evaluation.load_examples(
        dataset, "test", num_examples=num_examples, data_dir=data_dir
    )
    selection = None
    holdouts = {}
    candidates = [v for v in variants if v.candidate]
    if holdout_examples and candidates:
        split = f"train[{train_examples}:{train_examples + holdout_examples}]"
        held_images, held_labels = evaluation.load_examples(dataset, split, data_dir=data_dir)
        for v in candidates:
            holdouts[v.name] = _evaluate(
                v,
                runs_dir=runs_dir,
                dataset=dataset,
                images=held_images,
                labels=held_labels,
                attacks=attack_names,
                eps_values=[eps_values[0]],
                settings=settings,
                source=source,
                eval_policy=eval_policy,
                log=log,
                filename="holdout_report.json",
                split=split,
                add_large_eps=False,
            )
        ranked = sorted(holdouts, key=lambda n: holdouts[n]["worst_case_accuracy"], reverse=True)
        selection = {
            "split": split,
            "num_examples": len(held_labels),
            "worst_case_accuracy": {n: holdouts[n]["worst_case_accuracy"] for n in ranked},
            "selected": ranked[0],
        }
    tested = [
        v
        for v in variants
        if not v.candidate
        or selection is None
        or test_unselected
        or v.baseline
        or v.name == selection["selected"]
    ]
    if selection is not None:
        selection["tested_candidates"] = [v.name for v in tested if v.candidate]
        selection["untested"] = [v.name for v in candidates if v not in tested]
    reports = {
        v.name: _evaluate(
            v,
            runs_dir=runs_dir,
            dataset=dataset,
            images=images,
            labels=labels,
            attacks=attack_names,
            eps_values=list(eps_values),
            settings=settings,
            source=source,
            eval_policy=eval_policy,
            log=log,
        )
        for v in tested
    }
    reference = curve = None
    if REFERENCE in trained:
        ref_results, ref_history = trained[REFERENCE]
        reference = {
            "seconds_per_epoch": statistics.median(h["seconds"] for h in ref_history),
            "total_train_seconds": ref_results["total_train_seconds"],
            "seconds_per_step": costs[REFERENCE],
        }
        if curve_examples is None or curve_examples > 0:
            count = num_examples if curve_examples is None else curve_examples
            curve = _reference_curve(
                runs_dir=runs_dir,
                dataset=dataset,
                images=images[:count],
                labels=labels[:count],
                eps=float(eps_values[0]),
                settings=settings,
                eval_policy=eval_policy,
                log=log,
            )
    rows = [
        _row(
            v,
            *trained[v.name],
            reports.get(v.name),
            reference,
            costs[v.name],
            holdout=holdouts.get(v.name),
            curve=curve,
            trained_at_commit=_trained_at_commit(os.path.join(runs_dir, v.name)),
        )
        for v in variants
    ]
    os.makedirs(output_dir, exist_ok=True)
    files = _plots(rows, output_dir, dataset)
    payload = {
        "command": command,
        "dataset": dataset,
        "epochs": epochs,
        "seed": seed,
        "policy": policy,
        "eps": float(eps_values[0]),
        "num_examples": len(labels),
        "transfer_source": source_name,
        "attack_settings": dataclasses.asdict(settings),
        "train_examples": train_examples,
        "holdout_examples": holdout_examples,
        "test_unselected": test_unselected,
        "environment": provenance.environment(),
        "selection": selection,
        "reference_curve": curve,
        "rows": rows,
        "figures": files,
    }
    with open(os.path.join(output_dir, f"{dataset}.json"), "w") as f:
        json.dump(payload, f, indent=2)
    with open(os.path.join(output_dir, f"{dataset}.md"), "w") as f:
        f.write(
            _markdown(
                rows,
                attack_names + [evaluation.DOUBLED],
                float(eps_values[0]),
                selection=selection,
                curve=curve,
                provenance=_provenance(payload),
            )
        )
    return payload
