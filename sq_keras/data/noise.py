"""Noisy-natural samples: a tf.data stage that perturbs batches of images.

Applied after batching, because one vectorised op per batch is much cheaper
than a map per example. Noise is drawn with stateless random ops keyed by
`(seed, batch index)`, so a seeded pipeline gives the same noise on every
run, and a different `seed` (e.g. one per epoch) gives fresh noise.

```python
ds = data.load("mnist", "train").batch(128)
ds = add_noise(ds, kind="sign", scale=0.3, seed=(0, epoch))
```
"""

import random

import tensorflow as tf

NOISE_KINDS = ("uniform", "gaussian", "sign", "none")


def noise_batch(images, *, kind, scale, seed, clip_min=0.0, clip_max=1.0):
    """Adds noise to one batch of images and clips to [clip_min, clip_max].

    Args:
        images: Float tensor of images, e.g. `[N, H, W, C]` in [0, 1].
        kind: "uniform" (U[-scale, scale]), "gaussian" (N(0, scale^2)),
            "sign" (+-scale with equal probability: the corners of the
            l-inf ball of radius `scale`) or "none".
        scale: Noise size in pixel units (>= 0).
        seed: Shape-[2] integer tensor for the stateless random ops.
        clip_min: Lower pixel bound.
        clip_max: Upper pixel bound.

    Returns:
        Noisy images with the dtype of `images`.
    """
    _check_kind_scale(kind, scale)
    if kind == "none" or scale == 0:
        return images
    shape = tf.shape(images)
    if kind == "uniform":
        delta = tf.random.stateless_uniform(shape, seed, -scale, scale)
    elif kind == "gaussian":
        delta = scale * tf.random.stateless_normal(shape, seed)
    else:
        bits = tf.random.stateless_uniform(shape, seed, 0, 2, dtype=tf.int32)
        delta = scale * (2.0 * tf.cast(bits, tf.float32) - 1.0)
    noisy = tf.cast(images, tf.float32) + delta
    return tf.cast(tf.clip_by_value(noisy, clip_min, clip_max), images.dtype)


def add_noise(dataset, *, kind, scale, seed=None, clip_min=0.0, clip_max=1.0):
    """Adds noise to the images of a batched `(images, labels)` dataset.

    Args:
        dataset: A `tf.data.Dataset` of `(images, labels)` batches.
        kind: One of `NOISE_KINDS`, see `noise_batch`.
        scale: Noise size in pixel units (>= 0).
        seed: An int, a tuple of two ints (e.g. `(run_seed, epoch)`), or
            None for fresh randomness on every call.
        clip_min: Lower pixel bound.
        clip_max: Upper pixel bound.

    Returns:
        The dataset with noisy images; labels are unchanged.
    """
    _check_kind_scale(kind, scale)
    if kind == "none" or scale == 0:
        return dataset
    if seed is None:
        seed = random.SystemRandom().randrange(2**31)
    a, b = (seed, 0) if isinstance(seed, int) else seed
    # Fold the two ints into one 63-bit key: stateless ops take a [2] seed
    # and the second slot carries the batch index.
    key = tf.constant((int(a) * 1_000_003 + int(b)) % (2**62), tf.int64)

    def _noisy(index, batch):
        images, labels = batch
        batch_seed = tf.stack([key, index])
        return (
            noise_batch(
                images,
                kind=kind,
                scale=scale,
                seed=batch_seed,
                clip_min=clip_min,
                clip_max=clip_max,
            ),
            labels,
        )

    return dataset.enumerate().map(_noisy, num_parallel_calls=tf.data.AUTOTUNE)


def _check_kind_scale(kind, scale):
    if kind not in NOISE_KINDS:
        raise ValueError(f"`kind` must be one of {NOISE_KINDS}. Received: kind={kind!r}")
    if not scale >= 0:
        raise ValueError(f"`scale` must be >= 0. Received: scale={scale}")
