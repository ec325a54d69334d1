r"""The checks and timings of benchmarks/gpu_check.sh, written as one JSON file.

Trains MNIST for a few epochs under `mixed_float16` with `python -m apps.train`
(a `LossScaleOptimizer` scales the loss), then checks that the loss fell,
that loss scaling ran, and that the SavedModel export serves float32 images
as the trained Keras model predicts them; then times a `natural` and the
default (`sq_free`) train step side by side (`sq_keras.throughput`) and PGD-40
on the trained model. Exits 1 if a check fails (the JSON is written anyway).

Usage (normally through benchmarks/gpu_check.sh):
  python benchmarks/gpu_check.py --output=results/gpu_check.json
  python benchmarks/gpu_check.py --train_examples=1024 --eval_examples=256 \
      --attack_examples=64 --timed_steps=2 --output=/tmp/gpu_check.json   # CPU
"""

import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from absl import app  # noqa: E402
from absl import flags  # noqa: E402
from absl import logging  # noqa: E402

from sq_keras import attacks  # noqa: E402
from sq_keras import data  # noqa: E402
from sq_keras import evaluation  # noqa: E402
from sq_keras import export  # noqa: E402
from sq_keras import jsonio  # noqa: E402
from sq_keras import precision  # noqa: E402
from sq_keras import provenance  # noqa: E402
from sq_keras import throughput  # noqa: E402
from sq_keras import training  # noqa: E402

POLICY = "mixed_float16"

_OUTPUT = flags.DEFINE_string("output", "results/gpu_check.json", "Where the JSON goes.")
_EPOCHS = flags.DEFINE_integer("epochs", 2, "Training epochs.")
_TRAIN_EXAMPLES = flags.DEFINE_integer(
    "train_examples", None, "First N MNIST training images; default: all 60000."
)
_EVAL_EXAMPLES = flags.DEFINE_integer(
    "eval_examples", 10000, "Test images scored by training and served by the export."
)
_ATTACK_EXAMPLES = flags.DEFINE_integer("attack_examples", 1000, "Images per PGD-40 batch.")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 128, "Training and timed-step batch size.")
_TIMED_STEPS = flags.DEFINE_integer("timed_steps", 20, "Timed train steps per method and repeat.")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Timing repeats (the median is reported).")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "MNIST directory; default $SQ_KERAS_DATA_DIR.")


def _train(work_dir):
    """Runs apps.train as a user would; returns `(run_dir, export_dir, record)`."""
    run_dir, export_dir = os.path.join(work_dir, "run"), os.path.join(work_dir, "export")
    command = [
        sys.executable,
        "-m",
        "apps.train",
        "--dataset=mnist",
        f"--epochs={_EPOCHS.value}",
        f"--batch_size={_BATCH_SIZE.value}",
        f"--eval_examples={_EVAL_EXAMPLES.value}",
        f"--mixed_precision={POLICY}",
        f"--model_dir={run_dir}",
        f"--export_dir={export_dir}",
    ]
    if _TRAIN_EXAMPLES.value:
        command.append(f"--train_examples={_TRAIN_EXAMPLES.value}")
    if _DATA_DIR.value:
        command.append(f"--data_dir={os.path.abspath(_DATA_DIR.value)}")
    start = time.perf_counter()
    proc = subprocess.run(
        command,
        cwd=ROOT,
        env=data.environment_for_subprocess(os.environ),
        capture_output=True,
        text=True,
    )
    record = {
        "command": " ".join(command[1:]),
        "returncode": proc.returncode,
        "seconds": round(time.perf_counter() - start, 1),
        "log_tail": (proc.stdout + proc.stderr)[-2000:],
    }
    print(proc.stdout, flush=True)
    return run_dir, export_dir, record


def _check(passed, message, **numbers):
    return {"passed": bool(passed), "message": message, **numbers}


def check_loss_falls(history):
    """Every epoch's training loss is finite and the last is below the first."""
    losses = [epoch["train_loss"] for epoch in history]
    finite = all(math.isfinite(loss) for loss in losses)
    falls = finite and len(losses) > 1 and losses[-1] < losses[0]
    return _check(falls, f"train loss by epoch: {losses}", train_loss=losses)


def check_loss_scaling(run_dir):
    """The checkpoint holds the dynamic loss scale of a `LossScaleOptimizer`."""
    reader = tf.train.load_checkpoint(os.path.join(run_dir, "checkpoints"))
    names = [n for n in reader.get_variable_to_shape_map() if "dynamic_scale" in n]
    if not names:
        return _check(False, "no dynamic loss scale in the checkpoint: loss scaling was off")
    scale = float(reader.get_tensor(names[0]))
    ok = math.isfinite(scale) and scale >= 1.0
    return _check(ok, f"dynamic loss scale at the end of training: {scale:g}", loss_scale=scale)


def check_export_serves_float32(export_dir, model, images, labels):
    """The SavedModel takes float32 images and predicts what the Keras model predicts."""
    served = tf.saved_model.load(export.latest_version_dir(export_dir))
    outputs = served.signatures["serving_default"](images=tf.constant(images, tf.float32))
    logits, classes = outputs["logits"], outputs["classes"].numpy()
    expected = model.predict(images, batch_size=500, verbose=0).argmax(axis=-1)
    agreement = float(np.mean(classes == expected))
    accuracy = float(np.mean(classes == labels))
    ok = logits.dtype == tf.float32 and agreement >= 0.99 and accuracy > 0.2
    return _check(
        ok,
        f"served logits {logits.dtype.name}, accuracy {accuracy:.4f}, "
        f"{agreement:.2%} agreement with the Keras model",
        served_accuracy=accuracy,
        agreement=agreement,
    )


def time_steps():
    """Seconds per train step of `natural` and the default method, round-robin."""
    configs = {
        "natural": training.TrainConfig(method="natural", mixed_precision=POLICY),
        "default": training.TrainConfig(mixed_precision=POLICY),
    }
    rows = throughput.time_train_steps(
        configs,
        batch_size=_BATCH_SIZE.value,
        steps=_TIMED_STEPS.value,
        repeats=_REPEATS.value,
    )
    rows["default"]["method"] = configs["default"].resolved().method
    rows["default"]["cost_vs_natural"] = (
        rows["default"]["seconds_per_step"] / rows["natural"]["seconds_per_step"]
    )
    return rows


def time_pgd40(target, images, labels):
    """PGD-40 (eps 0.3, step 0.01) images/s on the trained model, and its accuracy."""
    attack = tf.function(
        lambda x, y: attacks.pgd(target.model_fn, x, y, eps=0.3, step_size=0.01, num_steps=40)
    )
    x, y = tf.constant(images), tf.constant(labels)
    x_adv = attack(x, y)  # tracing and warm-up
    seconds = []
    for _ in range(_REPEATS.value):
        start = time.perf_counter()
        x_adv = attack(x, y)
        x_adv.numpy()
        seconds.append(time.perf_counter() - start)
    predictions = tf.argmax(target.model_fn(x_adv), axis=-1).numpy()
    return {
        "batch_size": len(labels),
        "images_per_second": len(labels) / statistics.median(seconds),
        "all_repeats_seconds": seconds,
        "robust_accuracy": float(np.mean(predictions == labels)),
    }


def _devices():
    details = [
        tf.config.experimental.get_device_details(gpu).get("device_name", gpu.name)
        for gpu in tf.config.list_physical_devices("GPU")
    ]
    return details or ["CPU only: " + provenance.machine_description()]


def run_checks(work_dir):
    """Everything the JSON holds, in the order it is measured."""
    results = {"policy": POLICY}
    # Training first, in its own process: this one touches no GPU before it ends.
    run_dir, export_dir, results["train"] = _train(work_dir)
    results["devices"] = _devices()
    checks = results["checks"] = {}
    if results["train"]["returncode"] != 0:
        checks["training_ran"] = _check(False, "apps.train failed; see train.log_tail")
        return results
    with open(os.path.join(run_dir, "history.json")) as f:
        history = json.load(f)
    checks["loss_falls"] = check_loss_falls(history)
    checks["loss_scaling"] = check_loss_scaling(run_dir)
    images, labels = evaluation.load_examples(
        "mnist", "test", num_examples=_EVAL_EXAMPLES.value, data_dir=_DATA_DIR.value
    )
    model = keras.models.load_model(os.path.join(run_dir, "model.keras"), compile=False)
    checks["export_serves_float32"] = check_export_serves_float32(export_dir, model, images, labels)
    results["step_throughput"] = time_steps()
    target = evaluation.load_target(run_dir, policy=POLICY)
    n = _ATTACK_EXAMPLES.value
    results["pgd40"] = time_pgd40(target, images[:n], labels[:n])
    return results


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
    logging.set_verbosity(logging.WARNING)
    start = time.perf_counter()
    precision.set_policy(POLICY)
    with tempfile.TemporaryDirectory(prefix="gpu_check-") as work_dir:
        results = run_checks(work_dir)
    results["passed"] = all(check["passed"] for check in results["checks"].values())
    results["total_seconds"] = round(time.perf_counter() - start, 1)
    results["environment"] = provenance.environment()
    jsonio.write_json(_OUTPUT.value, results)
    for name, check in results["checks"].items():
        print(f"[{'passed' if check['passed'] else 'FAILED'}] {name}: {check['message']}")
    print(f"Wrote {_OUTPUT.value} ({results['total_seconds']:.0f}s)")
    return 0 if results["passed"] else 1


if __name__ == "__main__":
    app.run(lambda argv: sys.exit(main(argv)))
