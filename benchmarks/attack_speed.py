r"""PGD speed of sq_keras.attacks against cleverhans, foolbox and ART.

Runs l-inf PGD (random start, cross-entropy, same eps/step/steps) on one model,
one batch and one machine, and prints a Markdown table of images/s (median of
--repeats calls made round-robin across implementations, after one untimed
warm-up call each) and of the accuracy each implementation leaves.

Usage:
  python benchmarks/attack_speed.py --model=runs/mnist_sq_noisy/model.keras \
      --batch_size=100 --num_steps=40 --repeats=3

Without --model the Madry et al. MNIST CNN with a soft-quantization layer is
built with random weights (speed does not depend on the weights; accuracies
then mean nothing). cleverhans 4.0, foolbox 3.3 and
adversarial-robustness-toolbox 1.20 must be installed; a missing one is
reported and skipped.
"""

import json
import os
import sys
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
from sq_keras import throughput  # noqa: E402
from sq_keras import training  # noqa: E402

_MODEL = flags.DEFINE_string("model", None, "A .keras model; default: untrained madry_mnist.")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 100, "Images per batch.")
_NUM_STEPS = flags.DEFINE_integer("num_steps", 40, "PGD steps.")
_EPS = flags.DEFINE_float("eps", 0.3, "l-inf radius.")
_STEP_SIZE = flags.DEFINE_float("step_size", 0.01, "PGD step size.")
_REPEATS = flags.DEFINE_integer("repeats", 5, "Timed calls per implementation.")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "MNIST directory; default $SQ_KERAS_DATA_DIR.")
_OUTPUT = flags.DEFINE_string("output", None, "Optional JSON file for the results.")
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


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
    logging.set_verbosity(logging.WARNING)
    tf.get_logger().setLevel("ERROR")
    if _INTER_OP_THREADS.value:
        tf.config.threading.set_inter_op_parallelism_threads(_INTER_OP_THREADS.value)
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
            lambda: _ours(evaluation._to_policy(model, "mixed_bfloat16")),
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

    print(
        f"PGD-{_NUM_STEPS.value}, eps={_EPS.value}, step={_STEP_SIZE.value}, "
        f"batch={_BATCH_SIZE.value}, median of {_REPEATS.value} calls, "
        f"model={_MODEL.value or 'untrained madry_mnist + SoftQuantization'}, "
        f"{os.cpu_count()} CPUs, TF {tf.__version__}, "
        f"inter-op threads {_INTER_OP_THREADS.value or 'default'}\n"
    )
    print("| implementation | images/s | accuracy left (float32 model) |")
    print("|---|---|---|")
    for name, speed, accuracy in rows:
        speed_text = "-" if speed is None else f"{speed:.1f}"
        print(f"| {name} | {speed_text} | {100 * accuracy:.1f}% |")
    if _OUTPUT.value:
        commit = training.environment()["git_commit"]
        payload = {
            "command": " ".join(["python", "benchmarks/attack_speed.py", *sys.argv[1:]]),
            "commit": commit,
            "date": time.strftime("%Y-%m-%d %H:%M"),
            "machine": throughput.machine_description(),
            "load_average_at_end": os.getloadavg()[0],
            "tensorflow": tf.__version__,
            "inter_op_threads": _INTER_OP_THREADS.value,
            "rows": [
                {"implementation": n, "images_per_second": s, "accuracy": a} for n, s, a in rows
            ],
        }
        with open(_OUTPUT.value, "w") as f:
            json.dump(payload, f, indent=2)


if __name__ == "__main__":
    app.run(main)
