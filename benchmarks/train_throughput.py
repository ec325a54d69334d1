r"""Training-step throughput of sq_keras's methods, measured in one process.

Builds each method's real train step (same model, optimiser and batch) and
times it round-robin: every repeat runs --steps steps of each method in turn,
so load from other processes hits all methods alike; the table reports the
median images/s over repeats and the cost of each method relative to
`natural`. Data are random images of the dataset's shape (throughput does not
depend on pixel values), so no dataset files are needed.

Usage:
  python benchmarks/train_throughput.py --dataset=mnist \
      --methods=natural,sq_noisy,sq_fgsm,fgsm_rs,gradnorm,pgd_at \
      --output=results/mnist_throughput.json
  python benchmarks/train_throughput.py --dataset=cifar10 \
      --methods=natural,sq_noisy,pgd_at --batch_size=128 \
      --output=results/cifar10_throughput.json

`pgd_at` uses PGD-`--pgd_steps` (default: the training default, 40 for MNIST;
use --pgd_steps=10 for CIFAR-10's usual PGD-10).
"""

import json
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
from sq_keras import precision  # noqa: E402
from sq_keras import provenance  # noqa: E402
from sq_keras import throughput  # noqa: E402
from sq_keras import training  # noqa: E402

_DATASET = flags.DEFINE_enum("dataset", "mnist", sorted(data.DATASETS), "Dataset shape/model.")
_METHODS = flags.DEFINE_list(
    "methods", ["natural", "sq_noisy", "pgd_at"], "Methods of apps.train to time."
)
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 128, "Images per step.")
_STEPS = flags.DEFINE_integer("steps", 10, "Timed steps per method and repeat.")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Round-robin repeats.")
_PGD_STEPS = flags.DEFINE_integer("pgd_steps", None, "PGD steps of pgd_at; default: training's.")
_MIXED_PRECISION = flags.DEFINE_enum(
    "mixed_precision", "auto", list(precision.POLICIES), "Dtype policy."
)
_OUTPUT = flags.DEFINE_string("output", None, "Write the results as JSON here.")


def _configs(policy):
    """One `TrainConfig` per --methods entry."""
    unknown = [m for m in _METHODS.value if m not in training.METHODS]
    if unknown:
        raise app.UsageError(f"Unknown methods {unknown}. Valid: {sorted(training.METHODS)}")
    overrides = {} if _PGD_STEPS.value is None else {"pgd_steps": _PGD_STEPS.value}
    return {
        method: training.TrainConfig(
            dataset=_DATASET.value, method=method, mixed_precision=policy, **overrides
        )
        for method in _METHODS.value
    }


def _print_table(rows):
    """Prints the Markdown table; adds `cost_vs_natural` (wall and CPU) to each row."""
    base = rows.get("natural")
    print(
        "\n| method | images/s | s/step | cost vs natural | CPU s/step | CPU cost vs natural |"
        "\n|---|---|---|---|---|---|"
    )
    for method, row in rows.items():
        ratio = row["seconds_per_step"] / base["seconds_per_step"] if base else float("nan")
        cpu_ratio = (
            row["cpu_seconds_per_step"] / base["cpu_seconds_per_step"] if base else float("nan")
        )
        row["cost_vs_natural"], row["cpu_cost_vs_natural"] = ratio, cpu_ratio
        print(
            f"| {method} | {row['images_per_second']:.0f} | {row['seconds_per_step']:.3f} "
            f"| {ratio:.2f}x | {row['cpu_seconds_per_step']:.3f} | {cpu_ratio:.2f}x |"
        )


def _write(path, rows, config, policy):
    """Writes the rows with the command, settings and machine that produced them."""
    commit = provenance.environment()["git_commit"]
    payload = {
        "command": " ".join(["python", "benchmarks/train_throughput.py", *sys.argv[1:]]),
        "dataset": _DATASET.value,
        "model": config.model,
        "batch_size": _BATCH_SIZE.value,
        "steps": _STEPS.value,
        "repeats": _REPEATS.value,
        "pgd_steps": config.pgd_steps,
        "policy": policy,
        "machine": provenance.machine_description(),
        "tensorflow": tf.__version__,
        "commit": commit,
        "date": time.strftime("%Y-%m-%d"),
        "methods": rows,
    }
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(payload, f, indent=2)
    print(f"Wrote {path}")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
    logging.set_verbosity(logging.WARNING)
    policy = precision.set_policy(_MIXED_PRECISION.value)
    configs = _configs(policy)
    config = configs[_METHODS.value[0]].resolved()
    timed = throughput.time_train_steps(
        configs,
        batch_size=_BATCH_SIZE.value,
        steps=_STEPS.value,
        repeats=_REPEATS.value,
        log=lambda line: print(line, flush=True),
    )
    rows = dict(timed)
    _print_table(rows)
    if _OUTPUT.value:
        _write(_OUTPUT.value, rows, config, policy)


if __name__ == "__main__":
    app.run(main)
