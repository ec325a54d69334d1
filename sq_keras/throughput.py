"""Training-step cost of training configurations, timed side by side.

Wall-clock seconds per epoch depend on whatever else the machine runs. To
compare methods, `time_train_steps` builds each configuration's real train
step (`training.build_components`: same model, optimiser and batch as a
training run) and times them round-robin in one process: every repeat runs
`steps` steps of each configuration in turn, so load from other processes hits
all of them alike, and the median over repeats is kept. Each turn starts with
one untimed step: the first step after another configuration's turn runs on
cold caches, and without it the configuration timed right after the heaviest
one (`natural` after `pgd_at` in the MNIST comparison) measured 5% slower or
more than its steady state. The process's CPU time is kept beside the wall
time: on a machine shared with other work it still counts what a step
computes, where wall time also counts the waits for a core. Images are random
(a step's cost does not depend on pixel values); the noise of noisy-sample
methods, which training adds in the input pipeline, is timed with the step.
Methods with per-example state (`sq_free`) get their batches' indices and a
perturbation memory of `num_train` examples, so the memory's gather and
scatter are timed too.

```python
configs = {m: TrainConfig(dataset="mnist", method=m) for m in ("natural", "pgd_at")}
costs = time_train_steps(configs, batch_size=128, steps=10, repeats=3)
costs["pgd_at"]["seconds_per_step"] / costs["natural"]["seconds_per_step"]
```
"""

import math
import statistics
import time

import keras
import numpy as np
import tensorflow as tf

from sq_keras import data
from sq_keras import distribute
from sq_keras import training


def _build_step(config, info, *, num_train, batch_size):
    """`config`'s train step, built as `training.train` builds it."""
    keras.utils.set_random_seed(config.seed)
    strategy = distribute.make_strategy("default")
    _, _, step = training.build_components(
        config,
        info,
        strategy,
        num_train=num_train,
        steps_per_epoch=math.ceil(num_train / batch_size),
    )
    return step


def _input_stage(config, images, labels, num_train):
    """`index -> step arguments` as the input pipeline hands them to the step.

    Noisy-sample methods get the pipeline's noise, drawn in the timed loop
    so that its cost counts; other methods get `images` as they are. Methods
    with per-example state also get the indices of batch `index`.
    """
    method = training.METHODS[config.method]
    batch_size = int(labels.shape[0])
    if training.takes_indices(config):
        # Made once per index: a training run's input pipeline hands the step
        # ready tensors, and making them here, three eager ops per call, would
        # add a fraction of a millisecond to every timed step.
        made = {}

        def with_indices(index):
            if index not in made:
                first = index * batch_size
                made[index] = (first + tf.range(batch_size, dtype=tf.int64)) % num_train
            return images, labels, made[index]

        return with_indices
    if not method.noise or config.noise == "none":
        return lambda index: (images, labels)

    @tf.function
    def noisy(index):
        seed = tf.stack([tf.constant(config.seed, tf.int64), index])
        return data.noise_batch(images, kind=config.noise, scale=config.noise_scale, seed=seed)

    return lambda index: (noisy(tf.constant(index, tf.int64)), labels)


def time_train_steps(configs, *, batch_size=128, steps=10, repeats=3, log=None, num_train=60_000):
    """Seconds per train step of each configuration, timed round-robin.

    Args:
        configs: Dict name -> `training.TrainConfig`, all of one dataset and
            run under the global Keras dtype policy (`mixed_precision`).
        batch_size: Images per step.
        steps: Timed steps per configuration and repeat.
        repeats: Round-robin repeats; the median is reported.
        log: Optional callable taking one line of progress text.
        num_train: Training-set size the steps are built for: the
            perturbation memory of `sq_free`, the length of a learning-rate
            schedule (default: MNIST's 60,000).

    Returns:
        Dict name -> {"seconds_per_step", "images_per_second",
        "all_repeats_seconds", "cpu_seconds_per_step",
        "all_repeats_cpu_seconds"} (CPU: the process's, all threads).

    Raises:
        ValueError: Bad counts, or configurations of different datasets.
    """
    _check_counts(("steps", steps), ("repeats", repeats))
    runs = build_train_steps(configs, batch_size=batch_size, num_train=num_train, log=log)
    seconds, cpu = _time_round_robin(runs, steps=steps, repeats=repeats, log=log)
    return {name: _summary(seconds[name], cpu[name], batch_size, steps) for name in runs}


def build_train_steps(configs, *, batch_size=128, num_train=60_000, log=None):
    """Each configuration's real train step, traced and run once, and its inputs.

    Args:
        configs, batch_size, num_train, log: As in `time_train_steps`.

    Returns:
        Dict name -> `(step, batch)`: `step(*batch(i))` runs train step `i`
        on random images of the dataset's shape, as `time_train_steps` times
        it (noise and memory indices included).

    Raises:
        ValueError: Bad counts, or configurations of different datasets.
    """
    _check_counts(("batch_size", batch_size), ("num_train", num_train))
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
        step = _build_step(config, info, num_train=num_train, batch_size=batch_size)
        batch = _input_stage(config, images, labels, num_train)
        float(step(*batch(0))[0])  # tracing and the first run
        runs[name] = (step, batch)
    return runs


def _check_counts(*named):
    for name, value in named:
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"`{name}` must be a positive integer. Received: {value!r}")


def _time_round_robin(runs, *, steps, repeats, log):
    """Wall and CPU seconds of `steps` steps of each run, per repeat, the runs taking
    turns; each turn's first step is untimed."""
    seconds, cpu = {name: [] for name in runs}, {name: [] for name in runs}
    for repeat in range(repeats):
        for name, (step, batch) in runs.items():
            float(step(*batch(steps))[0])  # untimed: refills the caches the previous turn took
            start, start_cpu = time.perf_counter(), time.process_time()
            for i in range(steps):
                out = step(*batch(i))
            float(out[0])  # waits for the last step
            seconds[name].append(time.perf_counter() - start)
            cpu[name].append(time.process_time() - start_cpu)
        if log:
            log(f"  timing repeat {repeat + 1}/{repeats} done")
    return seconds, cpu


def _summary(values, cpu_values, batch_size, steps):
    per_step = statistics.median(values) / steps
    return {
        "seconds_per_step": per_step,
        "images_per_second": batch_size / per_step,
        "all_repeats_seconds": values,
        "cpu_seconds_per_step": statistics.median(cpu_values) / steps,
        "all_repeats_cpu_seconds": cpu_values,
    }
