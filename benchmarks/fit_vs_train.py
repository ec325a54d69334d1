r"""The default recipe through `RobustModel.fit` against `apps.train`, on held-out images.

For each seed, trains MNIST's default recipe (`sq_free`, Madry CNN, 10
epochs, batch 128, Adam with the rate x0.1 for the second half, alpha 10 ->
100) twice on the first `--train_examples` training images: with
`python -m apps.train` (its own run directory and pipeline) and with a user's
`sq_keras.RobustModel(..., method="sq_free").fit` on the same model,
schedule and callbacks. Then attacks both with `python -m apps.evaluate` on
`--holdout` training images that neither trained on, with
`--attacks` (default: the recipe screen's BPDA APGD-CE + APGD-DLR), and
reports each model's worst case, clean accuracy and training seconds.
The spread over seeds of each way says whether the two differ by more than
chance.

Usage:
  SQ_KERAS_DATA_DIR=../shared/data python benchmarks/fit_vs_train.py --seeds=0,1 \
      --output=results/mnist_fit_vs_train.json
"""

import math
import os
import subprocess
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, _ROOT)

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
from sq_keras import training  # noqa: E402

_SEEDS = flags.DEFINE_list("seeds", ["0", "1"], "Seeds; each trains both ways.")
_WAYS = flags.DEFINE_list("ways", ["apps.train", "fit"], "Which ways to train: apps.train, fit.")
_EPOCHS = flags.DEFINE_integer("epochs", 10, "Training epochs.")
_TRAIN_EXAMPLES = flags.DEFINE_integer("train_examples", 50_000, "First N training images.")
_HOLDOUT = flags.DEFINE_string("holdout", "train[50000:50500]", "Images attacked.")
_ATTACKS = flags.DEFINE_string(
    "attacks", "bpda_identity:apgd_ce,bpda_identity:apgd_dlr", "apps.evaluate --attacks."
)
_WORKDIR = flags.DEFINE_string("workdir", "runs/fit_vs_train", "Models and reports go here.")
_OUTPUT = flags.DEFINE_string("output", None, "Write the results as JSON here.")


def _run(command):
    start = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", *command], cwd=_ROOT, capture_output=True)
    if result.returncode:
        raise RuntimeError(f"{' '.join(command)} failed:\n{result.stderr.decode()[-3000:]}")
    return time.perf_counter() - start


def _config(seed):
    return training.TrainConfig(
        dataset="mnist", method="sq_free", epochs=_EPOCHS.value, seed=seed
    ).resolved()


def train_with_apps_train(seed, out_dir):
    """`python -m apps.train` with the default recipe; returns (model path, seconds)."""
    seconds = _run(
        [
            "apps.train",
            "--dataset=mnist",
            f"--epochs={_EPOCHS.value}",
            f"--train_examples={_TRAIN_EXAMPLES.value}",
            f"--seed={seed}",
            f"--model_dir={out_dir}",
            f"--export_dir={out_dir}_export",
        ]
    )
    return os.path.join(out_dir, "model.keras"), seconds


def train_with_fit(seed, out_dir):
    """The same recipe through `RobustModel.fit`; returns (model path, seconds)."""
    config = _config(seed)
    raw, labels = data.load_arrays("mnist", f"train[:{_TRAIN_EXAMPLES.value}]")
    images = raw.astype(np.float32) / 255.0
    keras.utils.set_random_seed(seed)
    model = models.build(
        config.model,
        input_shape=(28, 28, 1),
        num_classes=10,
        soft_quantization=training.quantizer_settings(config),
    )
    robust = sq_keras.RobustModel(model, method="sq_free", eps=config.eps, seed=seed)
    steps = _EPOCHS.value * math.ceil(len(images) / config.batch_size)
    robust.compile(optimizer=keras.optimizers.Adam(training.learning_rate(config, steps)))
    schedule = sq_keras.callbacks.AlphaSchedule(
        start=config.alpha_start, end=config.alpha_end, kind=config.alpha_schedule
    )
    start = time.perf_counter()
    robust.fit(
        images,
        labels,
        batch_size=config.batch_size,
        epochs=_EPOCHS.value,
        callbacks=[schedule],
        verbose=2,
    )
    seconds = time.perf_counter() - start
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, "model.keras")
    robust.classifier.save(path)
    return path, seconds


def attack(model_path, report_path):
    """apps.evaluate on the held-out images; returns (clean %, worst case %)."""
    _run(
        [
            "apps.evaluate",
            f"--model={model_path}",
            f"--split={_HOLDOUT.value}",
            f"--attacks={_ATTACKS.value}",
            f"--output={report_path}",
            "--overwrite",
            "--noprogress",
        ]
    )
    report = jsonio.read_json(report_path)
    return report["clean_accuracy"], report["worst_case_accuracy"]


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
    policy = precision.set_policy("auto")
    rows = []
    for seed in map(int, _SEEDS.value):
        ways = (("apps.train", train_with_apps_train), ("fit", train_with_fit))
        for way, train in (w for w in ways if w[0] in _WAYS.value):
            out_dir = os.path.join(_WORKDIR.value, f"{way.replace('.', '_')}_seed{seed}")
            path, seconds = train(seed, out_dir)
            clean, worst = attack(path, os.path.join(out_dir, "holdout_report.json"))
            rows.append(
                {"way": way, "seed": seed, "train_seconds": seconds, "clean": clean, "worst": worst}
            )
            print(
                f"{way} seed {seed}: clean {clean:.1f}%, worst case {worst:.1f}%, {seconds:.0f} s",
                flush=True,
            )
    if _OUTPUT.value:
        jsonio.write_json(
            _OUTPUT.value,
            {
                "command": " ".join(sys.argv),
                "policy": policy,
                "holdout": _HOLDOUT.value,
                "attacks": _ATTACKS.value,
                "epochs": _EPOCHS.value,
                "train_examples": _TRAIN_EXAMPLES.value,
                "rows": rows,
                "environment": provenance.environment(),
            },
        )


if __name__ == "__main__":
    app.run(main)
