"""The input pipeline of a training run: each epoch's batches, the test batches.

Training batches are shuffled, augmented and (for noisy-sample methods)
noised with randomness keyed by `(seed, epoch)`, so every epoch differs and a
resumed run sees exactly the batches it would have seen. Small datasets are
held in memory as uint8 arrays; ImageNet streams from tensorflow-datasets and
is resized and cropped on the fly.

```python
from sq_keras import data

source = data.load_training_data(config, data.get_info("mnist"), add_noise=True)
for images, labels in source.train_batches(epoch, drop_remainder=False):
    ...   # float32 images in [0, 1], int64 labels
accuracy_batches = source.eval_batches()

# A method that keeps per-example state also gets each example's index.
source = data.load_training_data(config, info, add_noise=False, with_indices=True)
for images, labels, indices in source.train_batches(epoch, drop_remainder=False):
    ...   # indices: int64 positions in the training arrays
```

`config` is a resolved `sq_keras.training.TrainConfig`, or any object with
its attributes `dataset`, `data_dir`, `train_examples`, `eval_examples`,
`grad_examples`, `batch_size`, `seed`, `augment`, `noise` and `noise_scale`.
"""

import dataclasses

import numpy as np
import tensorflow as tf

from sq_keras.data.augment import add_augmentation
from sq_keras.data.datasets import load_arrays
from sq_keras.data.datasets import load_stream
from sq_keras.data.noise import add_noise as add_noise_stage

EVAL_BATCH_SIZE = 1000
STREAMED_EVAL_BATCH_SIZE = 64
SHUFFLE_BUFFER = 10_000


@dataclasses.dataclass
class TrainingData:
    """What the training loop needs from a dataset, whether in memory or streamed.

    Attributes:
        num_train: Training examples (None when a stream does not say).
        train_batches: `(epoch, drop_remainder) -> tf.data` of the epoch's
            `(float32 images, int64 labels)` batches, augmented and noised;
            `(images, labels, int64 indices)` when loaded `with_indices`.
            In-memory data also takes `shard=(index, count)` and
            `batch_size=` (a worker's part, see `make_train_dataset`).
        eval_batches: `() -> tf.data` of clean test batches.
        grad_x: float32 test images of the `grad_l1` curve.
        grad_y: Their labels.
        class_names: Label names.
    """

    num_train: int
    train_batches: object
    eval_batches: object
    grad_x: np.ndarray
    grad_y: np.ndarray
    class_names: tuple


def float_batches(images, labels, batch_size, *, drop_remainder=False):
    """uint8 arrays -> float32 batches in [0, 1] (cast once per batch)."""
    ds = tf.data.Dataset.from_tensor_slices((images, labels)).batch(
        batch_size, drop_remainder=drop_remainder
    )
    return ds.map(
        lambda x, y: (tf.cast(x, tf.float32) / 255.0, y),
        num_parallel_calls=tf.data.AUTOTUNE,
    )


def make_train_dataset(
    images,
    labels,
    config,
    epoch,
    *,
    add_noise,
    drop_remainder=False,
    with_indices=False,
    shard=(0, 1),
    batch_size=None,
):
    """The training batches of one epoch: shuffled, batched, augmented, noised.

    Shuffling and noise are keyed by `(config.seed, epoch)`, so every epoch
    differs and a resumed run sees exactly the batches it would have seen.

    With `shard=(w, W)` this is worker `w`'s part of the epoch: the examples
    with `index % W == w`, in the order of the whole epoch's shuffle, so a
    worker reads the same examples every epoch (and keeps only their
    perturbations, `sq_keras.training.perturbation_memory.ShardedMemory`).
    Batch `k` of every worker together make the epoch's global batch `k`.
    Augmentation and noise are keyed by the shard too.

    Args:
        images: uint8 `[N, H, W, C]`.
        labels: int `[N]`.
        config: A resolved `TrainConfig` (see the module docstring).
        epoch: 0-based epoch.
        add_noise: Whether the method trains on noisy samples
            (`config.noise` of size `config.noise_scale`).
        drop_remainder: Drop the last partial batch.
        with_indices: Also yield each example's index into `images` (the
            same batches otherwise).
        shard: `(index, count)`: only the examples of worker `index` of
            `count`; `(0, 1)` for all of them.
        batch_size: Examples per batch; default `config.batch_size` (a
            shard's batches are the global batch's share).

    Returns:
        A prefetched `tf.data.Dataset` of `(float32 images, labels)` batches,
        or `(images, labels, int64 indices)` batches `with_indices`.
    """
    order = np.random.default_rng([config.seed, epoch]).permutation(len(images))
    index, count = shard
    if count > 1:
        order = order[order % count == index]
    batch_size = batch_size or config.batch_size
    # (seed, epoch) for all the data; each shard its own key beside the others'.
    key = (config.seed, epoch * count + index)
    ds = float_batches(images[order], labels[order], batch_size, drop_remainder=drop_remainder)
    ds = add_augmentation(ds, kind=config.augment, seed=key)
    ds = _with_method_noise(ds, config, key[1], add_noise=add_noise)
    if with_indices:
        positions = tf.data.Dataset.from_tensor_slices(order.astype(np.int64)).batch(
            batch_size, drop_remainder=drop_remainder
        )
        ds = tf.data.Dataset.zip(ds, positions).map(lambda batch, index: (*batch, index))
    return ds


def with_indices(dataset):
    """`(image, label)` examples -> `({"images": image, "indices": i}, label)`.

    `i` is the example's position in `dataset`: apply this to the dataset of
    single examples in a fixed order, before shuffling, batching or
    repeating, so that an example keeps its index in every epoch. What
    `sq_keras.RobustModel` with `sq_free` / `free` (with a per-example
    memory) reads in `fit`:

    ```python
    ds = data.with_indices(tf.data.Dataset.from_tensor_slices((x, y)))
    robust.fit(ds.shuffle(10_000).batch(128), epochs=10)   # RobustModel(..., num_train=len(x))
    ```

    Raises:
        ValueError: `dataset`'s elements are not `(image, label)` pairs.
    """
    spec = dataset.element_spec
    if not isinstance(spec, tuple) or len(spec) != 2:
        raise ValueError(
            f"with_indices takes a dataset of (image, label) examples. Received elements: {spec}"
        )
    return dataset.enumerate().map(
        lambda index, example: ({"images": example[0], "indices": index}, example[1])
    )


def _with_method_noise(ds, config, epoch, *, add_noise):
    if add_noise:
        ds = add_noise_stage(
            ds, kind=config.noise, scale=config.noise_scale, seed=(config.seed, epoch)
        )
    return ds.prefetch(tf.data.AUTOTUNE)


def resize_and_crop(image, size, *, augment, seed):
    """A uint8 image of any size -> float32 `[size, size, 3]` in [0, 1].

    Resizes the shorter side to `size * 8 / 7` (256 for 224), then crops
    `size x size`: at random (and flips with probability 1/2 for
    "crop_flip") when `augment` is not "none", else in the centre.
    """
    shape = tf.cast(tf.shape(image)[:2], tf.float32)
    scale = (size * 8 / 7) / tf.reduce_min(shape)
    resized = tf.image.resize(image, tf.cast(tf.math.ceil(shape * scale), tf.int32))
    if augment == "none":
        out = tf.image.resize_with_crop_or_pad(resized, size, size)
    else:
        seeds = tf.random.experimental.stateless_split(seed, 2)
        out = tf.image.stateless_random_crop(resized, [size, size, 3], seed=seeds[0])
        if augment == "crop_flip":
            out = tf.image.stateless_random_flip_left_right(out, seed=seeds[1])
    return tf.clip_by_value(out / 255.0, 0.0, 1.0)


def _splits(config):
    train = "train" if config.train_examples is None else f"train[:{config.train_examples}]"
    test = "test" if config.eval_examples is None else f"test[:{config.eval_examples}]"
    return train, test


def _in_memory_data(config, info, *, add_noise, with_indices):
    train_split, test_split = _splits(config)
    train_x, train_y = load_arrays(config.dataset, train_split, config.data_dir)
    test_x, test_y = load_arrays(config.dataset, test_split, config.data_dir)
    return TrainingData(
        num_train=len(train_x),
        train_batches=lambda epoch, drop, **shard: make_train_dataset(
            train_x,
            train_y,
            config,
            epoch,
            add_noise=add_noise,
            drop_remainder=drop,
            with_indices=with_indices,
            **shard,
        ),
        eval_batches=lambda: float_batches(test_x, test_y, EVAL_BATCH_SIZE),
        grad_x=test_x[: config.grad_examples].astype(np.float32) / 255.0,
        grad_y=test_y[: config.grad_examples],
        class_names=info.class_names,
    )


def _streamed_train_batches(train, config, size, *, add_noise):
    """`(epoch, drop_remainder) -> tf.data` over a stream of uint8 images."""

    def train_batches(epoch, drop_remainder):
        key = tf.constant([config.seed, epoch], tf.int64)
        ds = train.shuffle(
            SHUFFLE_BUFFER, seed=config.seed * 1_000_003 + epoch, reshuffle_each_iteration=False
        )
        ds = ds.enumerate().map(
            lambda i, example: (
                resize_and_crop(
                    example[0],
                    size,
                    augment=config.augment,
                    seed=tf.random.experimental.stateless_fold_in(key, i),
                ),
                example[1],
            ),
            num_parallel_calls=tf.data.AUTOTUNE,
        )
        ds = ds.batch(config.batch_size, drop_remainder=drop_remainder)
        return _with_method_noise(ds, config, epoch, add_noise=add_noise)

    return train_batches


def _streamed_data(config, info, *, add_noise, with_indices):
    if with_indices:
        raise ValueError(
            f"{config.dataset} is streamed: its examples have no fixed index to keep "
            "per-example state by. Use a method without per-example state."
        )
    size = info.image_shape[0]
    train_split, test_split = _splits(config)
    train, num_train, names = load_stream(config.dataset, train_split, config.data_dir)
    test, _, _ = load_stream(config.dataset, test_split, config.data_dir)
    test = test.map(
        lambda x, y: (resize_and_crop(x, size, augment="none", seed=None), y),
        num_parallel_calls=tf.data.AUTOTUNE,
    )
    grad_x, grad_y = next(iter(test.batch(config.grad_examples)))
    return TrainingData(
        num_train=num_train,
        train_batches=_streamed_train_batches(train, config, size, add_noise=add_noise),
        eval_batches=lambda: test.batch(STREAMED_EVAL_BATCH_SIZE),
        grad_x=grad_x.numpy(),
        grad_y=grad_y.numpy(),
        class_names=names,
    )


def load_training_data(config, info, *, add_noise, with_indices=False):
    """The training run's data, in memory or streamed as `info` says.

    Args:
        config: A resolved `TrainConfig` (see the module docstring).
        info: The dataset's `DatasetInfo`.
        add_noise: Whether training batches get the method's noise.
        with_indices: Whether training batches also hold each example's
            index in the training set (in-memory datasets only).

    Returns:
        A `TrainingData`.

    Raises:
        sq_keras.data.DataError: Dataset files missing or corrupt.
        ValueError: `with_indices` for a streamed dataset.
    """
    load = _streamed_data if info.streaming else _in_memory_data
    return load(config, info, add_noise=add_noise, with_indices=with_indices)
