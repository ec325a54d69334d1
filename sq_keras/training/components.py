"""The one place that builds a run's model, optimiser and train step.

Training, the step-cost benchmark (`sq_keras.throughput`) and the
distribution probe all build their parts here, so what they run is what
`train` runs: the method's quantizer front at the alpha of the schedule's
first epoch (with `hard_inference`), Adam (in a `LossScaleOptimizer` under
`mixed_float16`), built, and the method's step, all under `strategy.scope()`.

```python
config = TrainConfig(dataset="mnist", method="sq_fgsm").resolved()
info = data.get_info(config.dataset)
keras.utils.set_random_seed(config.seed)
model, optimizer, step = build_components(config, info, tf.distribute.get_strategy())
```
"""

import keras

from sq_keras import models
from sq_keras.training.methods import METHODS
from sq_keras.training.schedules import alpha_at
from sq_keras.training.steps import STEP_BUILDERS


def quantizer_settings(config):
    """The `soft_quantization` argument of `models.build`, None without one."""
    if not METHODS[config.method].quantizer:
        return None
    return {
        "num_thresholds": config.num_thresholds,
        "alpha": alpha_at(config, 0),
        "per_channel": config.per_channel,
        "hard": config.hard_inference,
    }


def build_optimizer(config, model):
    """Adam, loss-scaled under `mixed_float16`, built for `model`'s variables."""
    optimizer = keras.optimizers.Adam(config.learning_rate)
    if config.mixed_precision == "mixed_float16":
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
    optimizer.build(model.trainable_variables)
    return optimizer


def build_components(config, info, strategy):
    """The model, optimiser and train step of `config`, under `strategy.scope()`.

    Weights draw from Keras's global random state: seed it first
    (`keras.utils.set_random_seed(config.seed)`) for reproducible runs.

    Args:
        config: A resolved `TrainConfig`.
        info: The dataset's `sq_keras.data.DatasetInfo` (input shape, classes).
        strategy: The `tf.distribute.Strategy` the step runs under.

    Returns:
        `(model, optimizer, step)`, `step` as in `sq_keras.training.steps`.
    """
    with strategy.scope():
        model = models.build(
            config.model,
            input_shape=info.image_shape,
            num_classes=info.num_classes,
            soft_quantization=quantizer_settings(config),
            init_weights=config.init_weights,
        )
        optimizer = build_optimizer(config, model)
        step = STEP_BUILDERS[METHODS[config.method].step](model, optimizer, config, strategy)
    return model, optimizer, step
