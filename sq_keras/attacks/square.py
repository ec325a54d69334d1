"""The l-inf Square Attack: gradient-free random search over square windows."""

from typing import NamedTuple

import tensorflow as tf

from sq_keras.attacks.linf import check_eps
from sq_keras.attacks.linf import check_positive_int
from sq_keras.attacks.linf import clip_to_bounds
from sq_keras.attacks.linf import inputs
from sq_keras.attacks.linf import loss_and_fooled
from sq_keras.attacks.linf import project
from sq_keras.attacks.linf import stream_seed
from sq_keras.attacks.losses import margin_loss


def square_fraction(iteration, num_iterations, p_init):
    """Share `p` of pixels a Square Attack window covers at `iteration`.

    Andriushchenko et al. 2020, "Square Attack: a query-efficient black-box
    adversarial attack via random search", section 3: `p` halves at
    iterations 10, 50, 200, 500, 1000, 2000, 4000, 6000 and 8000 of a
    10,000-iteration run, rescaled to `num_iterations`.
    """
    scaled = tf.cast(iteration, tf.float32) / float(max(num_iterations, 1)) * 10000.0
    boundaries = tf.constant([10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000], tf.float32)
    halvings = tf.reduce_sum(tf.cast(scaled > boundaries, tf.float32))
    return p_init / tf.pow(2.0, halvings)


def square(
    model_fn,
    x,
    y,
    *,
    eps,
    max_queries,
    p_init=0.8,
    clip_min=0.0,
    clip_max=1.0,
    seed=0,
):
    """l-inf Square Attack: random search over square patches, no gradients.

    Andriushchenko et al. 2020, Algorithm 1 with the l-inf update of
    section 3.1. Starts from vertical stripes of `+-eps`; at each iteration
    every example proposes a random square window of side
    `round(sqrt(p * H * W))` set to `+-eps` (one random sign per channel) and
    accepts it if the margin `z_y - max_{j != y} z_j` decreases. An example
    stops querying once misclassified. `p_init=0.8` is the value used in
    AutoAttack (Croce and Hein 2020) and ART.

    Args:
        model_fn: Callable mapping images to logits; only its outputs are used.
        x: Clean images, float `[N, H, W, C]`.
        y: True labels, int `[N]`.
        eps: l-inf radius in pixel units, in [0, 1].
        max_queries: Forward passes allowed per example, the initial one
            included (> 0).
        p_init: Initial share of pixels changed by a window, in (0, 1].
        clip_min: Smallest valid pixel value.
        clip_max: Largest valid pixel value.
        seed: Integer seed.

    Returns:
        `(x_adv, queries)`: adversarial images (gradient stopped) and the
        int32 `[N]` number of queries each example used.

    Raises:
        ValueError: Bad `eps`, `max_queries` or `p_init`.
    """
    x, y = _checked_inputs(x, y, eps=eps, max_queries=max_queries, p_init=p_init)
    grid = _grid(x)
    num_iterations = max_queries - 1

    stripes = _random_signs([grid.batch, 1, grid.width, grid.channels], seed, 0, x.dtype)
    x_best = clip_to_bounds(x + eps * stripes, clip_min, clip_max)
    margin, fooled = _margin_and_fooled(model_fn, x_best, y)
    queries = tf.ones([grid.batch], tf.int32)

    for i in tf.range(num_iterations):
        if tf.reduce_all(fooled):
            break
        active = ~fooled
        window = _window(grid, i, num_iterations=num_iterations, p_init=p_init, seed=seed)
        signs = _random_signs([grid.batch, 1, 1, grid.channels], seed, 3 * i + 3, x.dtype)
        delta = tf.where(window, eps * signs, x_best - x)
        x_new = clip_to_bounds(x + delta, clip_min, clip_max)
        margin_new, fooled_new = _margin_and_fooled(model_fn, x_new, y)
        accept = active & (margin_new < margin)
        x_best = tf.where(tf.reshape(accept, [-1, 1, 1, 1]), x_new, x_best)
        margin = tf.where(accept, margin_new, margin)
        fooled = tf.where(accept, fooled_new, fooled)
        queries += tf.cast(active, tf.int32)

    x_best = project(x_best, x, eps, clip_min, clip_max)
    return tf.stop_gradient(x_best), queries


def _checked_inputs(x, y, *, eps, max_queries, p_init):
    """`inputs(x, y)` after checking the arguments of `square`.

    Raises:
        ValueError: Bad `eps`, `max_queries` or `p_init`, or `x` not
            `[N, H, W, C]` with a known `C`.
    """
    check_eps(eps)
    check_positive_int("max_queries", max_queries)
    if not 0.0 < p_init <= 1.0:
        raise ValueError(f"`p_init` must be in (0, 1]. Received: p_init={p_init}")
    x, y = inputs(x, y)
    if x.shape.rank != 4 or x.shape[-1] is None:
        raise ValueError(f"`x` must be [N, H, W, C] with a known C. Received shape {x.shape}")
    return x, y


class _Grid(NamedTuple):
    """Sizes of a batch of images and the pixel coordinates of its windows."""

    batch: tf.Tensor
    height: tf.Tensor
    width: tf.Tensor
    channels: int
    rows: tf.Tensor  # [1, H, 1, 1]
    cols: tf.Tensor  # [1, 1, W, 1]
    side_max: tf.Tensor  # Largest window side.


def _grid(x):
    shape = tf.shape(x)
    batch, height, width = shape[0], shape[1], shape[2]
    return _Grid(
        batch=batch,
        height=height,
        width=width,
        channels=x.shape[-1],
        rows=tf.reshape(tf.range(height), [1, -1, 1, 1]),
        cols=tf.reshape(tf.range(width), [1, 1, -1, 1]),
        side_max=tf.maximum(tf.minimum(height, width) - 1, 1),
    )


def _random_signs(shape, seed, stream, dtype):
    """Uniform random `+-1` of `shape` from one stateless random stream."""
    bits = tf.random.stateless_uniform(
        shape, seed=stream_seed(seed, stream), maxval=2, dtype=tf.int32
    )
    return tf.cast(2 * bits - 1, dtype)


def _margin_and_fooled(model_fn, images, y):
    """Per example, `z_y - max_{j != y} z_j` and whether `images` are misclassified."""
    losses, fooled = loss_and_fooled(model_fn, images, y, margin_loss)
    return -losses, fooled


def _window(grid, i, *, num_iterations, p_init, seed):
    """Iteration `i`'s square window per example, a bool `[N, H, W, 1]` mask.

    Its side is `round(sqrt(p * H * W))` (see `square_fraction`), clipped to
    `[1, min(H, W) - 1]`; its top-left corner is uniform over the positions
    that keep it inside the image.
    """
    p = square_fraction(i, num_iterations, p_init)
    area = p * tf.cast(grid.height * grid.width, tf.float32)
    side = tf.clip_by_value(tf.cast(tf.round(tf.sqrt(area)), tf.int32), 1, grid.side_max)
    top = tf.random.stateless_uniform(
        [grid.batch, 1, 1, 1],
        seed=stream_seed(seed, 3 * i + 1),
        maxval=grid.height - side + 1,
        dtype=tf.int32,
    )
    left = tf.random.stateless_uniform(
        [grid.batch, 1, 1, 1],
        seed=stream_seed(seed, 3 * i + 2),
        maxval=grid.width - side + 1,
        dtype=tf.int32,
    )
    rows, cols = grid.rows, grid.cols
    return (rows >= top) & (rows < top + side) & (cols >= left) & (cols < left + side)
