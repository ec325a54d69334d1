r"""Speed of the `autoattack` preset as a cascade against per-attack mode.

Runs the `autoattack` attacks (APGD-CE, APGD-T, FAB-T, Square; through the
identity BPDA stand-in on a model with a quantizer) twice in one process, on
the same examples with the same settings and seeds: as a cascade (each attack
only on the examples every earlier one failed on, `worst_case_only=True`) and
per attack (every attack on every example). Prints both wall times, their
ratio, both worst cases, and per attack its seconds, attacked examples and
robust accuracy.

The worst cases agree whenever an attack's result on an example does not
depend on the other examples of its batch; where it does (a batch-shaped
random start, a batch-level stopping rule), the cascade attacks smaller
batches and the two may differ on a few examples: the examples robust in one
mode only are counted and printed.

Usage:
  python benchmarks/autoattack_speed.py --model=runs/mnist_sq_free \
      --num_examples=200 --output=results/autoattack_speed.json
"""

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
from sq_keras import precision  # noqa: E402
from sq_keras import provenance  # noqa: E402

PRESET = "autoattack"
WARM_UP = 4  # Examples of the untimed warm-up run.

_MODEL = flags.DEFINE_string(
    "model", "runs/mnist_sq_free", "A .keras file or training model_dir (BPDA needs Keras)."
)
_NUM_EXAMPLES = flags.DEFINE_integer("num_examples", 500, "First N test examples.")
_EPS = flags.DEFINE_float("eps", None, "l-inf radius; default: the model's config, else 0.3.")
_PGD_STEPS = flags.DEFINE_integer(
    "pgd_steps", None, "Steps of APGD (per target for APGD-T, FAB-T); default: the preset's."
)
_SQUARE_QUERIES = flags.DEFINE_integer(
    "square_queries", None, "Square Attack queries per example; default: the preset's."
)
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 250, "Examples per attack batch.")
_OUTPUT = flags.DEFINE_string("output", None, "Optional JSON file for the results.")
_MIXED_PRECISION = flags.DEFINE_enum(
    "mixed_precision", "float32", list(precision.POLICIES), "Dtype policy of the model."
)
_DATA_DIR = flags.DEFINE_string("data_dir", None, "Dataset directory; default $SQ_KERAS_DATA_DIR.")


def check_flags(num_examples, eps, pgd_steps, square_queries, batch_size):
    """Fails with a `app.UsageError` naming the first bad flag value."""
    for name, value in (
        ("num_examples", num_examples),
        ("pgd_steps", pgd_steps),
        ("square_queries", square_queries),
        ("batch_size", batch_size),
    ):
        if value is not None and value <= 0:
            raise app.UsageError(f"--{name} must be a positive integer. Received: {value}")
    if eps is not None and not 0.0 < eps <= 1.0:
        raise app.UsageError(f"--eps must be in (0, 1] (pixel units). Received: {eps}")


def plan_for(target, *, pgd_steps=None, square_queries=None):
    """The `autoattack` plan on `target`, the given budgets replacing the preset's."""
    given = {"pgd_steps": pgd_steps, "square_queries": square_queries}
    given = {name: value for name, value in given.items() if value is not None}
    return evaluation.REGISTRY.plan(
        [PRESET], evaluation.AttackSettings(**given), target=target, explicit=list(given)
    )


def timed_evaluation(target, images, labels, plan, *, eps, batch_size, cascade):
    """`(report, seconds)` of the plan's attacks at `eps`, in one mode."""
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
        add_large_eps=False,
        num_shown=0,
        worst_case_only=cascade,
    )
    return report, time.perf_counter() - start


def per_attack_rows(report, eps):
    """`{attack: {seconds, attacked_examples, robust_accuracy}}` at `eps`."""
    rows = {}
    for name, entry in report.attacks.items():
        result = entry["results"][evaluation.eps_key(eps)]
        rows[name] = {
            "seconds": result["seconds"],
            "attacked_examples": result.get("attacked_examples", report.num_examples),
            "robust_accuracy": result["robust_accuracy"],
        }
    return rows


def compare(cascade, per_attack, cascade_seconds, per_attack_seconds, eps):
    """The benchmark's figures from the two reports and their wall times."""
    robust_cascade = set(cascade.robust_examples)
    robust_per_attack = set(per_attack.robust_examples)
    return {
        "eps": eps,
        "num_examples": cascade.num_examples,
        "clean_accuracy": cascade.clean_accuracy,
        "attacks": list(cascade.attacks),
        "settings": cascade.settings,
        "cascade_seconds": round(cascade_seconds, 3),
        "per_attack_seconds": round(per_attack_seconds, 3),
        "speedup": round(per_attack_seconds / cascade_seconds, 3),
        "cascade_worst_case": cascade.worst_case_accuracy,
        "per_attack_worst_case": per_attack.worst_case_accuracy,
        "robust_only_in_cascade": len(robust_cascade - robust_per_attack),
        "robust_only_per_attack": len(robust_per_attack - robust_cascade),
        "cascade": per_attack_rows(cascade, eps),
        "per_attack": per_attack_rows(per_attack, eps),
    }


def format_figures(figures):
    """A Markdown table of the figures, with the totals and worst cases."""
    lines = [
        f"autoattack at eps={figures['eps']:g} on {figures['num_examples']} examples "
        f"(clean {figures['clean_accuracy']:.1f}%): {', '.join(figures['attacks'])}",
        "",
        "| attack | cascade s | cascade examples | per-attack s | per-attack examples "
        "| robust after (cascade) | robust (per attack) |",
        "|---|---|---|---|---|---|---|",
    ]
    for name in figures["attacks"]:
        c, p = figures["cascade"][name], figures["per_attack"][name]
        lines.append(
            f"| {name} | {c['seconds']:.1f} | {c['attacked_examples']} | {p['seconds']:.1f} "
            f"| {p['attacked_examples']} | {c['robust_accuracy']:.1f}% "
            f"| {p['robust_accuracy']:.1f}% |"
        )
    lines += [
        "",
        f"total: cascade {figures['cascade_seconds']:.1f} s, per attack "
        f"{figures['per_attack_seconds']:.1f} s, ratio {figures['speedup']:.2f}x",
        f"worst case: cascade {figures['cascade_worst_case']:.2f}%, per attack "
        f"{figures['per_attack_worst_case']:.2f}% (robust in one mode only: "
        f"{figures['robust_only_in_cascade']} cascade, "
        f"{figures['robust_only_per_attack']} per attack)",
    ]
    return "\n".join(lines)


def measure(*, model, num_examples, eps, pgd_steps, square_queries, batch_size, policy, data_dir):
    """Loads the model and examples, runs both modes; returns the figures."""
    target = evaluation.load_target(model, policy=policy)
    dataset = target.config.get("dataset") or "mnist"
    eps = float(eps if eps is not None else target.config.get("eps", data.get_info(dataset).eps))
    images, labels = evaluation.load_examples(
        dataset, "test", num_examples=num_examples, data_dir=data_dir
    )
    plan = plan_for(target, pgd_steps=pgd_steps, square_queries=square_queries)
    options = {"eps": eps, "batch_size": batch_size}
    # Untimed warm-up on a few examples with tiny budgets, so that the
    # process's one-time costs (kernel set-up, first model calls) fall on
    # neither mode; each mode still traces its own attack functions.
    warm_up = plan_for(target, pgd_steps=2, square_queries=4)
    timed_evaluation(target, images[:WARM_UP], labels[:WARM_UP], warm_up, cascade=False, **options)
    cascade, cascade_seconds = timed_evaluation(
        target, images, labels, plan, cascade=True, **options
    )
    per_attack, per_attack_seconds = timed_evaluation(
        target, images, labels, plan, cascade=False, **options
    )
    return compare(cascade, per_attack, cascade_seconds, per_attack_seconds, eps)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
    check_flags(
        _NUM_EXAMPLES.value, _EPS.value, _PGD_STEPS.value, _SQUARE_QUERIES.value, _BATCH_SIZE.value
    )
    logging.set_verbosity(logging.WARNING)
    tf.get_logger().setLevel("ERROR")
    policy = precision.set_policy(_MIXED_PRECISION.value)
    if not os.path.exists(_MODEL.value):
        raise app.UsageError(f"--model path {_MODEL.value!r} does not exist.")
    figures = measure(
        model=_MODEL.value,
        num_examples=_NUM_EXAMPLES.value,
        eps=_EPS.value,
        pgd_steps=_PGD_STEPS.value,
        square_queries=_SQUARE_QUERIES.value,
        batch_size=_BATCH_SIZE.value,
        policy=policy,
        data_dir=_DATA_DIR.value,
    )
    print(format_figures(figures))
    if _OUTPUT.value:
        payload = {
            "command": " ".join(["python", "benchmarks/autoattack_speed.py", *sys.argv[1:]]),
            "commit": provenance.git_commit(),
            "date": time.strftime("%Y-%m-%d %H:%M"),
            "machine": provenance.machine_description(),
            "tensorflow": tf.__version__,
            "dtype_policy": policy,
            "load_average_at_end": os.getloadavg()[0],
            **figures,
        }
        jsonio.write_json(_OUTPUT.value, payload)


if __name__ == "__main__":
    app.run(main)
