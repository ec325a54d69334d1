"""Datasets and tf.data stages.

```python
from sq_keras import data
train = data.load("mnist", "train", data_dir="../shared/data")  # (image, label)
train = data.add_noise(train.batch(128), kind="uniform", scale=0.3, seed=0)
```

A training run's input pipeline (each epoch's shuffled, augmented and noised
batches, the test batches, ImageNet streamed) is `load_training_data`.
"""

from sq_keras.data.augment import AUGMENTATIONS
from sq_keras.data.augment import add_augmentation
from sq_keras.data.augment import augment_batch
from sq_keras.data.datasets import DATASETS
from sq_keras.data.datasets import DataError
from sq_keras.data.datasets import DatasetInfo
from sq_keras.data.datasets import environment_for_subprocess
from sq_keras.data.datasets import get_info
from sq_keras.data.datasets import load
from sq_keras.data.datasets import load_arrays
from sq_keras.data.datasets import load_stream
from sq_keras.data.datasets import resolve_data_dir
from sq_keras.data.datasets import split_slice
from sq_keras.data.noise import NOISE_KINDS
from sq_keras.data.noise import add_noise
from sq_keras.data.noise import noise_batch
from sq_keras.data.pipeline import TrainingData
from sq_keras.data.pipeline import float_batches
from sq_keras.data.pipeline import load_training_data
from sq_keras.data.pipeline import make_train_dataset
from sq_keras.data.pipeline import resize_and_crop
from sq_keras.data.pipeline import with_indices

__all__ = [
    "AUGMENTATIONS",
    "add_augmentation",
    "augment_batch",
    "DATASETS",
    "DataError",
    "DatasetInfo",
    "NOISE_KINDS",
    "TrainingData",
    "add_noise",
    "environment_for_subprocess",
    "float_batches",
    "get_info",
    "load",
    "load_arrays",
    "load_stream",
    "load_training_data",
    "make_train_dataset",
    "noise_batch",
    "resize_and_crop",
    "resolve_data_dir",
    "split_slice",
    "with_indices",
]
