"""A small training configuration shared by the training tests."""

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
