"""The error a training run raises when it cannot start or cannot go on."""


class TrainingError(RuntimeError):
    """The run cannot start or cannot go on; the message says why."""
