"""`RobustModel`: any Keras classifier trained robustly with `compile()` + `fit()`.

The wrapped model's `fit` runs one of `apps.train`'s methods: each step
crafts the examples the method trains on (adversarial examples from FGSM
with a random start or PGD, or noisy samples) and minimises their loss, with
the same per-example objectives as `apps.train`
(`sq_keras.training.steps.OBJECTIVES`) and the same seeding: randomness is
stateless, keyed by `seed`, the optimizer's step and the replica.

```python
inputs = keras.Input((28, 28, 1))
x = keras.layers.Conv2D(32, 3, activation="relu")(inputs)
x = keras.layers.Flatten()(keras.layers.MaxPooling2D()(x))
model = keras.Model(inputs, keras.layers.Dense(10)(x))      # logits

robust = sq_keras.RobustModel(model, method="sq_fgsm", eps=0.3, add_quantizer=True)
robust.compile(optimizer="adam", metrics=["accuracy"])
robust.fit(x_train, y_train, batch_size=128, epochs=3,
           callbacks=[sq_keras.callbacks.AlphaSchedule(start=10.0, end=100.0)])
robust.evaluate(x_test, y_test)
robust.save("robust.keras")        # load_model after `from sq_keras import RobustModel`
robust.classifier                  # the trained functional model, quantizer included
```

Methods that need a `SoftQuantization` front (`sq_*`) refuse a model
without one unless `add_quantizer` is set, which prepends one. The model must
map images in [0, 1] to logits; methods whose attack runs through the
quantizer's BPDA stand-in need a functional or Sequential model.
"""

import dataclasses
import functools

import keras
import numpy as np
import tensorflow as tf

from sq_keras import data
from sq_keras import layers
from sq_keras.training import free
from sq_keras.training import perturbation_memory
from sq_keras.training import steps
from sq_keras.training.config import TrainConfig
from sq_keras.training.methods import METHODS
from sq_keras.training.methods import takes_indices

# The `TrainConfig` fields that shape a method's training examples and loss;
# `RobustModel` takes them as keyword arguments with the same defaults.
SETTINGS = (
    "noise",
    "noise_scale",
    "pgd_steps",
    "pgd_step_size",
    "fgsm_step_size",
    "adv_fraction",
    "stand_in",
    "gradnorm_weight",
    "eps_warmup_steps",
    "free_step_size",
    "free_replays",
    "free_init",
    "free_memory",
    "free_memory_dtype",
    "free_loss",
    "trades_beta",
    "seed",
)
# The inputs of a batch whose examples carry their index in the training set.
IMAGES, INDICES = "images", "indices"


def robust_methods():
    """The methods `RobustModel` can train with: a per-example objective, or free training."""
    return sorted(
        name for name, m in METHODS.items() if m.step in steps.OBJECTIVES or m.step == "free"
    )


def _is_free(method):
    return METHODS[method].step == "free"


def _resolved_config(method, eps, settings):
    """The method's settings as a validated `TrainConfig`.

    Raises:
        ValueError: An unknown method or setting, or a value out of range.
    """
    if method not in robust_methods():
        raise ValueError(
            f"Unknown method {method!r}. RobustModel trains with: {', '.join(robust_methods())}."
        )
    unknown = sorted(set(settings) - set(SETTINGS))
    if unknown:
        raise ValueError(f"Unknown settings {unknown}. RobustModel takes: {', '.join(SETTINGS)}.")
    if isinstance(eps, bool) or not isinstance(eps, (int, float)):
        raise ValueError(f"`eps` must be a number in [0, 1] (pixel units). Received: eps={eps!r}")
    config = TrainConfig(method=method, eps=float(eps), **settings)
    return config.resolved()


def _quantizer_kwargs(add_quantizer):
    if add_quantizer is True:
        return {}
    if isinstance(add_quantizer, dict):
        return dict(add_quantizer)
    raise ValueError(
        "`add_quantizer` must be True, False or a dict of SoftQuantization arguments. "
        f"Received: add_quantizer={add_quantizer!r}"
    )


def with_quantizer(model, **quantizer_kwargs):
    """A functional model: `SoftQuantization(**quantizer_kwargs)`, then `model`.

    Raises:
        ValueError: `model` has no known input shape.
    """
    try:
        shape = tuple(model.input_shape[1:])
    except (AttributeError, ValueError):
        shape = None
    if not shape or None in shape:
        raise ValueError(
            f"Cannot prepend a SoftQuantization layer to model {model.name!r}: its input "
            "shape is unknown. Build it from keras.Input((H, W, C)), or put "
            "sq_keras.layers.SoftQuantization() after its input yourself."
        )
    inputs = keras.Input(shape, name="images")
    quantized = layers.SoftQuantization(**quantizer_kwargs, name="soft_quantization")(inputs)
    return keras.Model(inputs, model(quantized), name=f"{model.name}_quantized")


def _checked_classifier(model, method, add_quantizer):
    """`model`, with a quantizer prepended if asked and missing.

    Raises:
        ValueError: Not a Keras model, or the method needs a quantizer the
            model lacks and `add_quantizer` is False.
    """
    if not isinstance(model, keras.Model):
        raise ValueError(f"`model` must be a keras.Model. Received: {type(model).__name__}")
    if layers.quantization_layers(model):
        return model
    if add_quantizer is not False:
        return with_quantizer(model, **_quantizer_kwargs(add_quantizer))
    if METHODS[method].quantizer:
        raise ValueError(
            f"Method {method!r} trains a model whose input goes through a "
            f"sq_keras.layers.SoftQuantization layer, and model {model.name!r} has none. "
            "Pass add_quantizer=True (or a dict of SoftQuantization arguments) to prepend "
            "one, put one after the model's input, or choose a method without a "
            f"quantizer: {', '.join(m for m in robust_methods() if not METHODS[m].quantizer)}."
        )
    return model


def _checked_num_train(num_train):
    if num_train is None:
        return None
    if isinstance(num_train, bool) or not isinstance(num_train, int) or num_train < 1:
        raise ValueError(f"`num_train` must be a positive integer. Received: {num_train!r}")
    return num_train


def _built_input_shape(model):
    """The input shape `model` was built with; None while it is not built."""
    if not model.built:
        return None
    try:
        return model.input_shape
    except (AttributeError, ValueError):  # A subclassed model has no `input`.
        return (model.get_build_config() or {}).get("input_shape")


def _with_index_inputs(x, method):
    """Arrays of images -> `{"images": x, "indices": 0..N-1}`; a dict as it is.

    Raises:
        ValueError: Neither arrays of images nor a dict holding both keys.
    """
    if isinstance(x, dict):
        if set(x) != {IMAGES, INDICES}:
            raise ValueError(
                f"Method {method} takes a dict input with the keys {IMAGES!r} and {INDICES!r}. "
                f"Received keys: {sorted(x)}"
            )
        return x
    if hasattr(x, "shape") and len(x.shape) == 4:
        return {IMAGES: x, INDICES: np.arange(x.shape[0], dtype=np.int64)}
    raise ValueError(
        f"Method {method} keeps one perturbation per training example, found by the "
        "example's index: pass fit() arrays of images (indexed 0..N-1 automatically), a dict "
        f"{{{IMAGES!r}: images, {INDICES!r}: int indices}}, or a tf.data.Dataset made with "
        "sq_keras.data.with_indices (and num_train=). "
        f"Received: {type(x).__name__}"
    )


def epoch_shuffled_batches(x, y, batch_size, *, seed):
    """Batches of the arrays `(x, y)` in a new order every epoch, fixed by `seed`.

    `x` is a dict (or any structure) of arrays with the same first dimension
    as `y`. The arrays stay whole in the input pipeline and each batch is
    gathered from them, as Keras's own array adapter does; unlike it, the
    order changes from one epoch (one pass over the dataset) to the next
    whatever the global random seed.
    """
    n = len(y)
    order = tf.data.Dataset.range(n).shuffle(n, seed=seed, reshuffle_each_iteration=True)
    arrays = tf.data.Dataset.from_tensors((x, y)).repeat()
    batches = tf.data.Dataset.zip((order.batch(batch_size), arrays))

    def gather(indices, data):
        return tf.nest.map_structure(lambda a: tf.gather(a, indices), data)

    return batches.map(gather, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)


def _split_validation(x, y, fraction):
    """The last `fraction` of the arrays as `validation_data`, as Keras splits them."""
    n = len(y)
    cut = n - int(n * fraction)
    if cut <= 0 or cut >= n:
        raise ValueError(
            f"`validation_split` leaves no training or no validation examples of {n}. "
            f"Received: validation_split={fraction}"
        )
    head = {k: v[:cut] for k, v in x.items()}
    return head, y[:cut], (x[IMAGES][cut:], y[cut:])


def _split_inputs(x):
    """`(images, indices)` of a batch; indices None for plain images."""
    if isinstance(x, dict):
        return x[IMAGES], tf.cast(x[INDICES], tf.int64)
    return x, None


@dataclasses.dataclass(frozen=True)
class _Compiled:
    """What `RobustModel.compile` builds: the objective (or free update) and `craft`."""

    objective: steps.Objective
    craft: object
    free_update: free.FreeUpdate = None


@keras.saving.register_keras_serializable(package="sq_keras")
class RobustModel(keras.Model):
    """A classifier whose `fit` trains it with a robust training method.

    `train_step` crafts the method's training examples from each batch
    (`craft`) and takes one gradient step on their loss: the method's
    per-example loss (cross-entropy, or cross-entropy plus the input-gradient
    penalty for `gradnorm`) plus the model's own regularization losses,
    averaged over the global batch. The `loss` given to `compile` is not
    used for training; `evaluate` and validation report it (default: sparse
    cross-entropy from logits). Compiled metrics are computed on the crafted
    examples, as `apps.train` reports its train accuracy.

    The free methods (`sq_free`, `free`) run `apps.train`'s free step
    instead: each `train_step` takes `free_replays` updates, every update's
    backward pass also moving each example's perturbation one signed step.
    With `free_memory="example"` (the default) the perturbations are kept per
    training example across epochs in `perturbations`, a non-trainable
    variable of the model that `save`, `ModelCheckpoint` and
    `BackupAndRestore` save and restore; each batch must carry its examples'
    indices (arrays given to `fit` are indexed automatically; a dataset
    comes through `sq_keras.data.with_indices`). With `free_memory="none"`
    nothing is kept and any input works.

    Works under a `tf.distribute` strategy scope and under a mixed-precision
    policy (`compile` wraps the optimizer in a `LossScaleOptimizer` under
    `mixed_float16`, whose loss scaling the step applies). Sample weights
    are not supported.

    Args:
        model: A `keras.Model` mapping float32 images in [0, 1] to logits.
        method: One of `robust_methods()`: `sq_fgsm` (FGSM-RS through the
            quantizer's BPDA stand-in), `sq_free` (free adversarial training
            through it, `apps.train`'s MNIST default), `free`, `sq_noisy`,
            `noisy`, `sq_natural`, `natural`, `pgd_at`, `fgsm_rs`,
            `gradnorm` (see `sq_keras.training.METHODS`).
        eps: Threat radius in [0, 1] pixel units (0.3 for MNIST).
        add_quantizer: When the model has no `SoftQuantization` layer:
            False leaves it as it is (methods that need one then raise),
            True prepends `SoftQuantization()` with its defaults, a dict
            prepends `SoftQuantization(**add_quantizer)`.
        num_train: Free methods with a memory: the training set's size (the
            indices run over `[0, num_train)`). Default: the length of the
            arrays first given to `fit`; needed up front for a dataset.
        **settings: Any of `SETTINGS`, with the meanings and defaults of
            `sq_keras.training.TrainConfig`'s fields of the same names
            (e.g. `pgd_steps=40`, `fgsm_step_size=1.25 * eps`,
            `free_step_size=1.25 * eps`, `free_memory_dtype="int8"`,
            `noise="uniform"`, `noise_scale=eps`, `seed=0`), and base
            `keras.Model` arguments (`name`, ...).

    Attributes:
        classifier: The trained model (with the prepended quantizer, if
            any): what to export or evaluate.
        method: The method's name.
        eps: The threat radius.
        perturbations: The free methods' per-example memory (a Keras
            variable `[num_train, H, W, C]`), once built; else None.

    Raises:
        ValueError: Unknown method or setting, a value out of range, or a
            method that needs a quantizer the model lacks.
        sq_keras.training.MemoryBudgetError: The per-example memory would
            not fit in the host's memory.
    """

    def __init__(
        self, model, *, method="sq_fgsm", eps, add_quantizer=False, num_train=None, **kwargs
    ):
        settings = {k: kwargs.pop(k) for k in list(kwargs) if k in SETTINGS}
        base = {k: kwargs.pop(k) for k in ("name", "trainable", "dtype") if k in kwargs}
        config = _resolved_config(method, eps, {**settings, **kwargs})
        super().__init__(**base)
        self._config = config
        self.classifier = _checked_classifier(model, method, add_quantizer)
        self.method = method
        self.eps = float(eps)
        self.add_quantizer = add_quantizer
        self.num_train = _checked_num_train(num_train)
        self.perturbations = None
        self._compiled = None
        shape = _built_input_shape(self.classifier)
        if shape is not None and (self.num_train or not self._keeps_memory):
            # `fit` never calls this wrapper itself, only the classifier: the
            # wrapper is built from the start, so that `save` records it.
            self.build(shape)

    @property
    def _keeps_memory(self):
        return takes_indices(self._config)

    def build(self, input_shape):
        if isinstance(input_shape, dict):
            input_shape = input_shape[IMAGES]
        if not self.classifier.built:
            self.classifier.build(input_shape)
        if self._keeps_memory and self.num_train and self.perturbations is None:
            self.perturbations = self._memory_variable(tuple(input_shape[1:]))

    def _memory_variable(self, image_shape):
        """The per-example memory, as `apps.train`'s step initialises it."""
        initial = free.initial_memory_value(
            self._config, num_train=self.num_train, image_shape=image_shape
        )
        return keras.Variable(
            initial,
            trainable=False,
            autocast=False,
            aggregation="none",
            synchronization="on_write",
            name="perturbations",
        )

    def call(self, inputs, training=False):
        images, _ = _split_inputs(inputs)
        return self.classifier(images, training=training)

    def compile(self, optimizer="adam", loss=None, jit_compile=False, **kwargs):
        """`keras.Model.compile`, with defaults for a robust classifier.

        Also builds the method's training objective on the compiled
        optimizer (its step drives `eps_warmup_steps` and the seeds).

        Args:
            optimizer: As `keras.Model.compile` (wrapped in a
                `LossScaleOptimizer` under `mixed_float16`); default Adam,
                as `apps.train`.
            loss: What `evaluate` reports; default sparse categorical
                cross-entropy from logits. Training uses the method's loss.
            jit_compile: False by default: the training attacks are not
                compiled with XLA by `apps.train` either.
            **kwargs: Other `keras.Model.compile` arguments (`metrics`, ...).
        """
        if loss is None:
            loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
        super().compile(optimizer=optimizer, loss=loss, jit_compile=jit_compile, **kwargs)
        if _is_free(self.method):
            self._compiled = self._compiled_free()
            return
        kind = METHODS[self.method].step
        objective = steps.OBJECTIVES[kind](self.classifier, self.optimizer, self._config)
        # Keras traces train_step without AutoGraph; the attacks' loops need it.
        craft = tf.function(functools.partial(self._craft, objective), reduce_retracing=True)
        self._compiled = _Compiled(objective, craft)

    def _compiled_free(self):
        model_fn = free.shared_backward_model(self.classifier, stand_in=self._config.stand_in)
        update = free.FreeUpdate(
            lambda x: model_fn(x, training=True),
            self.optimizer,
            self.trainable_variables,
            self._config,
            regularization=lambda: self.losses,
        )
        return _Compiled(None, self._free_start, update)

    def compile_from_config(self, config):
        # As Keras's own, which skips a model whose `compile` is overridden.
        self.compile(**keras.saving.deserialize_keras_object(config))
        if self.built:
            self.optimizer.build(self.trainable_variables)

    def _craft(self, objective, images, labels, seed):
        images = tf.cast(images, tf.float32)
        seed = tf.cast(seed, tf.int64)
        if METHODS[self.method].noise:
            config = self._config
            images = data.noise_batch(
                images,
                kind=config.noise,
                scale=config.noise_scale,
                seed=tf.stack([tf.constant(config.seed, tf.int64), seed]),
            )
        return tf.stop_gradient(objective.craft(images, labels, seed))

    def _memory(self):
        """The free methods' `PerturbationMemory` or `ReplayStart`."""
        config = self._config
        if not self._keeps_memory:
            return free.replay_start(config)
        if self.perturbations is None:
            raise RuntimeError(
                f"Method {self.method} keeps one perturbation per training example and has "
                "no memory yet: pass num_train= to RobustModel, or fit() arrays first."
            )
        return perturbation_memory.PerturbationMemory(self.perturbations, eps=config.eps)

    def _free_start(self, images, labels, seed, indices=None):
        del labels
        images = tf.cast(images, tf.float32)
        return tf.stop_gradient(self._memory().start(images, indices, tf.cast(seed, tf.int64)))

    def _checked_compiled(self):
        if self._compiled is None:
            raise RuntimeError("Call compile() before fit() or craft().")
        return self._compiled

    def craft(self, images, labels, seed, indices=None):
        """The examples one train step trains on (first), crafted from a batch.

        The method's noise (noisy-sample methods) or training attack
        (`sq_fgsm`, `fgsm_rs`, `pgd_at`) on the model as it is; the batch
        itself for the others. The free methods return the perturbed batch
        their first update starts from: the examples' kept perturbations
        (by `indices`), or the fresh start without a memory. Noisy and
        adversarial examples lie within `noise_scale` (`eps`) of `images` in
        l-inf and inside [0, 1]. `train_step` calls this on every batch.

        Args:
            images: float32 `[N, H, W, C]` in [0, 1].
            labels: int `[N]`.
            seed: Integer seed (`train_step` passes one derived from the
                optimizer's step and the replica).
            indices: Free methods with a memory: the examples' indices in
                the training set.

        Returns:
            float32 images of the batch's shape, gradient-stopped.

        Raises:
            RuntimeError: The model is not compiled.
        """
        if _is_free(self.method):
            return self._checked_compiled().craft(images, labels, seed, indices)
        return self._checked_compiled().craft(images, labels, seed)

    def _training_loss(self, images, labels, seed):
        """`(per_example_losses, logits)` of one replica's batch."""
        crafted = self.craft(images, labels, seed)
        per_example, logits = self._checked_compiled().objective.loss(crafted, labels)
        if self.losses:
            # Every example carries the regularization once: the step's
            # global mean then adds it exactly once.
            per_example += tf.cast(tf.add_n(self.losses), per_example.dtype)
        return per_example, logits

    def fit(
        self,
        x=None,
        y=None,
        batch_size=None,
        epochs=1,
        verbose="auto",
        callbacks=None,
        validation_split=0.0,
        validation_data=None,
        shuffle=True,
        **kwargs,
    ):
        """`keras.Model.fit`; the free methods' memory is made on the first call.

        For a free method with a memory, arrays of images are indexed
        `0..N-1` in the order given (shuffling moves the index with its
        image), and the memory is created for `N` examples unless
        `num_train` was given. With `shuffle`, such arrays are reshuffled
        every epoch by `RobustModel` itself (`epoch_shuffled_batches`): after
        `keras.utils.set_random_seed`, Keras's own shuffling of arrays
        repeats one order every epoch, and free training with a memory
        collapses on a repeated order (see docs/keras.md).
        """
        if self._keeps_memory and not isinstance(x, tf.data.Dataset):
            if kwargs.get("sample_weight") is not None or kwargs.get("class_weight") is not None:
                raise ValueError("RobustModel does not support sample weights or class weights.")
            x = _with_index_inputs(x, self.method)
            self._check_indices(np.asarray(x[INDICES]))
            if shuffle:
                if validation_split and validation_data is None:
                    x, y, validation_data = _split_validation(x, y, validation_split)
                x = epoch_shuffled_batches(x, y, batch_size or 32, seed=self._config.seed)
                y, batch_size, validation_split, shuffle = None, None, 0.0, False
        if self._keeps_memory and self.perturbations is None:
            self._build_memory(x, verbose)
        return super().fit(
            x,
            y,
            batch_size=batch_size,
            epochs=epochs,
            verbose=verbose,
            callbacks=callbacks,
            validation_split=validation_split,
            validation_data=validation_data,
            shuffle=shuffle,
            **kwargs,
        )

    def _check_indices(self, indices):
        """Sets `num_train` from the first indices given; refuses any beyond it."""
        if self.num_train is None:
            self.num_train = int(indices.max()) + 1 if indices.size else None
        if indices.size and (indices.min() < 0 or indices.max() >= (self.num_train or 0)):
            raise ValueError(
                f"Example indices must lie in [0, num_train={self.num_train}). Received indices "
                f"from {indices.min()} to {indices.max()}."
            )

    def _build_memory(self, x, verbose):
        if self.num_train is None:
            raise ValueError(
                f"Method {self.method} keeps one perturbation per training example: pass "
                "num_train= (the training set's size) to RobustModel when fit() reads a "
                "dataset, or fit() arrays."
            )
        shape = (None, *x[IMAGES].shape[1:]) if isinstance(x, dict) else None
        shape = shape or _built_input_shape(self.classifier)
        with self.distribute_strategy.scope():
            self.build(shape)
        if verbose != 0:
            print(self._memory().describe(), flush=True)

    def train_step(self, data):
        x, labels, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        if sample_weight is not None:
            raise ValueError("RobustModel does not support sample weights or class weights.")
        images, indices = _split_inputs(x)
        labels = tf.cast(labels, tf.int64)
        if _is_free(self.method):
            per_example, logits = self._checked_compiled().free_update.replica_step(
                self._memory(), images, labels, indices
            )
            labels = tf.tile(labels, [self._config.free_replays])
        else:
            per_example, logits = steps.apply_update(
                self, self.optimizer, self._training_loss, images, labels
            )
        if not self.built:
            # A classifier that builds on its first call (a subclassed model)
            # has just been built; mark the wrapper built with it, for `save`.
            self.build((None, *images.shape[1:]))
        # As Keras's own train_step: the replica's mean, weighted by its size.
        self._loss_tracker.update_state(
            tf.reduce_mean(per_example), sample_weight=tf.shape(per_example)[0]
        )
        return self.compute_metrics(images, labels, logits)

    def get_config(self):
        settings = dataclasses.asdict(self._config)
        return {
            **super().get_config(),
            "model": keras.saving.serialize_keras_object(self.classifier),
            "method": self.method,
            "eps": self.eps,
            "add_quantizer": self.add_quantizer,
            "num_train": self.num_train,
            **{k: settings[k] for k in SETTINGS},
        }

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        model = keras.saving.deserialize_keras_object(
            config.pop("model"), custom_objects=custom_objects
        )
        return cls(model, **config)
