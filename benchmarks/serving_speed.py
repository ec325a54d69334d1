r"""Prediction speed of a run's SavedModel exported in each policy, and what it predicts.

`python -m apps.train --export_policy` exports the graph in the run's training
policy (`training`, e.g. mixed_bfloat16) or in float32, the graph that
`apps.evaluate` attacks. This script exports a run's `model.keras` both ways,
loads both SavedModels in one process and times their `serving_default`
signature on real test digits, round-robin (every repeat times each export at
each batch size in turn, so drifts of a shared machine hit both alike):

  python -m apps.train --dataset=mnist --epochs=1 --model_dir=/tmp/serving_run \
      --export_dir=/tmp/serving_run_export
  python benchmarks/serving_speed.py --model_dir=/tmp/serving_run \
      --output=results/mnist_serving_speed.json

It also counts the images on which each export's classes differ from the
evaluated float32 model's, clean and after PGD on that model (`--pgd_steps`).
"""

import os
import statistics
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

import sq_keras.layers  # noqa: E402,F401  (registers SoftQuantization for load_model)
from sq_keras import attacks  # noqa: E402
from sq_keras import evaluation  # noqa: E402
from sq_keras import export  # noqa: E402
from sq_keras import jsonio  # noqa: E402
from sq_keras import provenance  # noqa: E402

_MODEL_DIR = flags.DEFINE_string("model_dir", None, "A training run's --model_dir.")
_BATCH_SIZES = flags.DEFINE_list("batch_sizes", ["1", "256"], "Images per call.")
_IMAGES_PER_TURN = flags.DEFINE_integer(
    "images_per_turn", 2048, "Images each timed turn predicts (at least 3 calls).", lower_bound=1
)
_REPEATS = flags.DEFINE_integer("repeats", 5, "Round-robin rounds.", lower_bound=1)
_EXAMPLES = flags.DEFINE_integer(
    "examples", 1000, "Test images for the agreement counts.", lower_bound=1
)
_PGD_STEPS = flags.DEFINE_integer("pgd_steps", 40, "PGD steps (step 0.01) at eps.", lower_bound=1)
_OUTPUT = flags.DEFINE_string("output", None, "Write the results as JSON here.")

flags.mark_flag_as_required("model_dir")

_RUN_KEYS = ("dataset", "method", "epochs", "train_examples", "mixed_precision")


def _exports(model, config, workdir):
    """`{--export_policy value: (its Keras policy, the loaded serving_default)}`."""
    rebuilt = {"training": None, "float32": "float32"}
    exports = {}
    for name, policy in rebuilt.items():
        path = export.export_saved_model(model, os.path.join(workdir, name), policy=policy)
        signature = tf.saved_model.load(path).signatures["serving_default"]
        exports[name] = (policy or config["mixed_precision"], signature)
    return exports


def _turn_seconds(signature, batch, calls):
    """Seconds per call of `calls` calls on `batch`, after one untimed call."""
    signature(images=batch)["classes"].numpy()
    start = time.perf_counter()
    for _ in range(calls):
        out = signature(images=batch)
    out["classes"].numpy()  # waits for the last call
    return (time.perf_counter() - start) / calls


def _speeds(exports, images, batch_sizes, repeats, images_per_turn):
    """`{(export, batch size): [images/s of each repeat]}`, timed round-robin."""
    speeds = {(name, b): [] for name in exports for b in batch_sizes}
    for repeat in range(repeats):
        for b in batch_sizes:
            batch = tf.constant(images[:b])
            calls = max(3, images_per_turn // b)
            for name, (_, signature) in exports.items():
                speeds[name, b].append(b / _turn_seconds(signature, batch, calls))
        print(f"round {repeat + 1}/{repeats} done", flush=True)
    return speeds


def _agreement(exports, evaluated, images, labels, eps, pgd_steps):
    """Per export, the images whose served classes differ from the evaluated model's."""
    adversarial = attacks.pgd(
        evaluated.model_fn, images, labels, eps=eps, step_size=0.01, num_steps=pgd_steps, seed=0
    )
    counts = {}
    for kind, x in (("clean", images), ("pgd", adversarial)):
        expected = np.argmax(evaluated.model_fn(x), -1)
        counts[kind] = {
            "evaluated_accuracy": float(np.mean(expected == labels)),
            **{
                name: int(np.sum(signature(images=x)["classes"].numpy() != expected))
                for name, (_, signature) in exports.items()
            },
        }
    return counts


def _rows(exports, speeds):
    rows = []
    for (name, b), values in speeds.items():
        rows.append(
            {
                "export_policy": name,
                "policy": exports[name][0],
                "batch_size": b,
                "images_per_second_median": statistics.median(values),
                "images_per_second_min": min(values),
                "images_per_second_max": max(values),
            }
        )
    return rows


def _run_record(config):
    """What the JSON records of the run whose model is served."""
    commit = config.get("environment", {}).get("git_commit")
    return {**{k: config.get(k) for k in _RUN_KEYS}, "git_commit": commit}


def _print_table(rows):
    print("| --export_policy | policy | batch | images/s (median) | min-max |")
    print("|---|---|---|---|---|")
    for row in rows:
        print(
            f"| {row['export_policy']} | {row['policy']} | {row['batch_size']} "
            f"| {row['images_per_second_median']:.0f} "
            f"| {row['images_per_second_min']:.0f}-{row['images_per_second_max']:.0f} |"
        )


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
    logging.set_verbosity(logging.WARNING)
    tf.get_logger().setLevel("ERROR")
    batch_sizes = [int(b) for b in _BATCH_SIZES.value]
    print(f"Machine: {provenance.machine_description()}", flush=True)
    evaluated = evaluation.load_target(_MODEL_DIR.value, policy="float32")
    config = evaluated.config
    model = keras.models.load_model(os.path.join(_MODEL_DIR.value, "model.keras"), compile=False)
    count = max(_EXAMPLES.value, max(batch_sizes))
    images, labels = evaluation.load_examples(config["dataset"], "test", num_examples=count)
    with tempfile.TemporaryDirectory() as workdir:
        exports = _exports(model, config, workdir)
        speeds = _speeds(exports, images, batch_sizes, _REPEATS.value, _IMAGES_PER_TURN.value)
        n = _EXAMPLES.value
        agreement = _agreement(
            exports, evaluated, images[:n], labels[:n], config["eps"], _PGD_STEPS.value
        )
    rows = _rows(exports, speeds)
    _print_table(rows)
    print(f"Images whose served classes differ from the evaluated float32 model's: {agreement}")
    if _OUTPUT.value:
        jsonio.write_json(
            _OUTPUT.value,
            {
                "command": " ".join(["python", "benchmarks/serving_speed.py", *sys.argv[1:]]),
                "run": _run_record(config),
                "repeats": _REPEATS.value,
                "images_per_turn": _IMAGES_PER_TURN.value,
                "rows": rows,
                "classes_differing_from_evaluated": {"examples": n, **agreement},
                "environment": provenance.environment(),
                "date": time.strftime("%Y-%m-%d"),
            },
        )
        print(f"Wrote {_OUTPUT.value}")


if __name__ == "__main__":
    app.run(main)
