"""Batch augmentation: random crops and horizontal flips, applied before the noise stage.

Like the noise stage it works on whole batches with stateless random ops keyed
by `(seed, batch index)`, so an epoch's augmentation is reproducible:

```python
ds = add_augmentation(ds.batch(128), kind="crop_flip", seed=(0, epoch))
```
"""

import tensorflow as tf

AUGMENTATIONS = ("none", "crop", "crop_flip")


def augment_batch(images, *, kind, seed, padding=4):
    """Augments one batch `[N, H, W, C]`.

    Args:
        images: Float images.
        kind: "none", "crop" (zero-pad by `padding` pixels, then crop a random
            H x W window per example) or "crop_flip" (crop, then flip left-right
            with probability 1/2 per example).
        seed: Shape-[2] integer tensor for the stateless random ops.
        padding: Pixels of zero padding on each side before cropping.

    Returns:
        A batch of the same shape and dtype.
    """
    if kind not in AUGMENTATIONS:
        raise ValueError(f"`kind` must be one of {AUGMENTATIONS}. Received: kind={kind!r}")
    if kind == "none":
        return images
    shape = tf.shape(images)
    n, h, w = shape[0], shape[1], shape[2]
    seeds = tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), 3)
    padded = tf.pad(images, [[0, 0], [padding, padding], [padding, padding], [0, 0]])
    dy = tf.random.stateless_uniform([n], seeds[0], 0, 2 * padding + 1, dtype=tf.int32)
    dx = tf.random.stateless_uniform([n], seeds[1], 0, 2 * padding + 1, dtype=tf.int32)
    rows = dy[:, None] + tf.range(h)[None, :]
    cols = dx[:, None] + tf.range(w)[None, :]
    out = tf.gather(padded, rows, axis=1, batch_dims=1)
    out = tf.gather(out, cols, axis=2, batch_dims=1)
    if kind == "crop_flip":
        flip = tf.random.stateless_uniform([n], seeds[2]) < 0.5
        out = tf.where(flip[:, None, None, None], tf.reverse(out, axis=[2]), out)
    return out


def add_augmentation(dataset, *, kind, seed):
    """Augments the images of a batched `(images, labels)` dataset.

    Args:
        dataset: A `tf.data.Dataset` of `(images, labels)` batches.
        kind: One of `AUGMENTATIONS`.
        seed: A tuple of two ints, e.g. `(run_seed, epoch)`.

    Returns:
        The augmented dataset.
    """
    if kind not in AUGMENTATIONS:
        raise ValueError(f"`kind` must be one of {AUGMENTATIONS}. Received: kind={kind!r}")
    if kind == "none":
        return dataset
    a, b = seed
    key = tf.constant((int(a) * 1_000_003 + int(b) + 7_919) % (2**62), tf.int64)

    def _augment(index, batch):
        images, labels = batch
        return augment_batch(images, kind=kind, seed=tf.stack([key, index])), labels

    return dataset.enumerate().map(_augment, num_parallel_calls=tf.data.AUTOTUNE)
