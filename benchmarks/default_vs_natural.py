r"""Wall time of the default training run against `--method=natural`.

Runs `python -m apps.train --dataset=<dataset>` (the dataset's default
method) and the same command with `--method=natural`, alternately, each
`--repeats` times in fresh model directories, and reports the median wall
time of each and their ratio: what a user pays for robustness on this
machine, start-up, data loading, evaluation and export included. The runs'
own `total_train_seconds` (training steps only) are reported beside it.
Alternating the two keeps slow drifts of the machine's speed from favouring
either.

Usage:
  SQ_KERAS_DATA_DIR=../shared/data python benchmarks/default_vs_natural.py \
      --dataset=mnist --epochs=1 --repeats=2 --output=results/mnist_default_vs_natural.json

Extra `apps.train` flags go after `--`, and apply to both commands:
  python benchmarks/default_vs_natural.py --epochs=1 -- --train_examples=10000
"""

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, _ROOT)

from absl import app  # noqa: E402
from absl import flags  # noqa: E402

from sq_keras import data  # noqa: E402
from sq_keras import provenance  # noqa: E402
from sq_keras import training  # noqa: E402

_DATASET = flags.DEFINE_enum("dataset", "mnist", sorted(data.DATASETS), "Dataset to train on.")
_EPOCHS = flags.DEFINE_integer("epochs", 1, "Epochs of every run.")
_REPEATS = flags.DEFINE_integer("repeats", 2, "Runs of each command, alternating.")
_OUTPUT = flags.DEFINE_string("output", None, "Write the results as JSON here.")


def _train(method, extra, workdir, run):
    """Runs apps.train once; returns `(wall seconds, its results.json)`."""
    model_dir = os.path.join(workdir, f"{method or 'default'}_{run}")
    command = [
        sys.executable,
        "-m",
        "apps.train",
        f"--dataset={_DATASET.value}",
        f"--epochs={_EPOCHS.value}",
        f"--model_dir={model_dir}",
        f"--export_dir={model_dir}_export",
        *([f"--method={method}"] if method else []),
        *extra,
    ]
    start = time.perf_counter()
    result = subprocess.run(
        command,
        cwd=_ROOT,
        env=data.environment_for_subprocess(os.environ),
        capture_output=True,
        text=True,
    )
    seconds = time.perf_counter() - start
    if result.returncode:
        raise RuntimeError(f"{' '.join(command)} failed:\n{result.stderr[-3000:]}")
    with open(os.path.join(model_dir, "results.json")) as f:
        return seconds, json.load(f)


def main(argv):
    extra = argv[1:]
    if _REPEATS.value < 1 or _EPOCHS.value < 1:
        raise app.UsageError("--repeats and --epochs must be positive.")
    default_method = training.TrainConfig(dataset=_DATASET.value).fill_defaults().method
    runs = {"default": [], "natural": []}
    with tempfile.TemporaryDirectory() as workdir:
        for run in range(_REPEATS.value):
            for name, method in (("default", None), ("natural", "natural")):
                seconds, results = _train(method, extra, workdir, run)
                runs[name].append(
                    {
                        "wall_seconds": seconds,
                        "train_seconds": results["total_train_seconds"],
                        "test_accuracy": results["test_accuracy"],
                    }
                )
                print(f"{name} run {run + 1}: {seconds:.1f} s wall", flush=True)
    median = {
        name: {key: statistics.median(r[key] for r in rs) for key in rs[0]}
        for name, rs in runs.items()
    }
    wall = median["default"]["wall_seconds"] / median["natural"]["wall_seconds"]
    train = median["default"]["train_seconds"] / median["natural"]["train_seconds"]
    print(
        f"\ndefault ({default_method}) vs natural: {wall:.2f}x wall, {train:.2f}x training "
        f"seconds (medians of {_REPEATS.value})"
    )
    if _OUTPUT.value:
        payload = {
            "command": " ".join(sys.argv),
            "dataset": _DATASET.value,
            "default_method": default_method,
            "epochs": _EPOCHS.value,
            "extra_flags": extra,
            "wall_ratio": wall,
            "train_seconds_ratio": train,
            "median": median,
            "runs": runs,
            "environment": provenance.environment(),
        }
        os.makedirs(os.path.dirname(os.path.abspath(_OUTPUT.value)), exist_ok=True)
        with open(_OUTPUT.value, "w") as f:
            json.dump(payload, f, indent=2)


if __name__ == "__main__":
    app.run(main)
