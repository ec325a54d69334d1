"""Training-step cost of training configurations, timed side by side.

Wall-clock seconds per epoch depend on whatever else the machine runs. To
compare methods, `time_train_steps` builds each configuration's real train
step (same model, optimiser and batch) and times them round-robin in one
process: every repeat runs `steps` steps of each configuration in turn, so
load from other processes hits all of them alike, and the median over repeats
is kept. Images are random (a step's cost does not depend on pixel values);
the noise of noisy-sample methods, which training adds in the input pipeline,
is timed with the step.

```python
configs = {m: TrainConfig(dataset="mnist", method=m) for m in ("natural", "pgd_at")}
costs = time_train_steps(configs, batch_size=128, steps=10, repeats=3)
costs["pgd_at"]["seconds_per_step"] / costs["natural"]["seconds_per_step"]
```
"""

import statistics
import time

import keras
import numpy as np
import tensorflow as tf

from sq_keras import data
from sq_keras import distribute
from sq_keras import models
from sq_keras import training


def _build_step(config, info):
    keras.utils.set_random_seed(config.seed)
    quantizer = None
    if training.METHODS[config.method].quantizer:
        quantizer = {
            "num_thresholds": config.num_thresholds,
            "alpha": config.alpha_end,
            "per_channel": config.per_channel,
        }
    model = models.build(
        config.model,
        input_shape=info.image_shape,
        num_classes=info.num_classes,
        soft_quantization=quantizer,
    )
    optimizer = keras.optimizers.Adam(config.learning_rate)
    if config.mixed_precision == "mixed_float16":
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
    optimizer.build(model.trainable_variables)
    strategy = distribute.make_strategy("default")
    builder = training.STEP_BUILDERS[training.METHODS[config.method].step]
    return builder(model, optimizer, config, strategy)


def _batches(config, images):
    """`index -> images` as the input pipeline hands them to the step."""
    if not training.METHODS[config.method].noise or config.noise == "none":
        return lambda index: images

    @tf.function
    def noisy(index):
        seed = tf.stack([tf.constant(config.seed, tf.int64), index])
        return data.noise_batch(images, kind=config.noise, scale=config.noise_scale, seed=seed)

    return lambda index: noisy(tf.constant(index, tf.int64))


def time_train_steps(configs, *, batch_size=128, steps=10, repeats=3, log=None):
    """Seconds per train step of each configuration, timed round-robin.

    Args:
        configs: Dict name -> `training.TrainConfig`, all of one dataset and
            run under the global Keras dtype policy (`mixed_precision`).
        batch_size: Images per step.
        steps: Timed steps per configuration and repeat.
        repeats: Round-robin repeats; the median is reported.
        log: Optional callable taking one line of progress text.

    Returns:
        Dict name -> {"seconds_per_step", "images_per_second",
        "all_repeats_seconds"}.

    Raises:
        ValueError: Bad counts, or configurations of different datasets.
    """
    for name, value in (("batch_size", batch_size), ("steps", steps), ("repeats", repeats)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"`{name}` must be a positive integer. Received: {value!r}")
    configs = {name: config.resolved() for name, config in configs.items()}
    datasets = {config.dataset for config in configs.values()}
    if len(datasets) != 1:
        raise ValueError(f"All configurations must share one dataset. Received: {datasets}")
    info = data.get_info(datasets.pop())
    rng = np.random.default_rng(0)
    images = tf.constant(rng.random((batch_size, *info.image_shape), dtype=np.float32))
    labels = tf.constant(rng.integers(0, info.num_classes, batch_size), tf.int64)

    runs = {}
    for name, config in configs.items():
        if log:
            log(f"Building and warming up the train step of {name} ...")
        step, batch = _build_step(config, info), _batches(config, images)
        float(step(batch(0), labels)[0])  # tracing and the first run
        runs[name] = (step, batch)
    seconds = {name: [] for name in runs}
    for repeat in range(repeats):
        for name, (step, batch) in runs.items():
            start = time.perf_counter()
            for i in range(steps):
                out = step(batch(i), labels)
            float(out[0])  # waits for the last step
            seconds[name].append(time.perf_counter() - start)
        if log:
            log(f"  timing repeat {repeat + 1}/{repeats} done")
    results = {}
    for name, values in seconds.items():
        per_step = statistics.median(values) / steps
        results[name] = {
            "seconds_per_step": per_step,
            "images_per_second": batch_size / per_step,
            "all_repeats_seconds": values,
        }
    return results
