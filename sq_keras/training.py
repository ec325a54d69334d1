"""Training loop shared by every method.

A method names three things: whether the model has a `SoftQuantization`
front, whether the data pipeline adds noise, and which train step runs. All
methods share the model, data pipeline, optimiser, logging, checkpoints and
export, so their costs and results compare directly.

```python
config = TrainConfig(dataset="mnist", method="sq_noisy", epochs=10,
                     model_dir="runs/sq", export_dir="saved_models/mnist_sq_noisy",
                     data_dir="../shared/data")
results = train(config)   # resumes from runs/sq/checkpoints if present
```

Layout of `model_dir`:

* `config.json`: the resolved configuration (a rerun must match it);
* `checkpoints/`: one `tf.train.Checkpoint` per epoch (model, optimiser,
  epoch counter), the run resumes from the latest;
* `history.json`: per-epoch metrics and wall times, written every epoch;
* `logs/`: TensorBoard events (loss, accuracy, `grad_l1`, alpha, thresholds);
* `model.keras`: the final Keras model, quantizer included, for white-box
  evaluation;
* `results.json`: final metrics.
"""

import dataclasses
import math
import os
import shutil
import sys
import tempfile
import time

import keras
import numpy as np
import tensorflow as tf

from sq_keras import attacks
from sq_keras import data
from sq_keras import distribute
from sq_keras import export
from sq_keras import jsonio
from sq_keras import layers
from sq_keras import models
from sq_keras import provenance


class TrainingError(RuntimeError):
    """The run cannot start or cannot go on; the message says why."""


@dataclasses.dataclass(frozen=True)
class Method:
    """How one training method differs from the others.

    Attributes:
        quantizer: Whether the model gets a `SoftQuantization` front.
        noise: Whether the noise stage perturbs training batches.
        step: Key of `STEP_BUILDERS`.
        description: One line for help texts.
    """

    quantizer: bool
    noise: bool
    step: str
    description: str


def _train_step(model, optimizer, compute_loss, strategy):
    """A `tf.function` step minimising the batch mean of `compute_loss`.

    `compute_loss(images, labels, seed)` returns `(per_example_losses,
    logits)`; `seed` is an integer tensor for stateless randomness, distinct
    per step and per replica. The step runs under `strategy.run`: each replica
    scales its loss by the global batch size, so gradients summed over
    replicas are those of the global batch mean.

    Returns:
        `step(images, labels) -> (loss_sum, num_correct, num_examples)`, each
        summed over replicas; `images`/`labels` may be distributed values.
    """

    def replica_step(images, labels):
        context = tf.distribute.get_replica_context()
        seed = tf.cast(optimizer.iterations, tf.int64) * 1024 + tf.cast(
            context.replica_id_in_sync_group, tf.int64
        )
        local_n = tf.shape(labels)[0]
        global_n = context.all_reduce("SUM", local_n)
        with tf.GradientTape() as tape:
            per_example, logits = compute_loss(images, labels, seed)
            loss = tf.reduce_sum(per_example) / tf.cast(global_n, tf.float32)
            scaled = optimizer.scale_loss(loss)
        grads = tape.gradient(scaled, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        predicted = tf.argmax(logits, axis=-1, output_type=labels.dtype)
        correct = tf.reduce_sum(tf.cast(tf.equal(predicted, labels), tf.int32))
        return tf.reduce_sum(per_example), correct, local_n

    @tf.function(jit_compile=False, reduce_retracing=True)
    def step(images, labels):
        outputs = strategy.run(replica_step, args=(images, labels))
        return tuple(strategy.reduce("SUM", value, axis=None) for value in outputs)

    return step


def _cross_entropy(labels, logits):
    return attacks.cross_entropy_loss(tf.cast(logits, tf.float32), labels)


def build_standard_step(model, optimizer, config, strategy):
    """Cross-entropy on the batch as it comes from the pipeline."""
    del config

    def compute_loss(images, labels, seed):
        del seed
        logits = model(images, training=True)
        return _cross_entropy(labels, logits), logits

    return _train_step(model, optimizer, compute_loss, strategy)


def _attack_model_fn(model, config):
    """What the training attack differentiates: the model, or its BPDA copy."""
    if layers.quantization_layers(model):
        return attacks.bpda(model, stand_in=config.stand_in)
    return lambda images: model(images, training=False)


def _build_adversarial_step(model, optimizer, config, strategy, *, num_steps, step_size):
    """Cross-entropy on l-inf PGD examples (random start) crafted every step.

    With `config.adv_fraction < 1` only the first part of each batch is
    attacked; the rest gets `config.noise` of size `config.noise_scale`.
    """
    model_fn = _attack_model_fn(model, config)

    def compute_loss(images, labels, seed):
        batch = tf.cast(tf.shape(images)[0], tf.float32)
        n_adv = tf.cast(tf.math.ceil(config.adv_fraction * batch), tf.int32)
        eps, size = config.eps, step_size
        if config.eps_warmup_steps:
            # Linear ramp of the radius (and, in proportion, of the step) over
            # the first optimizer steps: at full eps from the first step,
            # adversarial training of a fresh MNIST model can stall at chance
            # (Wong and Kolter 2018, appendix B.2).
            done = tf.cast(optimizer.iterations + 1, tf.float32)
            ramp = tf.minimum(1.0, done / float(config.eps_warmup_steps))
            eps, size = config.eps * ramp, step_size * ramp
        x_adv = attacks.pgd(
            model_fn,
            images[:n_adv],
            labels[:n_adv],
            eps=eps,
            step_size=size,
            num_steps=num_steps,
            seed=seed + config.seed * 1_000_003,
            # The last iterate, as in Madry et al. and Wong et al.; skips the
            # evaluator's bookkeeping forward pass.
            keep_most_damaging=False,
        )
        rest = data.noise_batch(
            images[n_adv:],
            kind=config.noise,
            scale=config.noise_scale,
            seed=tf.stack([tf.constant(config.seed, tf.int64), seed]),
        )
        logits = model(tf.concat([x_adv, rest], axis=0), training=True)
        return _cross_entropy(labels, logits), logits

    return _train_step(model, optimizer, compute_loss, strategy)


def build_pgd_step(model, optimizer, config, strategy):
    """PGD adversarial training (Madry et al. 2018)."""
    return _build_adversarial_step(
        model,
        optimizer,
        config,
        strategy,
        num_steps=config.pgd_steps,
        step_size=config.pgd_step_size,
    )


def build_fgsm_rs_step(model, optimizer, config, strategy):
    """One signed-gradient step of `config.fgsm_step_size` from a random start.

    Wong, Rice and Kolter 2020, "Fast is better than free". Through the
    quantizer's BPDA stand-in when the model has one.
    """
    return _build_adversarial_step(
        model, optimizer, config, strategy, num_steps=1, step_size=config.fgsm_step_size
    )


def build_gradnorm_step(model, optimizer, config, strategy):
    """The first-order objective computed directly by double backpropagation.

    `CE + weight * eps * ||grad_x CE(x, y)||_1` per example, the linearisation
    of `max_{||d||_inf <= eps} L(x + d)` that the soft-quantization method
    minimises implicitly (Zheng, Chen and Ren, arXiv 1810.05665).
    """

    def compute_loss(images, labels, seed):
        del seed
        loss, logits, _ = gradnorm_loss(
            model, images, labels, eps=config.eps, weight=config.gradnorm_weight
        )
        return loss, logits

    return _train_step(model, optimizer, compute_loss, strategy)


def gradnorm_loss(model, images, labels, *, eps, weight, training=True):
    """Per-example `CE + weight * eps * ||grad_x CE||_1`, by double backprop.

    Returns:
        `(per_example_loss, logits, l1)`, with `l1` the per-example l1 norm
        of the input gradient of the cross-entropy (differentiable).
    """
    per_example, logits, grad = attacks.loss_gradient(
        lambda x: model(x, training=training), images, labels
    )
    l1 = tf.reduce_sum(tf.abs(grad), axis=tf.range(1, tf.rank(grad)))
    l1 = tf.cast(l1, per_example.dtype)
    return per_example + weight * eps * l1, logits, l1


STEP_BUILDERS = {
    "standard": build_standard_step,
    "pgd": build_pgd_step,
    "fgsm_rs": build_fgsm_rs_step,
    "gradnorm": build_gradnorm_step,
}

METHODS = {
    "sq_noisy": Method(True, True, "standard", "soft quantization + noisy samples"),
    "sq_natural": Method(True, False, "standard", "soft quantization, clean samples"),
    "noisy": Method(False, True, "standard", "noisy samples, no quantizer"),
    "natural": Method(False, False, "standard", "clean samples, no quantizer"),
    "pgd_at": Method(False, False, "pgd", "PGD adversarial training (Madry et al.)"),
    "fgsm_rs": Method(False, False, "fgsm_rs", "FGSM from a random start (Wong et al.)"),
    "gradnorm": Method(False, False, "gradnorm", "loss + eps * ||grad_x loss||_1 penalty"),
    "sq_fgsm": Method(
        True, False, "fgsm_rs", "soft quantization + FGSM-RS through its BPDA stand-in"
    ),
}


@dataclasses.dataclass
class TrainConfig:
    """Everything a run depends on. None means "the dataset's default".

    Attributes:
        dataset: Key of `sq_keras.data.DATASETS`.
        method: Key of `METHODS`; None for the dataset's (`sq_fgsm` for
            MNIST, `sq_noisy` elsewhere).
        model: Key of `sq_keras.models.MODELS`; None for the dataset's.
        epochs: Number of passes over the training set.
        batch_size: Examples per step.
        learning_rate: Adam learning rate.
        eps: Threat radius in [0, 1] pixel units; None for the dataset's.
        augment: Training augmentation, one of `sq_keras.data.AUGMENTATIONS`;
            None for the dataset's (crops and flips for CIFAR-10).
        noise: Noise kind, one of `sq_keras.data.NOISE_KINDS`.
        noise_scale: Noise size; None means `eps`.
        num_thresholds: Thresholds K of the quantizer; None for the dataset's
            (1 for MNIST-like sets, 7 for 32x32 colour, 15 for ImageNet).
        per_channel: One threshold set per input channel.
        alpha_start: Quantizer steepness in the first epoch.
        alpha_end: Quantizer steepness in the last epoch (kept at export).
        alpha_schedule: "geometric", "linear" or "constant".
        pgd_steps: Attack steps of `pgd_at`.
        pgd_step_size: Attack step size of `pgd_at`.
        fgsm_step_size: Step of `fgsm_rs` / `sq_fgsm`; None means 1.25 * eps.
        adv_fraction: Share of each batch that `pgd_at`, `fgsm_rs` and
            `sq_fgsm` attack; the rest gets `noise`.
        stand_in: BPDA stand-in of the quantizer for training attacks,
            "identity" (straight-through) or "smooth".
        gradnorm_weight: Weight of the gradient penalty of `gradnorm`.
        hard_inference: Export with the exact staircase at inference.
        train_examples: Use only the first N training examples (None: all).
        seed: Seeds weights, shuffling and noise.
        deterministic: Enable TensorFlow's deterministic ops.
        model_dir: Where checkpoints, logs, config and results go.
        export_dir: Base directory of the SavedModel versions (TensorFlow
            Serving layout, `<export_dir>/<version>/`); None for no export.
        data_dir: Local dataset directory; None for $SQ_KERAS_DATA_DIR/tfds.
        mixed_precision: The resolved Keras dtype policy name in force.
        strategy: `tf.distribute` strategy, one of
            `sq_keras.distribute.STRATEGIES`.
        grad_examples: Test examples used for the `grad_l1` curve.
        eval_examples: Test examples scored after each epoch (None: all).
        init_weights: Weights file for the model's pretrained part (see
            `sq_keras.models.build`), e.g. ImageNet weights of ResNet50.
        overwrite: Start afresh if `model_dir` holds a different run.
        eps_warmup_steps: Adversarial methods: ramp the training attack's eps
            (and step size) linearly from 0 over this many optimizer steps
            (0: full eps from the start, as Madry et al.).
        keep_epoch_weights: Also save the weights after every epoch as
            `<model_dir>/epochs/epoch_<NNN>.weights.h5` (e.g. to measure how
            robustness grows during training).
    """

    dataset: str = "mnist"
    method: str = None
    model: str = None
    epochs: int = 10
    batch_size: int = 128
    learning_rate: float = 1e-3
    eps: float = None
    augment: str = None
    noise: str = "uniform"
    noise_scale: float = None
    num_thresholds: int = None
    per_channel: bool = False
    alpha_start: float = 10.0
    alpha_end: float = 100.0
    alpha_schedule: str = "geometric"
    pgd_steps: int = 40
    pgd_step_size: float = 0.01
    fgsm_step_size: float = None
    adv_fraction: float = 1.0
    stand_in: str = "identity"
    gradnorm_weight: float = 1.0
    hard_inference: bool = False
    train_examples: int = None
    seed: int = 0
    deterministic: bool = False
    model_dir: str = "runs/default"
    export_dir: str = None
    data_dir: str = None
    mixed_precision: str = "float32"
    strategy: str = "default"
    grad_examples: int = 256
    eval_examples: int = None
    init_weights: str = None
    overwrite: bool = False
    keep_epoch_weights: bool = False
    eps_warmup_steps: int = 0

    def resolved(self):
        """Returns a copy with dataset defaults filled in, after validation."""
        info = data.get_info(self.dataset)
        method = self.method or info.method
        if method not in METHODS:
            raise ValueError(
                f"Unknown method {method!r}. Valid methods: {', '.join(sorted(METHODS))}."
            )
        model = self.model or info.model
        if model not in models.MODELS:
            raise ValueError(
                f"Unknown model {model!r}. Valid models: {', '.join(sorted(models.MODELS))}."
            )
        eps = info.eps if self.eps is None else float(self.eps)
        noise_scale = eps if self.noise_scale is None else float(self.noise_scale)
        augment = info.augment if self.augment is None else self.augment
        num_thresholds = info.num_thresholds if self.num_thresholds is None else self.num_thresholds
        fgsm_step_size = 1.25 * eps if self.fgsm_step_size is None else self.fgsm_step_size
        checks = [
            (self.epochs >= 1, "epochs must be >= 1", self.epochs),
            (self.batch_size >= 1, "batch_size must be >= 1", self.batch_size),
            (self.learning_rate > 0, "learning_rate must be > 0", self.learning_rate),
            (0 <= eps <= 1, "eps must be in [0, 1]", eps),
            (0 <= noise_scale <= 1, "noise_scale must be in [0, 1]", noise_scale),
            (num_thresholds >= 1, "num_thresholds must be >= 1", num_thresholds),
            (
                self.eval_examples is None or self.eval_examples >= 1,
                "eval_examples must be >= 1",
                self.eval_examples,
            ),
            (self.alpha_start > 0, "alpha_start must be > 0", self.alpha_start),
            (self.alpha_end > 0, "alpha_end must be > 0", self.alpha_end),
            (self.eps_warmup_steps >= 0, "eps_warmup_steps must be >= 0", self.eps_warmup_steps),
            (self.grad_examples >= 1, "grad_examples must be >= 1", self.grad_examples),
            (self.pgd_steps >= 1, "pgd_steps must be >= 1", self.pgd_steps),
            (self.pgd_step_size > 0, "pgd_step_size must be > 0", self.pgd_step_size),
            (fgsm_step_size > 0, "fgsm_step_size must be > 0", fgsm_step_size),
            (0 < self.adv_fraction <= 1, "adv_fraction must be in (0, 1]", self.adv_fraction),
            (self.gradnorm_weight >= 0, "gradnorm_weight must be >= 0", self.gradnorm_weight),
            (
                self.stand_in in attacks.STAND_INS,
                f"stand_in must be one of {', '.join(attacks.STAND_INS)}",
                self.stand_in,
            ),
            (
                self.train_examples is None or self.train_examples >= 1,
                "train_examples must be >= 1",
                self.train_examples,
            ),
            (
                self.strategy in distribute.STRATEGIES,
                f"strategy must be one of {', '.join(distribute.STRATEGIES)}",
                self.strategy,
            ),
            (
                augment in data.AUGMENTATIONS,
                f"augment must be one of {', '.join(data.AUGMENTATIONS)}",
                augment,
            ),
            (
                self.noise in data.NOISE_KINDS,
                f"noise must be one of {', '.join(data.NOISE_KINDS)}",
                self.noise,
            ),
            (
                self.alpha_schedule in ("geometric", "linear", "constant"),
                "alpha_schedule must be geometric, linear or constant",
                self.alpha_schedule,
            ),
        ]
        for ok, message, value in checks:
            if not ok:
                raise ValueError(f"{message}. Received: {value!r}")
        return dataclasses.replace(
            self,
            method=method,
            model=model,
            eps=eps,
            augment=augment,
            num_thresholds=num_thresholds,
            noise_scale=noise_scale,
            fgsm_step_size=fgsm_step_size,
        )


# Keys that may differ between a run and its resumption without changing what
# is trained.
_RESUME_FREE_KEYS = (
    "epochs",
    "export_dir",
    "data_dir",
    "overwrite",
    "environment",
    "resumed_environments",
    "strategy",
    "keep_epoch_weights",
)


def _prepare_model_dir(config):
    """Creates `model_dir`, refusing to mix a different run into it."""
    path = os.path.join(config.model_dir, "config.json")
    record = {**dataclasses.asdict(config), "environment": provenance.environment()}
    if os.path.exists(path):
        previous = jsonio.read_json(path)
        # A run recorded before an option existed ran with its default.
        defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
        diffs = {
            k: (previous.get(k, defaults.get(k)), v)
            for k, v in record.items()
            if k not in _RESUME_FREE_KEYS and previous.get(k, defaults.get(k)) != v
        }
        if diffs and not config.overwrite:
            lines = "\n".join(f"  {k}: was {a!r}, now {b!r}" for k, (a, b) in diffs.items())
            raise TrainingError(
                f"{config.model_dir} holds a run with a different configuration:\n"
                f"{lines}\nUse another --model_dir, or --overwrite to discard that run."
            )
        previous_environment = previous.get("environment")
        if not diffs and previous_environment is not None:
            # A resumed run keeps the environment (commit, versions) it was
            # started in; later ones are listed, each once in a row.
            later = previous.get("resumed_environments", [])
            if record["environment"] != (later[-1] if later else previous_environment):
                later = later + [record["environment"]]
            record["environment"] = previous_environment
            record["resumed_environments"] = later
        if diffs:
            for name in ("checkpoints", "logs", "history.json", "results.json", "model.keras"):
                target = os.path.join(config.model_dir, name)
                if os.path.isdir(target):
                    shutil.rmtree(target)
                elif os.path.exists(target):
                    os.remove(target)
    try:
        os.makedirs(config.model_dir, exist_ok=True)
        jsonio.write_json(path, record, sort_keys=True)
    except OSError as e:
        raise TrainingError(f"Cannot write to --model_dir {config.model_dir}: {e}") from e


def epoch_weights_path(model_dir, epoch):
    """Where `keep_epoch_weights` puts the weights after `epoch` (1-based)."""
    return os.path.join(model_dir, "epochs", f"epoch_{epoch:03d}.weights.h5")


def _save_epoch_weights(model, model_dir, epoch):
    path = epoch_weights_path(model_dir, epoch)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp_path = os.path.join(os.path.dirname(path), ".tmp.weights.h5")
    model.save_weights(tmp_path)
    os.replace(tmp_path, path)


def _check_writable_parent(path, what):
    """Fails now, not after hours of training, if `path` cannot be created."""
    parent = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(parent, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=parent, prefix=".write-test-"):
            pass
    except OSError as e:
        raise TrainingError(
            f"{what} {path} is not writable ({e}). Choose a directory you can write to."
        ) from e
    if os.path.exists(path) and not os.path.isdir(path):
        raise TrainingError(f"{what} {path} exists and is not a directory.")


def _batches(images, labels, batch_size, drop_remainder=False):
    """uint8 arrays -> float32 batches in [0, 1] (cast once per batch)."""
    ds = tf.data.Dataset.from_tensor_slices((images, labels)).batch(
        batch_size, drop_remainder=drop_remainder
    )
    return ds.map(
        lambda x, y: (tf.cast(x, tf.float32) / 255.0, y),
        num_parallel_calls=tf.data.AUTOTUNE,
    )


def make_train_dataset(images, labels, config, epoch, *, drop_remainder=False):
    """The training batches of one epoch: shuffled, batched, augmented, noised.

    Shuffling and noise are keyed by `(config.seed, epoch)`, so every epoch
    differs and a resumed run sees exactly the batches it would have seen.
    """
    order = np.random.default_rng([config.seed, epoch]).permutation(len(images))
    ds = _batches(images[order], labels[order], config.batch_size, drop_remainder)
    ds = data.add_augmentation(ds, kind=config.augment, seed=(config.seed, epoch))
    return _add_method_noise(ds, config, epoch)


def _add_method_noise(ds, config, epoch):
    if METHODS[config.method].noise:
        ds = data.add_noise(
            ds, kind=config.noise, scale=config.noise_scale, seed=(config.seed, epoch)
        )
    return ds.prefetch(tf.data.AUTOTUNE)


def _resize_and_crop(image, size, *, augment, seed):
    """A uint8 image of any size -> float32 `[size, size, 3]` in [0, 1].

    Resizes the shorter side to `size * 8 / 7` (256 for 224), then crops
    `size x size`: at random (and flips with probability 1/2 for
    "crop_flip") when `augment` is not "none", else in the centre.
    """
    shape = tf.cast(tf.shape(image)[:2], tf.float32)
    scale = (size * 8 / 7) / tf.reduce_min(shape)
    resized = tf.image.resize(image, tf.cast(tf.math.ceil(shape * scale), tf.int32))
    if augment == "none":
        out = tf.image.resize_with_crop_or_pad(resized, size, size)
    else:
        seeds = tf.random.experimental.stateless_split(seed, 2)
        out = tf.image.stateless_random_crop(resized, [size, size, 3], seed=seeds[0])
        if augment == "crop_flip":
            out = tf.image.stateless_random_flip_left_right(out, seed=seeds[1])
    return tf.clip_by_value(out / 255.0, 0.0, 1.0)


@dataclasses.dataclass
class _Data:
    """What the loop needs from a dataset, whether in memory or streamed.

    Attributes:
        num_train: Training examples (None when a stream does not say).
        train_batches: `(epoch, drop_remainder) -> tf.data` of the epoch's
            `(float32 images, int64 labels)` batches, augmented and noised.
        eval_batches: `() -> tf.data` of clean test batches.
        grad_x: float32 test images of the `grad_l1` curve.
        grad_y: Their labels.
        class_names: Label names.
    """

    num_train: int
    train_batches: object
    eval_batches: object
    grad_x: np.ndarray
    grad_y: np.ndarray
    class_names: tuple


def _in_memory_data(config, info, split):
    train_x, train_y = data.load_arrays(config.dataset, split, config.data_dir)
    test_split = "test" if config.eval_examples is None else f"test[:{config.eval_examples}]"
    test_x, test_y = data.load_arrays(config.dataset, test_split, config.data_dir)
    return _Data(
        num_train=len(train_x),
        train_batches=lambda epoch, drop: make_train_dataset(
            train_x, train_y, config, epoch, drop_remainder=drop
        ),
        eval_batches=lambda: _batches(test_x, test_y, 1000),
        grad_x=test_x[: config.grad_examples].astype(np.float32) / 255.0,
        grad_y=test_y[: config.grad_examples],
        class_names=info.class_names,
    )


def _streamed_data(config, info, split):
    size = info.image_shape[0]
    train, num_train, names = data.load_stream(config.dataset, split, config.data_dir)
    test_split = "test" if config.eval_examples is None else f"test[:{config.eval_examples}]"
    test, _, _ = data.load_stream(config.dataset, test_split, config.data_dir)
    test = test.map(
        lambda x, y: (_resize_and_crop(x, size, augment="none", seed=None), y),
        num_parallel_calls=tf.data.AUTOTUNE,
    )

    def train_batches(epoch, drop_remainder):
        key = tf.constant([config.seed, epoch], tf.int64)
        ds = train.shuffle(
            10_000, seed=config.seed * 1_000_003 + epoch, reshuffle_each_iteration=False
        )
        ds = ds.enumerate().map(
            lambda i, example: (
                _resize_and_crop(
                    example[0],
                    size,
                    augment=config.augment,
                    seed=tf.random.experimental.stateless_fold_in(key, i),
                ),
                example[1],
            ),
            num_parallel_calls=tf.data.AUTOTUNE,
        )
        ds = ds.batch(config.batch_size, drop_remainder=drop_remainder)
        return _add_method_noise(ds, config, epoch)

    grad_x, grad_y = next(iter(test.batch(config.grad_examples)))
    return _Data(
        num_train=num_train,
        train_batches=train_batches,
        eval_batches=lambda: test.batch(64),
        grad_x=grad_x.numpy(),
        grad_y=grad_y.numpy(),
        class_names=names,
    )


def input_gradient_stats(model, images, labels):
    """Mean l1 norm of d(cross-entropy)/d(input) per example, and zero share.

    Args:
        model: Keras model returning logits.
        images: float32 `[N, H, W, C]`.
        labels: int `[N]`.

    Returns:
        `(mean_l1, zero_fraction)`: the mean over examples of
        `||grad_x L(x, y)||_1` and the fraction of gradient entries that are
        exactly zero (a sign of saturated, gradient-masking units).
    """
    images = tf.convert_to_tensor(images, tf.float32)
    _, _, grad = attacks.loss_gradient(lambda x: model(x, training=False), images, labels)
    l1 = tf.reduce_sum(tf.abs(grad), axis=tf.range(1, tf.rank(grad)))
    zero = tf.reduce_mean(tf.cast(tf.equal(grad, 0.0), tf.float32))
    return float(tf.reduce_mean(l1)), float(zero)


def evaluate_accuracy(model, batches):
    """Clean top-1 accuracy of `model` over a dataset of `(images, labels)` batches."""

    @tf.function(reduce_retracing=True)
    def predict(x):
        return tf.argmax(model(x, training=False), axis=-1)

    correct = seen = 0
    for x, y in batches:
        correct += int(tf.reduce_sum(tf.cast(predict(x) == y, tf.int32)))
        seen += int(tf.shape(y)[0])
    return correct / seen


def _log(message):
    print(message, flush=True)


def train(config, *, log=_log, strategy=None):
    """Trains, checkpoints, logs and exports one model; resumes if possible.

    Under a multi-worker strategy every worker calls this; only the chief
    writes the run's files (the others write their checkpoints and final
    model under `<model_dir>/workers/`).

    Args:
        config: A `TrainConfig`. Its `mixed_precision` must name the policy
            already set globally (the app sets it first).
        log: Callable taking one line of progress text.
        strategy: A `tf.distribute.Strategy`; default: built from
            `config.strategy`.

    Returns:
        The dict written to `results.json`.

    Raises:
        ValueError: Invalid configuration.
        TrainingError: `model_dir` holds another run, the loss diverged, or
            an output cannot be written.
        sq_keras.data.DataError: Dataset files missing or corrupt.
    """
    config = config.resolved()
    info = data.get_info(config.dataset)
    method = METHODS[config.method]
    if config.deterministic:
        tf.config.experimental.enable_op_determinism()
    keras.utils.set_random_seed(config.seed)

    if strategy is None:
        strategy = distribute.make_strategy(config.strategy)
    chief = distribute.is_chief(strategy)
    replicas = strategy.num_replicas_in_sync

    split = "train" if config.train_examples is None else f"train[:{config.train_examples}]"
    source = (_streamed_data if info.streaming else _in_memory_data)(config, info, split)
    if chief:
        _prepare_model_dir(config)
        if config.export_dir:
            _check_writable_parent(config.export_dir, "--export_dir")
        out_dir = config.model_dir
    else:
        out_dir = distribute.worker_dir(config.model_dir, strategy)
        os.makedirs(out_dir, exist_ok=True)

    quantizer = None
    if method.quantizer:
        quantizer = {
            "num_thresholds": config.num_thresholds,
            "alpha": layers.alpha_schedule(
                0,
                config.epochs,
                start=config.alpha_start,
                end=config.alpha_end,
                kind=config.alpha_schedule,
            ),
            "per_channel": config.per_channel,
            "hard": config.hard_inference,
        }
    with strategy.scope():
        model = models.build(
            config.model,
            input_shape=info.image_shape,
            num_classes=info.num_classes,
            soft_quantization=quantizer,
            init_weights=config.init_weights,
        )
        optimizer = keras.optimizers.Adam(config.learning_rate)
        if config.mixed_precision == "mixed_float16":
            optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
        optimizer.build(model.trainable_variables)
        epoch_var = tf.Variable(0, dtype=tf.int64, trainable=False)
        step = STEP_BUILDERS[method.step](model, optimizer, config, strategy)

    checkpoint = tf.train.Checkpoint(model=model, optimizer=optimizer, epoch=epoch_var)
    # Every worker restores the chief's checkpoints; non-chief workers save
    # their own copies (saving may involve collectives) where nobody reads them.
    manager = tf.train.CheckpointManager(
        checkpoint, os.path.join(config.model_dir, "checkpoints"), max_to_keep=2
    )
    save_manager = manager
    if not chief:
        save_manager = tf.train.CheckpointManager(
            checkpoint, os.path.join(out_dir, "checkpoints"), max_to_keep=1
        )
    history_path = os.path.join(config.model_dir, "history.json")
    history = []
    if manager.latest_checkpoint:
        checkpoint.restore(manager.latest_checkpoint).expect_partial()
        if os.path.exists(history_path):
            history = jsonio.read_json(history_path)[: int(epoch_var.numpy())]
        log(f"Resumed from {manager.latest_checkpoint} (epoch {int(epoch_var.numpy())}).")

    writer = tf.summary.create_file_writer(os.path.join(out_dir, "logs"))
    # Several replicas need equal batches on every step, so they drop the
    # last partial batch; one device keeps it.
    drop_remainder = replicas > 1
    steps_per_epoch = None  # unknown for a stream that does not say its size
    if source.num_train:
        steps_per_epoch = (
            source.num_train // config.batch_size
            if drop_remainder
            else math.ceil(source.num_train / config.batch_size)
        )
    log(
        f"Training {config.model} with method {config.method} on {source.num_train} "
        f"{config.dataset} examples for {config.epochs} epochs "
        f"({steps_per_epoch} steps each), policy {config.mixed_precision}, "
        f"{replicas} replica(s)."
    )

    first_epoch = int(epoch_var.numpy())
    for epoch in range(first_epoch, config.epochs):
        alpha = layers.alpha_schedule(
            epoch,
            config.epochs,
            start=config.alpha_start,
            end=config.alpha_end,
            kind=config.alpha_schedule,
        )
        layers.set_alpha(model, alpha)
        progbar = keras.utils.Progbar(
            steps_per_epoch,
            stateful_metrics=["loss", "accuracy"],
            unit_name="step",
            # A terminal redraws one line; a log file gets a line every 20 s.
            interval=0.1 if sys.stdout.isatty() else 20.0,
        )
        log(f"Epoch {epoch + 1}/{config.epochs}" + (f" (alpha {alpha:.3g})" if quantizer else ""))
        start = time.perf_counter()
        loss_sum = correct = seen = 0.0
        dataset = strategy.experimental_distribute_dataset(
            source.train_batches(epoch, drop_remainder)
        )
        for i, (images, labels) in enumerate(dataset):
            batch_loss, batch_correct, batch_n = step(images, labels)
            n = int(batch_n)
            loss = float(batch_loss) / n
            if not math.isfinite(loss):
                print(flush=True)  # end the progress bar's line
                if manager.latest_checkpoint:
                    kept = (
                        f"The last good checkpoint ({manager.latest_checkpoint}, epoch "
                        f"{epoch}) is kept; a rerun resumes from it."
                    )
                else:
                    kept = "No checkpoint had been written yet."
                raise TrainingError(
                    f"Loss became {loss} at epoch {epoch + 1}, step {i + 1}; training "
                    f"stopped. {kept} Lower --learning_rate or use "
                    "--mixed_precision=float32."
                )
            loss_sum += float(batch_loss)
            correct += int(batch_correct)
            seen += n
            progbar.update(i + 1, [("loss", loss_sum / seen), ("accuracy", correct / seen)])
        seconds = time.perf_counter() - start

        test_accuracy = evaluate_accuracy(model, source.eval_batches())
        grad_l1, grad_zero = input_gradient_stats(model, source.grad_x, source.grad_y)
        record = {
            "epoch": epoch + 1,
            "train_loss": loss_sum / seen,
            "train_accuracy": correct / seen,
            "test_accuracy": test_accuracy,
            "grad_l1": grad_l1,
            "grad_zero_fraction": grad_zero,
            "seconds": seconds,
        }
        with writer.as_default(step=epoch + 1):
            tf.summary.scalar("train/loss", record["train_loss"])
            tf.summary.scalar("train/accuracy", record["train_accuracy"])
            tf.summary.scalar("test/accuracy", test_accuracy)
            tf.summary.scalar("input_gradient/grad_l1", grad_l1)
            tf.summary.scalar("input_gradient/zero_fraction", grad_zero)
            tf.summary.scalar("time/epoch_seconds", seconds)
            for k, layer in enumerate(layers.quantization_layers(model)):
                tf.summary.scalar(f"quantizer_{k}/alpha", float(layer.alpha.numpy()))
                tf.summary.histogram(f"quantizer_{k}/thresholds", layer.thresholds.numpy())
                record[f"quantizer_{k}_thresholds"] = layer.thresholds.numpy().tolist()
                record["alpha"] = float(layer.alpha.numpy())
        writer.flush()
        # History first: if the process dies before the checkpoint is saved,
        # the resumed run truncates history to the checkpoint's epoch.
        history.append(record)
        if chief:
            jsonio.write_json(history_path, history, sort_keys=True)
        if chief and config.keep_epoch_weights:
            _save_epoch_weights(model, config.model_dir, epoch + 1)
        epoch_var.assign(epoch + 1)
        save_manager.save(checkpoint_number=epoch + 1)
        log(
            f"  {seconds:.1f}s  train loss {record['train_loss']:.4f}  "
            f"train acc {record['train_accuracy']:.4f}  test acc {test_accuracy:.4f}  "
            f"grad_l1 {grad_l1:.4g}  zero-grad {grad_zero:.1%}"
        )

    model_path = os.path.join(out_dir, "model.keras")
    tmp_path = os.path.join(out_dir, ".model-tmp.keras")
    model.save(tmp_path)
    os.replace(tmp_path, model_path)
    final = history[-1] if history else {}
    results = {
        "dataset": config.dataset,
        "method": config.method,
        "epochs_done": len(history),
        "test_accuracy": final.get(
            "test_accuracy", evaluate_accuracy(model, source.eval_batches())
        ),
        "train_accuracy": final.get("train_accuracy"),
        "train_loss": final.get("train_loss"),
        "grad_l1": final.get("grad_l1"),
        "grad_zero_fraction": final.get("grad_zero_fraction"),
        "seconds_per_epoch": [h["seconds"] for h in history],
        "total_train_seconds": sum(h["seconds"] for h in history),
        "thresholds": [
            layer.thresholds.numpy().tolist() for layer in layers.quantization_layers(model)
        ],
        "alpha": [float(layer.alpha.numpy()) for layer in layers.quantization_layers(model)],
        "model_path": model_path,
        "export_path": None,
    }
    if not chief:
        return results
    previous_results = os.path.join(config.model_dir, "results.json")
    if config.export_dir and first_epoch == config.epochs and os.path.exists(previous_results):
        # Nothing was trained: keep the export of the finished run.
        results["export_path"] = jsonio.read_json(previous_results).get("export_path")
        log("The run had already finished; nothing trained, nothing exported.")
    elif config.export_dir:
        metadata = {
            "dataset": config.dataset,
            "method": config.method,
            "eps": config.eps,
            "class_names": list(source.class_names),
            "test_accuracy": results["test_accuracy"],
            **provenance.environment(),
        }
        try:
            path = export.export_saved_model(model, config.export_dir, metadata=metadata)
        except OSError as e:
            raise TrainingError(f"Cannot export to {config.export_dir}: {e}") from e
        results["export_path"] = path
        log(f"Exported SavedModel to {path}")
    jsonio.write_json(os.path.join(config.model_dir, "results.json"), results, sort_keys=True)
    log(
        f"Done: test accuracy {results['test_accuracy']:.4f} after {len(history)} "
        f"epochs, {results['total_train_seconds']:.0f}s of training."
    )
    return results
