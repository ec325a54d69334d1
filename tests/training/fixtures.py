"""A small training configuration shared by the training tests, and a step that dies."""

from sq_keras import training


def small_config(model_dir, **kwargs):
    """A one-epoch float32 run on 1000 MNIST images, no export; `kwargs` override."""
    defaults = dict(
        epochs=1,
        train_examples=1000,
        batch_size=100,
        grad_examples=64,
        seed=0,
        model_dir=model_dir,
        export_dir=None,
        mixed_precision="float32",
    )
    return training.TrainConfig(**{**defaults, **kwargs})


class Killed(Exception):
    """What a step built by `dying_after` raises: the process "dies" there."""


def dying_after(builder, calls):
    """A step builder whose step runs `calls` times, then raises `Killed`.

    Patch it into `training.STEP_BUILDERS` to kill a run mid-epoch; the step
    keeps the `state` the loop checkpoints.
    """

    def build(*args, **kwargs):
        step = builder(*args, **kwargs)
        return _DyingStep(step, calls)

    return build


class _DyingStep:
    def __init__(self, step, calls):
        self._step, self._left = step, calls
        self.state = getattr(step, "state", {})

    def __call__(self, *batch):
        if self._left == 0:
            raise Killed
        self._left -= 1
        return self._step(*batch)
