"""Shared fixtures of the sq_keras.evaluation tests: tiny trained models,
MNIST examples, cached reports and minimal hand-made reports for the checks."""

import dataclasses
import functools
import os

import keras
import tensorflow as tf

from sq_keras import attacks
from sq_keras import evaluation
from sq_keras.evaluation import registry
from sq_keras.layers import SoftQuantization

SMALL = evaluation.AttackSettings(pgd_steps=10, restarts=1, square_queries=200)


def shift_to_grey(model_fn, x, y, *, eps, toward):
    """A toy gradient-free attack: every pixel eps towards `toward`."""
    del model_fn, y
    return tf.clip_by_value(x + eps * tf.sign(toward - x), 0.0, 1.0)


def toy_kwargs(eps, settings):
    del eps, settings
    return {"toward": 0.5}


TOY = evaluation.AttackSpec(
    "toy_grey",
    shift_to_grey,
    toy_kwargs,
    kind=registry.GRADIENT_FREE,
    presets=("strong", "toy"),
)


@functools.lru_cache(maxsize=None)
def examples(num=150):
    return evaluation.load_examples(
        "mnist", "test", num_examples=num, data_dir=os.environ.get("SQ_KERAS_DATA_DIR")
    )


@functools.lru_cache(maxsize=None)
def trained_model(kind):
    """A tiny CNN trained 2 epochs on 5,000 MNIST images.

    "masked" rounds its input to 10 levels at inference (zero gradient almost
    everywhere, not robust); "soft" has a trainable soft quantizer.
    """
    keras.utils.set_random_seed(0)
    inputs = keras.Input((28, 28, 1), name="images")
    x = inputs
    if kind == "masked":
        x = SoftQuantization(
            num_thresholds=9, hard=True, trainable_thresholds=False, name="soft_quantization"
        )(x)
    elif kind == "soft":
        x = SoftQuantization(num_thresholds=1, alpha=10.0, name="soft_quantization")(x)
    x = keras.layers.Conv2D(16, 3, strides=2, activation="relu", name="conv1")(x)
    x = keras.layers.Conv2D(32, 3, strides=2, activation="relu", name="conv2")(x)
    x = keras.layers.Flatten(name="flatten")(x)
    x = keras.layers.Dense(64, activation="relu", name="fc1")(x)
    model = keras.Model(inputs, keras.layers.Dense(10, name="logits")(x))
    model.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    train_images, train_labels = evaluation.load_examples(
        "mnist", "train", num_examples=5000, data_dir=os.environ.get("SQ_KERAS_DATA_DIR")
    )
    model.fit(train_images, train_labels, batch_size=64, epochs=2, verbose=0)
    return model


def target_of(model, path="memory"):
    return evaluation.Target(
        model_fn=lambda images: model(images, training=False),
        path=path,
        keras_model=model,
        has_quantizer=attacks.has_quantizer(model),
    )


@functools.lru_cache(maxsize=None)
def report_of(kind, attacks=("strong",)):
    images, labels = examples()
    return evaluation.evaluate(
        target_of(trained_model(kind)),
        images,
        labels,
        attacks=evaluation.resolve_attacks(list(attacks)),
        eps_values=[0.3],
        settings=SMALL,
        num_classes=10,
        batch_size=75,
        progress=False,
        source=target_of(trained_model("natural")) if kind != "natural" else None,
    )


def range_report(
    start, stop, attacks, *, settings, model_sha256, num_examples, batch_size, eps=0.3, **options
):
    """The "soft" model's report over test[start:stop] of the first `num_examples`
    test images, with the metadata apps.evaluate records (for merges and
    combinations). `options` go to `evaluation.evaluate`."""
    images, labels = examples(num_examples)
    report = evaluation.evaluate(
        target_of(trained_model("soft")),
        images[start:stop],
        labels[start:stop],
        attacks=evaluation.resolve_attacks(list(attacks)),
        eps_values=[eps],
        settings=settings,
        num_classes=10,
        batch_size=batch_size,
        progress=False,
        **options,
    )
    report.metadata.update(
        dataset="mnist",
        split=f"test[{start}:{stop}]",
        seed=settings.seed,
        mixed_precision="float32",
        model_sha256=model_sha256,
    )
    return report


def fake_report(accuracies, *, eps_values=(0.3, 0.5), worst=None, zero=0.0, quantizer=False):
    """A minimal `Report` for the checks: {attack: {eps: accuracy}}."""
    attacks_run = {}
    for name, by_eps in accuracies.items():
        attacks_run[name] = {
            "settings": {"doubles": "pgd"} if name == evaluation.DOUBLED else {},
            "results": {evaluation.eps_key(e): {"robust_accuracy": a} for e, a in by_eps.items()},
        }
    worst = worst or {
        e: min(by_eps[e] for by_eps in accuracies.values() if e in by_eps) for e in eps_values
    }
    return evaluation.Report(
        eps=eps_values[0],
        eps_values=list(eps_values),
        num_classes=10,
        has_quantizer=quantizer,
        attacks=attacks_run,
        worst_case_accuracy_by_eps={evaluation.eps_key(e): a for e, a in worst.items()},
        zero_gradient_examples_percent=zero,
        zero_gradient_entries_percent=zero,
    )


class CallLog:
    """Batch sizes an attack was called on; raises once at call `fail_at`."""

    def __init__(self, fail_at=None):
        self.sizes = []
        self.fail_at = fail_at

    def __call__(self, x):
        self.sizes.append(len(x))
        if len(self.sizes) == self.fail_at:
            raise RuntimeError("killed")
        return x


def logged(spec, log):
    """Registry entry `spec` whose attack first records its batch in `log`."""
    attack = spec.attack

    def logged_attack(model_fn, x, y, **kwargs):
        seen = tf.numpy_function(log, [x], tf.float32, stateful=True)
        seen.set_shape(x.shape)
        return attack(model_fn, seen, y, **kwargs)

    logged_attack.__name__ = attack.__name__
    return dataclasses.replace(spec, attack=logged_attack)


def logged_registry(**logs):
    """A registry of the named entries of `REGISTRY`, each logged in its `CallLog`."""
    return evaluation.Registry([logged(evaluation.REGISTRY[n], log) for n, log in logs.items()])


def without_timings(report):
    """`report.to_json()` without the wall-clock fields."""
    data = report.to_json()
    for entry in data["attacks"].values():
        for result in entry["results"].values():
            result.pop("seconds")
            result.pop("images_per_second")
    return data
