r"""What a `RobustModel.fit` epoch costs with each method, against `method="natural"`.

A user's `fit` on the Madry CNN (`sq_keras.models`), as `docs/keras.md`
writes it: arrays of MNIST images, batch 128, Adam at MNIST's default rate.
`natural` trains the plain model; the quantizer methods (`sq_free`,
`sq_fgsm`, ...) put a `SoftQuantization` front on it (`add_quantizer=True`).
Each model first fits one untimed epoch (tracing), then the methods take
turns, `--repeats` times, each timing one `fit` epoch over the same images:
alternating keeps slow drifts of the machine's speed from favouring any.
Reports the median seconds per epoch and each method's ratio to `natural`
(wall time, and the process's CPU time, which on a machine shared with
other work still counts what an epoch computes where wall time also counts
the waits for a core),
under the global dtype policy `--mixed_precision` sets (`auto`: bfloat16
where the CPU runs it natively, else float32).

Usage:
  SQ_KERAS_DATA_DIR=../shared/data python benchmarks/robust_fit_cost.py \
      --methods=natural,sq_free --train_examples=10240 --repeats=5 \
      --output=results/mnist_robust_fit_cost.json
"""

import os
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import keras  # noqa: E402
import numpy as np  # noqa: E402
from absl import app  # noqa: E402
from absl import flags  # noqa: E402

import sq_keras  # noqa: E402
from sq_keras import data  # noqa: E402
from sq_keras import jsonio  # noqa: E402
from sq_keras import models  # noqa: E402
from sq_keras import precision  # noqa: E402
from sq_keras import provenance  # noqa: E402
from sq_keras.robust_model import robust_methods  # noqa: E402

_METHODS = flags.DEFINE_list("methods", ["natural", "sq_free"], "Methods; natural first.")
_TRAIN_EXAMPLES = flags.DEFINE_integer("train_examples", 10240, "MNIST training images per epoch.")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 128, "Images per fit step.")
_REPEATS = flags.DEFINE_integer("repeats", 5, "Timed epochs of each method, in turns.")
_MIXED_PRECISION = flags.DEFINE_enum(
    "mixed_precision", "auto", list(precision.POLICIES), "Global dtype policy."
)
_OUTPUT = flags.DEFINE_string("output", None, "Write the results as JSON here.")


def _robust_model(method, seed=0):
    """The user's Madry CNN in a compiled RobustModel of `method`."""
    keras.utils.set_random_seed(seed)
    cnn = models.build("madry_mnist", input_shape=(28, 28, 1), num_classes=10)
    quantizer = sq_keras.training.METHODS[method].quantizer
    robust = sq_keras.RobustModel(cnn, method=method, eps=0.3, add_quantizer=quantizer)
    robust.compile(optimizer=keras.optimizers.Adam(1e-3))
    return robust


def _epoch_seconds(model, images, labels):
    """Wall and process CPU seconds (all threads) of one `fit` epoch."""
    start, cpu_start = time.perf_counter(), time.process_time()
    model.fit(images, labels, batch_size=_BATCH_SIZE.value, epochs=1, verbose=0)
    return time.perf_counter() - start, time.process_time() - cpu_start


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
    methods = _METHODS.value
    unknown = sorted(set(methods) - set(robust_methods()))
    if unknown or methods[0] != "natural":
        raise app.UsageError(f"--methods: natural first, then any of {robust_methods()}.")
    policy = precision.set_policy(_MIXED_PRECISION.value)
    raw, labels = data.load_arrays("mnist", f"train[:{_TRAIN_EXAMPLES.value}]")
    images = raw.astype(np.float32) / 255.0
    fitted = {m: _robust_model(m) for m in methods}
    for method, model in fitted.items():
        print(f"{method}: warm-up {_epoch_seconds(model, images, labels)[0]:.1f} s", flush=True)
    seconds, cpu = {m: [] for m in methods}, {m: [] for m in methods}
    for repeat in range(_REPEATS.value):
        for method, model in fitted.items():
            wall, cpu_seconds = _epoch_seconds(model, images, labels)
            seconds[method].append(wall)
            cpu[method].append(cpu_seconds)
        print(f"repeat {repeat + 1}: {_line(seconds, -1)}", flush=True)
    median = {m: statistics.median(s) for m, s in seconds.items()}
    ratios = {m: median[m] / median["natural"] for m in methods}
    # Each repeat's ratio, its methods timed back to back: a drift of the
    # machine's speed over the run moves both of a pair alike.
    pair_ratios = {
        m: statistics.median(t / n for t, n in zip(seconds[m], seconds["natural"])) for m in methods
    }
    cpu_median = {m: statistics.median(s) for m, s in cpu.items()}
    cpu_ratios = {m: cpu_median[m] / cpu_median["natural"] for m in methods}
    print("median: " + ", ".join(f"{m} {median[m]:.2f} s ({ratios[m]:.2f}x)" for m in methods))
    print(
        "median of each repeat's ratio: " + ", ".join(f"{m} {pair_ratios[m]:.2f}x" for m in methods)
    )
    print("CPU: " + ", ".join(f"{m} {cpu_median[m]:.2f} s ({cpu_ratios[m]:.2f}x)" for m in methods))
    if _OUTPUT.value:
        jsonio.write_json(
            _OUTPUT.value,
            {
                "command": " ".join(sys.argv),
                "policy": policy,
                "train_examples": _TRAIN_EXAMPLES.value,
                "batch_size": _BATCH_SIZE.value,
                "median_epoch_seconds": median,
                "ratio_to_natural": ratios,
                "median_repeat_ratio_to_natural": pair_ratios,
                "epoch_seconds": seconds,
                "median_epoch_cpu_seconds": cpu_median,
                "cpu_ratio_to_natural": cpu_ratios,
                "epoch_cpu_seconds": cpu,
                "environment": provenance.environment(),
            },
        )


def _line(seconds, index):
    return ", ".join(f"{m} {s[index]:.2f} s" for m, s in seconds.items())


if __name__ == "__main__":
    app.run(main)
