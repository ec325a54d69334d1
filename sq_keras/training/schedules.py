"""Schedules over a run: the quantizer's steepness per epoch, the learning rate per step.

```python
ALPHA_SCHEDULES                 # ("geometric", "linear", "constant")
alpha_at(config, epoch=0)       # config.alpha_start under "geometric"
LR_SCHEDULES                    # ("constant", "piecewise", "cosine", "onecycle")
learning_rate(config, total_steps=3000)  # a float, or a LearningRate schedule
```

The learning rate is a function of the optimiser's step counter, which the
checkpoint holds, so a resumed run continues the schedule where it stopped.
"""

import math

import keras
import tensorflow as tf

from sq_keras import layers

# The `kind`s of `sq_keras.layers.alpha_schedule`.
ALPHA_SCHEDULES = ("geometric", "linear", "constant")

LR_SCHEDULES = ("constant", "piecewise", "cosine", "onecycle")

# Where "onecycle" peaks, as a fraction of the run (Wong, Rice and Kolter 2020).
ONECYCLE_PEAK = 0.4

# The factor "piecewise" multiplies the rate by for the run's last part.
PIECEWISE_DROP = 0.1


def alpha_at(config, epoch):
    """The steepness of 0-based `epoch` under `config`'s alpha schedule."""
    return layers.alpha_schedule(
        epoch,
        config.epochs,
        start=config.alpha_start,
        end=config.alpha_end,
        kind=config.alpha_schedule,
    )


@keras.saving.register_keras_serializable(package="sq_keras")
class LearningRate(keras.optimizers.schedules.LearningRateSchedule):
    """A learning rate over `total_steps` optimiser steps, at most `max_rate`.

    * "piecewise": `max_rate`, then `0.1 * max_rate` for the last
      `drop_fraction` of the steps (the first of the two x0.1 drops, at half
      of the run, of Rice, Wong and Kolter 2020, "Overfitting in
      adversarially robust deep learning");
    * "cosine": `max_rate * (1 + cos(pi * t / total_steps)) / 2` (Loshchilov
      and Hutter 2017, SGDR, without restarts);
    * "onecycle": linear from 0 up to `max_rate` at 40% of the steps, then
      linear down to 0 at the last step (the cyclic rate of Wong, Rice and
      Kolter 2020, "Fast is better than free"); the update of 0-based step t
      uses the rate at `t + 1`, as their code does.

    Args:
        kind: One of "piecewise", "cosine", "onecycle".
        max_rate: The largest rate (> 0).
        total_steps: Optimiser steps of the whole run (>= 1).
        drop_fraction: "piecewise": share of the steps at the lowered rate,
            in (0, 1).
    """

    def __init__(self, kind, max_rate, total_steps, drop_fraction=0.5):
        if kind not in LR_SCHEDULES[1:]:
            raise ValueError(f"`kind` must be one of {LR_SCHEDULES[1:]}. Received: kind={kind!r}")
        if not max_rate > 0:
            raise ValueError(f"`max_rate` must be > 0. Received: max_rate={max_rate}")
        if int(total_steps) < 1:
            raise ValueError(f"`total_steps` must be >= 1. Received: total_steps={total_steps}")
        if not 0 < drop_fraction < 1:
            raise ValueError(
                f"`drop_fraction` must be in (0, 1). Received: drop_fraction={drop_fraction}"
            )
        self.kind = kind
        self.max_rate = float(max_rate)
        self.total_steps = int(total_steps)
        self.drop_fraction = float(drop_fraction)

    def __call__(self, step):
        t = tf.cast(step, tf.float32)
        total = float(self.total_steps)
        if self.kind == "piecewise":
            boundary = float(round((1.0 - self.drop_fraction) * total))
            return tf.where(t < boundary, self.max_rate, PIECEWISE_DROP * self.max_rate)
        if self.kind == "cosine":
            done = tf.minimum(t, total) / total
            return self.max_rate * 0.5 * (1.0 + tf.cos(math.pi * done))
        done = tf.minimum(t + 1.0, total) / total
        rising = done / ONECYCLE_PEAK
        falling = (1.0 - done) / (1.0 - ONECYCLE_PEAK)
        return self.max_rate * tf.where(done <= ONECYCLE_PEAK, rising, falling)

    def get_config(self):
        return {
            "kind": self.kind,
            "max_rate": self.max_rate,
            "total_steps": self.total_steps,
            "drop_fraction": self.drop_fraction,
        }


def learning_rate(config, total_steps):
    """The optimiser's learning rate under `config.lr_schedule`.

    Args:
        config: A resolved `TrainConfig` (`learning_rate`, `lr_schedule`,
            `lr_drop_fraction`).
        total_steps: Optimiser steps of the whole run; None when unknown
            (a stream that does not say its size).

    Returns:
        `config.learning_rate` itself under "constant", else a `LearningRate`.

    Raises:
        ValueError: A non-constant schedule without `total_steps`.
    """
    if config.lr_schedule == "constant":
        return config.learning_rate
    if total_steps is None:
        raise ValueError(
            f"--lr_schedule={config.lr_schedule} needs the number of steps per epoch, "
            f"unknown for this {config.dataset} training data (a stream that does not say "
            "its size). Use --lr_schedule=constant."
        )
    return LearningRate(
        config.lr_schedule,
        config.learning_rate,
        total_steps,
        drop_fraction=config.lr_drop_fraction,
    )
