r"""PGD speed of sq_keras.attacks against cleverhans, foolbox and ART.

Runs l-inf PGD (random start, cross-entropy, same eps/step/steps) on one model,
one batch and one machine, and prints a Markdown table of images/s (median of
--repeats calls made round-robin across implementations, after one untimed
warm-up call each), of our speed-up over the fastest of cleverhans, foolbox
and ART, and of the accuracy each implementation leaves. With --processes=N
the whole measurement runs in N fresh processes in turn and the table gives
medians and (min-max) over them: the speed of one machine drifts over minutes,
so a single run can mislead.

Usage:
  python benchmarks/attack_speed.py --model=runs/mnist_sq_noisy/model.keras \
      --batch_size=100 --num_steps=40 --repeats=5 --processes=5

Without --model the Madry et al. MNIST CNN with a soft-quantization layer is
built with random weights (speed does not depend on the weights; accuracies
then mean nothing). cleverhans 4.0, foolbox 3.3 and
adversarial-robustness-toolbox 1.20 must be installed; a missing one is
reported and skipped.
"""

import json
import os
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from absl import app  # noqa: E402
from absl import flags  # noqa: E402
from absl import logging  # noqa: E402

from sq_keras import attacks  # noqa: E402
from sq_keras import evaluation  # noqa: E402
from sq_keras import models  # noqa: E402
from sq_keras import provenance  # noqa: E402

_MODEL = flags.DEFINE_string("model", None, "A .keras model; default: untrained madry_mnist.")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 100, "Images per batch.")
_NUM_STEPS = flags.DEFINE_integer("num_steps", 40, "PGD steps.")
_EPS = flags.DEFINE_float("eps", 0.3, "l-inf radius.")
_STEP_SIZE = flags.DEFINE_float("step_size", 0.01, "PGD step size.")
_REPEATS = flags.DEFINE_integer("repeats", 5, "Timed calls per implementation.")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "MNIST directory; default $SQ_KERAS_DATA_DIR.")
_OUTPUT = flags.DEFINE_string("output", None, "Optional JSON file for the results.")
_PROCESSES = flags.DEFINE_integer(
    "processes",
    1,
    "Run the whole benchmark in this many fresh processes, one after another, and report "
    "per implementation the median (min-max) over them.",
)
_INTER_OP_THREADS = flags.DEFINE_integer(
    "inter_op_threads",
    1,
    "TensorFlow inter-op threads of the whole process, so of every implementation "
    "(0: TensorFlow's default, one per core). apps.evaluate uses 1.",
)


def _load_model():
    if _MODEL.value:
        return evaluation.load_target(_MODEL.value, policy="float32").keras_model
    keras.utils.set_random_seed(0)
    return models.build(
        "madry_mnist",
        input_shape=(28, 28, 1),
        num_classes=10,
        soft_quantization={"num_thresholds": 1, "alpha": 100.0},
    )


def _ours(model):
    # As apps.evaluate attacks a Keras model: its exact outputs, with the
    # faster input gradients of `attacks.input_gradient_model`.
    fast_fn = attacks.input_gradient_model(model)

    def model_fn(images):
        return tf.cast(fast_fn(images), tf.float32)

    attack = tf.function(
        lambda x, y: attacks.pgd(
            model_fn,
            x,
            y,
            eps=_EPS.value,
            step_size=_STEP_SIZE.value,
            num_steps=_NUM_STEPS.value,
        )
    )
    return lambda x, y: attack(tf.constant(x), tf.constant(y)).numpy()


def _cleverhans(model):
    from cleverhans.tf2.attacks.projected_gradient_descent import projected_gradient_descent

    attack = tf.function(
        lambda x, y: projected_gradient_descent(
            lambda images: model(images, training=False),
            x,
            _EPS.value,
            _STEP_SIZE.value,
            _NUM_STEPS.value,
            np.inf,
            clip_min=0.0,
            clip_max=1.0,
            y=y,
            rand_init=True,
            sanity_checks=False,
        )
    )
    return lambda x, y: attack(tf.constant(x), tf.constant(y)).numpy()


def _foolbox(model):
    import foolbox

    fmodel = foolbox.TensorFlowModel(model, bounds=(0.0, 1.0))
    attack = foolbox.attacks.LinfPGD(
        abs_stepsize=_STEP_SIZE.value, steps=_NUM_STEPS.value, random_start=True
    )

    def run(x, y):
        # int64 labels: eagerpy 0.30 breaks on mixed label dtypes under numpy 2.
        _, clipped, _ = attack(
            fmodel, tf.constant(x), tf.constant(y, tf.int64), epsilons=_EPS.value
        )
        return clipped.numpy()

    return run


def _art(model):
    from art.attacks.evasion import ProjectedGradientDescent
    from art.estimators.classification import TensorFlowV2Classifier

    classifier = TensorFlowV2Classifier(
        model=model,
        nb_classes=10,
        input_shape=tuple(model.input_shape[1:]),
        clip_values=(0.0, 1.0),
        loss_object=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    attack = ProjectedGradientDescent(
        estimator=classifier,
        norm=np.inf,
        eps=_EPS.value,
        eps_step=_STEP_SIZE.value,
        max_iter=_NUM_STEPS.value,
        num_random_init=1,
        batch_size=_BATCH_SIZE.value,
        verbose=False,
    )
    return lambda x, y: attack.generate(x, y=y)


PEERS = ("cleverhans", "foolbox", "ART")


def _measure():
    """One process's table: `(implementation, images/s or None, accuracy)` rows."""
    model = _load_model()
    images, labels = evaluation.load_examples(
        "mnist", "test", num_examples=_BATCH_SIZE.value, data_dir=_DATA_DIR.value
    )

    def model_fn(x):
        return model(x, training=False)

    rows = [("clean (no attack)", None, attacks.accuracy(model_fn, images, labels))]
    implementations = [
        ("sq_keras.attacks.pgd (tf.function, float32)", lambda: _ours(model)),
        ("cleverhans 4.0 projected_gradient_descent (tf.function)", lambda: _cleverhans(model)),
        ("foolbox 3.3 LinfPGD", lambda: _foolbox(model)),
        ("ART 1.20 ProjectedGradientDescent", lambda: _art(model)),
        (
            "sq_keras.attacks.pgd (tf.function, mixed_bfloat16)",
            lambda: _ours(evaluation.to_policy(model, "mixed_bfloat16")),
        ),
    ]
    runs = []
    for name, make in implementations:
        try:
            run = make()
        except ImportError as e:
            print(f"skipped {name}: {e}", file=sys.stderr)
            continue
        x_adv = np.asarray(run(images, labels))  # Warm-up call: tracing, graph building.
        assert np.abs(x_adv - images).max() <= _EPS.value + 1e-5, name
        runs.append((name, run, [], attacks.accuracy(model_fn, x_adv, labels)))
    # Round-robin timing, so that a change in machine load hits every
    # implementation alike; the median call time is reported.
    for _ in range(_REPEATS.value):
        for _, run, seconds, _ in runs:
            start = time.perf_counter()
            run(images, labels)
            seconds.append(time.perf_counter() - start)
    for name, _, seconds, accuracy in runs:
        rows.append((name, len(images) / float(np.median(seconds)), accuracy))
    return rows


def _speedups(rows):
    """{implementation: images/s / the fastest peer's} for our rows."""
    peers = [speed for name, speed, _ in rows if speed and name.startswith(PEERS)]
    if not peers:
        return {}
    return {name: speed / max(peers) for name, speed, _ in rows if name.startswith("sq_keras")}


def _in_subprocesses(count):
    """Runs the benchmark in `count` fresh processes, one after another.

    The machine's speed drifts over minutes (docs/evaluation.md, Attack speed); every
    process times all implementations round-robin, so each one's speed-up is
    a paired measurement, and the spread over processes shows how far one
    run is from the typical one.
    """
    flags_given = [
        f"--{flag.name}={flag.value}"
        for flag in (_BATCH_SIZE, _NUM_STEPS, _EPS, _STEP_SIZE, _REPEATS, _INTER_OP_THREADS)
    ]
    flags_given += [f"--{f.name}={f.value}" for f in (_MODEL, _DATA_DIR) if f.value]
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(count):
            output = os.path.join(tmp, f"process_{i}.json")
            command = [sys.executable, os.path.abspath(__file__), *flags_given]
            command += ["--processes=1", f"--output={output}"]
            print(f"process {i + 1}/{count} ...", file=sys.stderr, flush=True)
            subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
            with open(output) as f:
                results.append(json.load(f))
    return results


def _summary_rows(results):
    """Per implementation: median, min and max images/s over processes."""
    names = [row["implementation"] for row in results[0]["rows"]]
    summary = []
    for name in names:
        speeds = [
            r["images_per_second"]
            for p in results
            for r in p["rows"]
            if r["implementation"] == name
        ]
        accuracies = [
            r["accuracy"] for p in results for r in p["rows"] if r["implementation"] == name
        ]
        speed = None if None in speeds else float(np.median(speeds))
        spread = None if speed is None else (min(speeds), max(speeds))
        summary.append((name, speed, float(np.median(accuracies)), spread))
    return summary


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
    if _PROCESSES.value < 1:
        raise app.UsageError(f"--processes must be >= 1, got {_PROCESSES.value}.")
    logging.set_verbosity(logging.WARNING)
    tf.get_logger().setLevel("ERROR")
    if _PROCESSES.value > 1:
        processes = _in_subprocesses(_PROCESSES.value)
        summary = _summary_rows(processes)
        speedups = [
            _speedups([(r["implementation"], r["images_per_second"], None) for r in p["rows"]])
            for p in processes
        ]
    else:
        if _INTER_OP_THREADS.value:
            tf.config.threading.set_inter_op_parallelism_threads(_INTER_OP_THREADS.value)
        processes = None
        summary = [(name, speed, accuracy, None) for name, speed, accuracy in _measure()]
        speedups = [_speedups([(n, s, a) for n, s, a, _ in summary])]

    print(
        f"PGD-{_NUM_STEPS.value}, eps={_EPS.value}, step={_STEP_SIZE.value}, "
        f"batch={_BATCH_SIZE.value}, median of {_REPEATS.value} calls"
        + (f", median over {_PROCESSES.value} processes" if processes else "")
        + f", model={_MODEL.value or 'untrained madry_mnist + SoftQuantization'}, "
        f"{os.cpu_count()} CPUs, TF {tf.__version__}, "
        f"inter-op threads {_INTER_OP_THREADS.value or 'default'}\n"
    )
    print("| implementation | images/s | x fastest peer | accuracy left (float32 model) |")
    print("|---|---|---|---|")
    for name, speed, accuracy, spread in summary:
        speed_text = "-" if speed is None else f"{speed:.1f}"
        if spread is not None:
            speed_text += f" ({spread[0]:.1f}-{spread[1]:.1f})"
        ratios = [s[name] for s in speedups if name in s]
        ratio_text = "-"
        if ratios:
            ratio_text = f"{np.median(ratios):.2f}"
            if len(ratios) > 1:
                ratio_text += f" ({min(ratios):.2f}-{max(ratios):.2f})"
        print(f"| {name} | {speed_text} | {ratio_text} | {100 * accuracy:.1f}% |")
    if _OUTPUT.value:
        payload = {
            "command": " ".join(["python", "benchmarks/attack_speed.py", *sys.argv[1:]]),
            "commit": provenance.environment()["git_commit"],
            "date": time.strftime("%Y-%m-%d %H:%M"),
            "machine": provenance.machine_description(),
            "load_average_at_end": os.getloadavg()[0],
            "tensorflow": tf.__version__,
            "inter_op_threads": _INTER_OP_THREADS.value,
            "rows": [
                {
                    "implementation": name,
                    "images_per_second": speed,
                    "accuracy": accuracy,
                    "speedup_over_fastest_peer": [s[name] for s in speedups if name in s] or None,
                    "images_per_second_min_max": spread,
                }
                for name, speed, accuracy, spread in summary
            ],
        }
        if processes:
            payload["processes"] = processes
        with open(_OUTPUT.value, "w") as f:
            json.dump(payload, f, indent=2)


if __name__ == "__main__":
    app.run(main)
