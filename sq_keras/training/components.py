"""The one place that builds a run's model, optimiser and train step.

Training, the step-cost benchmark (`sq_keras.throughput`) and the
distribution probe all build their parts here, so what they run is what
`train` runs: the method's quantizer front at the alpha of the schedule's
first epoch (with `hard_inference`), Adam at the learning rate of
`config.lr_schedule` (in a `LossScaleOptimizer` under `mixed_float16`),
built, and the method's step, all under `strategy.scope()`.

```python
config = TrainConfig(dataset="mnist", method="sq_fgsm").resolved()
info = data.get_info(config.dataset)
keras.utils.set_random_seed(config.seed)
model, optimizer, step = build_components(
    config, info, tf.distribute.get_strategy(), num_train=60_000, steps_per_epoch=469
)
```
"""

import keras

from sq_keras import models
from sq_keras.training.methods import METHODS
from sq_keras.training.schedules import alpha_at
from sq_keras.training.schedules import learning_rate
from sq_keras.training.steps import STEP_BUILDERS


def quantizer_settings(config):
    """The `soft_quantization` argument of `models.build`, None without one."""
    if not METHODS[config.method].quantizer:
        return None
    return {
        "num_thresholds": config.num_thresholds,
        "alpha": alpha_at(config, 0),
        "per_channel": config.per_channel,
        "threshold_margin": config.threshold_margin,
        "hard": config.hard_inference,
    }


def updates_per_batch(config):
    """Optimiser updates per batch: `free_replays` for the free methods, else 1."""
    return config.free_replays if METHODS[config.method].step == "free" else 1


def _total_updates(config, steps_per_epoch):
    """Optimiser updates of the whole run; None when the epoch's length is unknown."""
    if not steps_per_epoch:
        return None
    return config.epochs * steps_per_epoch * updates_per_batch(config)


def build_optimizer(config, model, steps_per_epoch=None):
    """Adam, loss-scaled under `mixed_float16`, built for `model`'s variables.

    With `config.ema_decay`, Adam also keeps the moving average of the
    weights (`sq_keras.training.weight_averaging`).

    Args:
        config: A resolved `TrainConfig`.
        model: The model whose trainable variables the optimiser updates.
        steps_per_epoch: Batches per epoch; needed by non-constant
            `config.lr_schedule`s (None: unknown).

    Raises:
        ValueError: A non-constant learning-rate schedule without
            `steps_per_epoch`.
    """
    total_steps = _total_updates(config, steps_per_epoch)
    ema = {"use_ema": True, "ema_momentum": config.ema_decay} if config.ema_decay else {}
    optimizer = keras.optimizers.Adam(learning_rate(config, total_steps), **ema)
    if config.mixed_precision == "mixed_float16":
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
    optimizer.build(model.trainable_variables)
    return optimizer


def build_components(
    config, info, strategy, *, num_train=None, steps_per_epoch=None, memory_shard=(0, 1)
):
    """The model, optimiser and train step of `config`, under `strategy.scope()`.

    Weights draw from Keras's global random state: seed it first
    (`keras.utils.set_random_seed(config.seed)`) for reproducible runs.

    Args:
        config: A resolved `TrainConfig`.
        info: The dataset's `sq_keras.data.DatasetInfo` (input shape, classes).
        strategy: The `tf.distribute.Strategy` the step runs under.
        num_train: Training examples; needed by methods that keep
            per-example state (`Method.indexed`).
        steps_per_epoch: Batches per epoch; needed by non-constant
            learning-rate schedules and by `free_step_end`.
        memory_shard: `(index, count)` of this worker among those that read
            the data: an indexed method's memory keeps only this worker's
            examples when `count > 1` (see `sq_keras.training.free`).

    Returns:
        `(model, optimizer, step)`, `step` as in `sq_keras.training.steps`;
        the step of an indexed method takes `(images, labels, indices)` and
        has a `state` dict of variables to checkpoint.

    Raises:
        ValueError: An indexed method with a per-example memory without
            `num_train`, or a non-constant learning-rate schedule without
            `steps_per_epoch`, or `free_step_end` without it.
        sq_keras.training.perturbation_memory.MemoryBudgetError: The
            per-example memory would not fit in the host's memory.
    """
    method = METHODS[config.method]
    extra = {"num_train": num_train, "shard": memory_shard} if method.indexed else {}
    if method.step == "free":
        extra["total_updates"] = _total_updates(config, steps_per_epoch)
    with strategy.scope():
        model = models.build(
            config.model,
            input_shape=info.image_shape,
            num_classes=info.num_classes,
            soft_quantization=quantizer_settings(config),
            init_weights=config.init_weights,
        )
        optimizer = build_optimizer(config, model, steps_per_epoch)
        step = STEP_BUILDERS[method.step](model, optimizer, config, strategy, **extra)
    return model, optimizer, step
