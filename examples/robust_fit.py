r"""Makes your own Keras CNN robust with `sq_keras.RobustModel` and `fit`.

Trains a small CNN on MNIST with `apps.train`'s default recipe: soft
quantization + free adversarial training through the quantizer's BPDA
stand-in (`sq_free`: each example's perturbation kept across epochs in the
model's memory, 1.25 eps per visit, the learning rate x0.1 for the second
half), attacks it with `sq_keras.evaluation` and exports it as a
TensorFlow-Serving SavedModel. `--method=sq_fgsm` trains the earlier default.

Usage:
  python examples/robust_fit.py --data_dir=../shared/data
  python examples/robust_fit.py --train_examples=2000 --test_examples=200 --epochs=2 \
      --output_dir=/tmp/robust_fit

Writes to --output_dir: `robust.keras` (the RobustModel, compiled: `fit` can
go on after `keras.models.load_model`), `classifier.keras` (the trained
classifier, quantizer included), `evaluation.json` (+ figures), `logs/`
(TensorBoard: loss, accuracy, alpha, grad_l1) and `export/1/` (the
SavedModel).
"""

import argparse
import math
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import keras  # noqa: E402
import numpy as np  # noqa: E402

import sq_keras  # noqa: E402
from sq_keras import data  # noqa: E402
from sq_keras import evaluation  # noqa: E402
from sq_keras import export  # noqa: E402
from sq_keras import training  # noqa: E402
from sq_keras.robust_model import robust_methods  # noqa: E402


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--train_examples", type=int, default=10000, help="MNIST training images.")
    parser.add_argument("--test_examples", type=int, default=500, help="Test images attacked.")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--batch_size", type=int, default=128)
    parser.add_argument("--eps", type=float, default=0.3, help="l-inf radius, pixel units.")
    parser.add_argument("--method", default="sq_free", choices=robust_methods())
    parser.add_argument("--pgd_steps", type=int, default=40, help="Steps of the PGD attacks.")
    parser.add_argument(
        "--attacks",
        default="fgsm,pgd,bpda_identity",
        help="Comma-separated attacks or presets of sq_keras.evaluation (e.g. fast).",
    )
    parser.add_argument("--output_dir", default="runs/robust_fit")
    parser.add_argument("--data_dir", default=None, help="Default: $SQ_KERAS_DATA_DIR.")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def my_cnn():
    """Your own model: any functional Keras model from images in [0, 1] to logits."""
    inputs = keras.Input((28, 28, 1))
    x = keras.layers.Conv2D(32, 3, activation="relu")(inputs)
    x = keras.layers.MaxPooling2D()(x)
    x = keras.layers.Conv2D(64, 3, activation="relu")(x)
    x = keras.layers.MaxPooling2D()(x)
    x = keras.layers.Flatten()(x)
    x = keras.layers.Dense(128, activation="relu")(x)
    return keras.Model(inputs, keras.layers.Dense(10, dtype="float32")(x), name="my_cnn")


def load_mnist(split, n, data_dir):
    images, labels = data.load_arrays("mnist", f"{split}[:{n}]", data_dir=data_dir)
    return images.astype(np.float32) / 255.0, labels.astype(np.int64)


def recipe_learning_rate(args, num_train):
    """MNIST's default schedule (Adam 1e-3, x0.1 for the second half) over this run."""
    config = training.TrainConfig(dataset="mnist", method=args.method, eps=args.eps).resolved()
    steps = args.epochs * math.ceil(num_train / args.batch_size)
    return training.learning_rate(config, steps)


def train(args, x_train, y_train, x_test, y_test):
    """The robust `fit`: the quantizer is annealed and grad_l1 logged every epoch."""
    keras.utils.set_random_seed(args.seed)
    model = sq_keras.RobustModel(
        my_cnn(), method=args.method, eps=args.eps, add_quantizer=True, seed=args.seed
    )
    optimizer = keras.optimizers.Adam(recipe_learning_rate(args, len(x_train)))
    model.compile(optimizer=optimizer, metrics=["accuracy"])
    callbacks = [
        sq_keras.callbacks.AlphaSchedule(start=10.0, end=100.0),
        sq_keras.callbacks.GradientNormLogger(x_test[:256], y_test[:256]),
        keras.callbacks.TensorBoard(os.path.join(args.output_dir, "logs")),
    ]
    model.fit(
        x_train,
        y_train,
        batch_size=args.batch_size,
        epochs=args.epochs,
        validation_data=(x_test, y_test),
        callbacks=callbacks,
        verbose=2,
    )
    return model


def attack(args, classifier_path, x_test, y_test):
    """Robust accuracy under `--attacks` at `--eps`, with the masking checks."""
    target = evaluation.load_target(classifier_path)
    report = evaluation.evaluate(
        target,
        x_test,
        y_test,
        attacks=evaluation.resolve_attacks(args.attacks.split(","), target=target),
        eps_values=[args.eps],
        settings=evaluation.AttackSettings(pgd_steps=args.pgd_steps, seed=args.seed),
        num_classes=10,
        progress=False,
    )
    evaluation.write_report(report, os.path.join(args.output_dir, "evaluation.json"))
    return report


def main(argv=None):
    args = parse_args(argv)
    os.makedirs(args.output_dir, exist_ok=True)
    x_train, y_train = load_mnist("train", args.train_examples, args.data_dir)
    x_test, y_test = load_mnist("test", args.test_examples, args.data_dir)

    model = train(args, x_train, y_train, x_test, y_test)
    model.save(os.path.join(args.output_dir, "robust.keras"))
    classifier_path = os.path.join(args.output_dir, "classifier.keras")
    model.classifier.save(classifier_path)

    report = attack(args, classifier_path, x_test, y_test)
    print(evaluation.format_table(report))
    exported = export.export_saved_model(
        model.classifier,
        os.path.join(args.output_dir, "export"),
        metadata={"method": args.method, "eps": args.eps, "clean_accuracy": report.clean_accuracy},
    )
    print(f"Exported SavedModel to {exported}")


if __name__ == "__main__":
    main()
