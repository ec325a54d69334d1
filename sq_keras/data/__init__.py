"""Datasets and tf.data stages.

```python
from sq_keras import data
train = data.load("mnist", "train", data_dir="../shared/data")  # (image, label)
train = data.add_noise(train.batch(128), kind="uniform", scale=0.3, seed=0)
```
"""

from sq_keras.data.augment import AUGMENTATIONS
from sq_keras.data.augment import add_augmentation
from sq_keras.data.augment import augment_batch
from sq_keras.data.datasets import DATASETS
from sq_keras.data.datasets import DataError
from sq_keras.data.datasets import DatasetInfo
from sq_keras.data.datasets import get_info
from sq_keras.data.datasets import load
from sq_keras.data.datasets import load_arrays
from sq_keras.data.datasets import load_stream
from sq_keras.data.datasets import resolve_data_dir
from sq_keras.data.noise import NOISE_KINDS
from sq_keras.data.noise import add_noise
from sq_keras.data.noise import noise_batch

__all__ = [
    "AUGMENTATIONS",
    "add_augmentation",
    "augment_batch",
    "DATASETS",
    "DataError",
    "DatasetInfo",
    "NOISE_KINDS",
    "add_noise",
    "get_info",
    "load",
    "load_arrays",
    "load_stream",
    "noise_batch",
    "resolve_data_dir",
]
