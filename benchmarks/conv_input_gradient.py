r"""Input gradient of MNIST's first convolution: TensorFlow's kernel against the depthwise form.

Free adversarial training and the quantizer methods' steps need the input
gradient of the Madry CNN's first layer (5x5, one input channel, 32 filters,
'same'). TensorFlow computes it as a transposed convolution with one output
channel; `sq_keras.attacks.fast_input_gradients.conv_input_gradient` computes
it as a depthwise correlation summed over channels.
`sq_keras.training.fast_backward` uses the depthwise form only where it is
faster. This script times both, and the layer's forward pass for scale, in
float32 and bfloat16 in one process (best of --repeats rounds of --calls
calls each):

  python benchmarks/conv_input_gradient.py --output=results/mnist_conv_input_gradient.json
"""

import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402
from absl import app  # noqa: E402
from absl import flags  # noqa: E402

from sq_keras import jsonio  # noqa: E402
from sq_keras import provenance  # noqa: E402
from sq_keras.attacks.fast_input_gradients import conv_input_gradient  # noqa: E402

_BATCH_SIZE = flags.DEFINE_integer("batch_size", 128, "Images per call.", lower_bound=1)
_CALLS = flags.DEFINE_integer("calls", 20, "Timed calls per round.", lower_bound=1)
_REPEATS = flags.DEFINE_integer("repeats", 5, "Rounds; the fastest is kept.", lower_bound=1)
_OUTPUT = flags.DEFINE_string("output", None, "Write the results as JSON here.")

DTYPES = ("float32", "bfloat16")


def _functions(dtype, batch_size):
    """name -> a traced function of MNIST's first convolution in `dtype`."""
    layer = keras.layers.Conv2D(32, 5, padding="same", dtype=dtype)
    images = tf.random.stateless_uniform((batch_size, 28, 28, 1), [0, 1])
    layer.build(images.shape)
    x = tf.cast(images, dtype)
    upstream = tf.cast(tf.random.stateless_normal((batch_size, 28, 28, 32), [0, 2]), dtype)
    kernel = tf.cast(layer.kernel, dtype)
    return {
        "forward": tf.function(lambda: layer(x)),
        "tensorflow_input_gradient": tf.function(
            lambda: tf.raw_ops.Conv2DBackpropInput(
                input_sizes=tf.shape(x),
                filter=kernel,
                out_backprop=upstream,
                strides=[1, 1, 1, 1],
                padding="SAME",
            )
        ),
        "depthwise_input_gradient": tf.function(
            lambda: conv_input_gradient(layer, x, None, upstream, activation=False)
        ),
    }


def _best_seconds(fn, calls, repeats):
    fn()  # tracing
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(calls):
            out = fn()
        float(tf.reduce_sum(tf.cast(out, tf.float32)))  # waits for the last call
        best = min(best, (time.perf_counter() - start) / calls)
    return best


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
    rows = {}
    print("| dtype | forward ms | TensorFlow input gradient ms | depthwise input gradient ms |")
    print("|---|---|---|---|")
    for dtype in DTYPES:
        fns = _functions(dtype, _BATCH_SIZE.value)
        ms = {k: 1000 * _best_seconds(f, _CALLS.value, _REPEATS.value) for k, f in fns.items()}
        rows[dtype] = ms
        print(
            f"| {dtype} | {ms['forward']:.2f} | {ms['tensorflow_input_gradient']:.2f} "
            f"| {ms['depthwise_input_gradient']:.2f} |"
        )
    if _OUTPUT.value:
        jsonio.write_json(
            _OUTPUT.value,
            {
                "command": " ".join(["python", "benchmarks/conv_input_gradient.py", *sys.argv[1:]]),
                "batch_size": _BATCH_SIZE.value,
                "calls": _CALLS.value,
                "repeats": _REPEATS.value,
                "milliseconds_per_call": rows,
                "environment": provenance.environment(),
                "date": time.strftime("%Y-%m-%d"),
            },
        )
        print(f"Wrote {_OUTPUT.value}")


if __name__ == "__main__":
    app.run(main)
