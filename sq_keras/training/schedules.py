"""The quantizer's steepness over a run: the schedules and one epoch's alpha.

```python
ALPHA_SCHEDULES                 # ("geometric", "linear", "constant")
alpha_at(config, epoch=0)       # config.alpha_start under "geometric"
```
"""

from sq_keras import layers

# The `kind`s of `sq_keras.layers.alpha_schedule`.
ALPHA_SCHEDULES = ("geometric", "linear", "constant")


def alpha_at(config, epoch):
    """The steepness of 0-based `epoch` under `config`'s alpha schedule."""
    return layers.alpha_schedule(
        epoch,
        config.epochs,
        start=config.alpha_start,
        end=config.alpha_end,
        kind=config.alpha_schedule,
    )
