r"""What stopping an attack run once its whole batch is fooled saves.

PGD, APGD and APGD-T end a run once every example of its batch has been
misclassified at a visited point (`stop_when_all_fooled`, on by default).
This runs the same evaluation twice in one process, on the same examples with
the same settings and seeds, per attack (every attack on every example, as
the `strong` suite's masking checks need), with the stop and without it.
Prints both wall times, their ratio and every accuracy that differs, and
fails if an attack, or the worst case, leaves a higher accuracy with the stop.

Which examples a run fools cannot change after its stop, but the images it
returns can: FAB-T without the stop keeps walking a found point back towards
the decision boundary, where the evaluator's re-prediction (on the target
model, in another batch) can flip it back, so its accuracy with the stop may
be lower.

Usage:
  python benchmarks/stop_when_all_fooled.py --model=runs/mnist_natural \
      --num_examples=250 --output=results/mnist_stop_when_all_fooled_natural.json
"""

import dataclasses
import functools
import inspect
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import tensorflow as tf  # noqa: E402
from absl import app  # noqa: E402
from absl import flags  # noqa: E402
from absl import logging  # noqa: E402

from sq_keras import data  # noqa: E402
from sq_keras import evaluation  # noqa: E402
from sq_keras import jsonio  # noqa: E402
from sq_keras import provenance  # noqa: E402

_MODEL = flags.DEFINE_string("model", None, "Run directory or SavedModel to attack.", required=True)
_ATTACKS = flags.DEFINE_list("attacks", ["strong"], "Attacks or presets of apps.evaluate.")
_NUM_EXAMPLES = flags.DEFINE_integer("num_examples", 250, "First test images attacked.")
_EPS = flags.DEFINE_float("eps", None, "Primary eps (default: the model's); 0.5 is added.")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 250, "Examples per attack batch.")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "Dataset directory; default $SQ_KERAS_DATA_DIR.")
_OUTPUT = flags.DEFINE_string("output", None, "Optional JSON file for the results.")

STOP = "stop_when_all_fooled"


def _without_stop(attack):
    """`attack` with the stop turned off, under the same name."""

    @functools.wraps(attack)
    def run(*args, **kwargs):
        return attack(*args, **{STOP: False}, **kwargs)

    return run


def registry_without_stop(registry=evaluation.REGISTRY):
    """`registry` with the stop turned off in every attack that has it."""

    def change(spec):
        if STOP not in inspect.signature(spec.attack).parameters:
            return spec
        return dataclasses.replace(spec, attack=_without_stop(spec.attack))

    return registry.mapped(change)


def timed_evaluation(target, images, labels, plan, *, eps, batch_size, registry):
    """`(report, seconds)` of the plan's attacks per attack at `eps` and 0.5."""
    start = time.perf_counter()
    report = evaluation.evaluate(
        target,
        images,
        labels,
        attacks=plan.attacks,
        eps_values=[eps],
        settings=plan.settings,
        batch_size=batch_size,
        progress=False,
        num_shown=0,
        registry=registry,
    )
    return report, time.perf_counter() - start


def _seconds_by_eps(report):
    """`{eps: seconds}` summed over the report's attacks."""
    totals = {}
    for entry in report.attacks.values():
        for eps, result in entry["results"].items():
            totals[eps] = totals.get(eps, 0.0) + result["seconds"]
    return {eps: round(seconds, 1) for eps, seconds in totals.items()}


def _seconds_by_attack(report):
    """`{attack: {eps: seconds}}`."""
    return {
        name: {eps: round(result["seconds"], 1) for eps, result in entry["results"].items()}
        for name, entry in report.attacks.items()
    }


def _accuracies(report):
    """`{attack: {eps: robust accuracy}}` and the worst case by eps."""
    per_attack = {
        name: {eps: result["robust_accuracy"] for eps, result in entry["results"].items()}
        for name, entry in report.attacks.items()
    }
    return per_attack, report.worst_case_accuracy_by_eps


def measure(*, model, attacks, num_examples, eps, batch_size, data_dir):
    """Both runs on the same examples; returns the figures."""
    target = evaluation.load_target(model)
    dataset = target.config.get("dataset") or "mnist"
    eps = float(eps if eps is not None else target.config.get("eps", data.get_info(dataset).eps))
    images, labels = evaluation.load_examples(
        dataset, "test", num_examples=num_examples, data_dir=data_dir
    )
    plan = evaluation.REGISTRY.plan(attacks, evaluation.AttackSettings(), target=target)
    runs = {}
    for name, registry in (
        ("with_stop", evaluation.REGISTRY),
        ("without_stop", registry_without_stop()),
    ):
        report, seconds = timed_evaluation(
            target, images, labels, plan, eps=eps, batch_size=batch_size, registry=registry
        )
        per_attack, worst_case = _accuracies(report)
        runs[name] = {
            "seconds": round(seconds, 1),
            "attack_seconds_by_eps": _seconds_by_eps(report),
            "seconds_by_attack": _seconds_by_attack(report),
            "worst_case_accuracy_by_eps": worst_case,
            "robust_accuracy": per_attack,
        }
    differences = accuracy_differences(runs["with_stop"], runs["without_stop"])
    return {
        "model": model,
        "attacks": list(plan.attacks),
        "num_examples": len(labels),
        "eps": eps,
        "runs": runs,
        "speed_up": round(runs["without_stop"]["seconds"] / runs["with_stop"]["seconds"], 2),
        "differences": differences,
        "never_weaker": all(ours <= theirs for ours, theirs in differences.values()),
    }


def accuracy_differences(with_stop, without_stop):
    """`{"attack@eps": (with, without)}` of every accuracy that differs
    (the worst case as "worst_case@eps")."""
    pairs = {
        f"worst_case@{eps}": (value, without_stop["worst_case_accuracy_by_eps"][eps])
        for eps, value in with_stop["worst_case_accuracy_by_eps"].items()
    }
    for name, by_eps in with_stop["robust_accuracy"].items():
        for eps, value in by_eps.items():
            pairs[f"{name}@{eps}"] = (value, without_stop["robust_accuracy"][name][eps])
    return {key: pair for key, pair in pairs.items() if pair[0] != pair[1]}


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
    if _NUM_EXAMPLES.value <= 0 or _BATCH_SIZE.value <= 0:
        raise app.UsageError("--num_examples and --batch_size must be positive.")
    if not os.path.exists(_MODEL.value):
        raise app.UsageError(f"--model path {_MODEL.value!r} does not exist.")
    logging.set_verbosity(logging.WARNING)
    tf.get_logger().setLevel("ERROR")
    figures = measure(
        model=_MODEL.value,
        attacks=_ATTACKS.value,
        num_examples=_NUM_EXAMPLES.value,
        eps=_EPS.value,
        batch_size=_BATCH_SIZE.value,
        data_dir=_DATA_DIR.value,
    )
    for name, run in figures["runs"].items():
        print(
            f"{name}: {run['seconds']} s (attack seconds by eps {run['attack_seconds_by_eps']}), "
            f"worst case {run['worst_case_accuracy_by_eps']}"
        )
    print(
        f"speed-up {figures['speed_up']}x; accuracies that differ (with, without): "
        f"{figures['differences'] or 'none'}"
    )
    if _OUTPUT.value:
        payload = {
            "command": " ".join(["python", "benchmarks/stop_when_all_fooled.py", *sys.argv[1:]]),
            "commit": provenance.git_commit(),
            "date": time.strftime("%Y-%m-%d %H:%M"),
            "machine": provenance.machine_description(),
            "tensorflow": tf.__version__,
            "load_average_at_end": os.getloadavg()[0],
            **figures,
        }
        jsonio.write_json(_OUTPUT.value, payload)
    if not figures["never_weaker"]:
        raise SystemExit("An attack left a higher accuracy with the stop than without it.")


if __name__ == "__main__":
    app.run(main)
