r"""The free step under mixed_bfloat16 with each input gradient of the first convolution.

`sq_keras.training.fast_backward` gives the Madry CNN's first convolution
(one input channel) the depthwise input gradient in bfloat16 only on a CPU
without AMX, where TensorFlow's own bfloat16 kernel measured slower
(`benchmarks/conv_input_gradient.py`). This script measures what that choice
does to whole train steps: it builds `natural`, `sq_noisy` and `sq_free`
steps, and `sq_noisy` and `sq_free` a second time with TensorFlow's own
kernel, and times them round-robin in one process (`sq_keras.throughput`),
reporting each one's wall and CPU cost against `natural`.

Usage:
  python benchmarks/bf16_conv_gradient.py --repeats=9 \
      --output=results/mnist_bf16_conv_gradient.json
"""

import os
import statistics
import sys
from unittest import mock

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from absl import app  # noqa: E402
from absl import flags  # noqa: E402

from sq_keras import data  # noqa: E402
from sq_keras import jsonio  # noqa: E402
from sq_keras import precision  # noqa: E402
from sq_keras import provenance  # noqa: E402
from sq_keras import throughput  # noqa: E402
from sq_keras import training  # noqa: E402
from sq_keras.training import fast_backward  # noqa: E402

_STEPS = flags.DEFINE_integer("steps", 10, "Timed steps per variant and repeat.")
_REPEATS = flags.DEFINE_integer("repeats", 9, "Round-robin repeats; the median is kept.")
_OUTPUT = flags.DEFINE_string("output", None, "Write the results as JSON here.")

# name -> (method, whether the bfloat16 first convolution gets the depthwise gradient)
VARIANTS = {
    "natural": ("natural", None),
    "sq_noisy, TensorFlow's kernel": ("sq_noisy", False),
    "sq_noisy, depthwise": ("sq_noisy", True),
    "sq_free, TensorFlow's kernel": ("sq_free", False),
    "sq_free, depthwise": ("sq_free", True),
}
_BATCH_SIZE, _NUM_TRAIN = 128, 60_000


def _runs(policy):
    info = data.get_info("mnist")
    rng = np.random.default_rng(0)
    images = tf.constant(rng.random((_BATCH_SIZE, *info.image_shape), dtype=np.float32))
    labels = tf.constant(rng.integers(0, info.num_classes, _BATCH_SIZE), tf.int64)
    runs = {}
    for name, (method, depthwise) in VARIANTS.items():
        config = training.TrainConfig(
            dataset="mnist", method=method, mixed_precision=policy
        ).resolved()
        with mock.patch.object(
            fast_backward,
            "tensorflow_bfloat16_input_gradient_is_slow",
            return_value=bool(depthwise),
        ):
            step = throughput._build_step(
                config, info, num_train=_NUM_TRAIN, batch_size=_BATCH_SIZE
            )
        batch = throughput._input_stage(config, images, labels, _NUM_TRAIN)
        float(step(*batch(0))[0])  # tracing and the first run
        runs[name] = (step, batch)
    return runs


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
    policy = precision.set_policy("mixed_bfloat16")
    seconds, cpu = throughput._time_round_robin(
        _runs(policy), steps=_STEPS.value, repeats=_REPEATS.value, log=print
    )
    rows = {}
    for name in VARIANTS:
        rows[name] = {
            "seconds_per_step": statistics.median(seconds[name]) / _STEPS.value,
            "cost_vs_natural": statistics.median(seconds[name])
            / statistics.median(seconds["natural"]),
            "cpu_cost_vs_natural": statistics.median(cpu[name]) / statistics.median(cpu["natural"]),
        }
        print(
            f"{name}: {rows[name]['seconds_per_step'] * 1e3:.1f} ms/step, "
            f"{rows[name]['cost_vs_natural']:.3f}x natural (CPU "
            f"{rows[name]['cpu_cost_vs_natural']:.3f}x)",
            flush=True,
        )
    if _OUTPUT.value:
        jsonio.write_json(
            _OUTPUT.value,
            {
                "command": " ".join(sys.argv),
                "policy": policy,
                "batch_size": _BATCH_SIZE,
                "steps": _STEPS.value,
                "repeats": _REPEATS.value,
                "rows": rows,
                "seconds": seconds,
                "cpu_seconds": cpu,
                "environment": provenance.environment(),
            },
        )


if __name__ == "__main__":
    app.run(main)
