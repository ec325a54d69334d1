"""The l-inf machinery every attack shares.

Projection onto the eps-ball and the pixel range, argument checks whose
messages say what to pass instead, stateless random streams, the gradient
step of the attack loops and the per-example bookkeeping of the most damaging
point visited. `eps` is in pixel units of the [0, 1] range.
"""

import tensorflow as tf

from sq_keras.attacks.losses import loss_gradient

# ---------------------------------------------------------------------------
# Projection and scoring.


def project_linf(x_adv, x, eps):
    """Projects `x_adv` onto the l-inf ball of radius `eps` around `x`."""
    return tf.clip_by_value(x_adv, x - eps, x + eps)


def clip_to_bounds(x, clip_min=0.0, clip_max=1.0):
    """Clips `x` to the valid pixel range `[clip_min, clip_max]`."""
    return tf.clip_by_value(x, clip_min, clip_max)


def project(x_adv, x, eps, clip_min, clip_max):
    """`project_linf`, then `clip_to_bounds`: a valid point of the eps-ball."""
    return clip_to_bounds(project_linf(x_adv, x, eps), clip_min, clip_max)


def predictions(model_fn, x):
    """Arg-max class of `model_fn(x)` as int64."""
    return tf.argmax(model_fn(x), axis=-1, output_type=tf.int64)


def accuracy(model_fn, x, y):
    """Share of `x` that `model_fn` classifies as `y`, a float in [0, 1]."""
    correct = tf.equal(predictions(model_fn, x), tf.cast(y, tf.int64))
    return float(tf.reduce_mean(tf.cast(correct, tf.float32)))


def misclassified(logits, y):
    """Per example, whether the arg-max of `logits` differs from `y`."""
    return tf.not_equal(tf.argmax(logits, -1, output_type=tf.int64), y)


# ---------------------------------------------------------------------------
# Argument checks.


def symbolic(value):
    """A graph tensor, whose value is only known when the graph runs."""
    return tf.is_tensor(value) and not hasattr(value, "numpy")


def check_eps(eps):
    """Raises ValueError unless `eps` is in [0, 1] (or only known in a graph)."""
    if symbolic(eps):
        return  # e.g. a training schedule's eps; it cannot be checked here
    if not 0.0 <= float(eps) <= 1.0:
        raise ValueError(f"`eps` must be in [0, 1]. Received: eps={eps}")


def check_positive_int(name, value):
    """Raises ValueError unless the argument `name` is a positive Python int."""
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"`{name}` must be a positive integer. Received: {name}={value}")


def check_step_size(step_size):
    """Raises ValueError unless `step_size` is > 0 (or only known in a graph)."""
    if not symbolic(step_size) and not step_size > 0:
        raise ValueError(f"`step_size` must be > 0. Received: step_size={step_size}")


def inputs(x, y):
    """`x` as float32 and `y` as an int64 vector of labels.

    Raises:
        ValueError: `y` is not a vector.
    """
    x = tf.convert_to_tensor(x, tf.float32)
    y = tf.cast(tf.convert_to_tensor(y), tf.int64)
    if y.shape.rank != 1:
        raise ValueError(f"`y` must be a vector of labels. Received shape {y.shape}")
    return x, y


# ---------------------------------------------------------------------------
# Randomness.


def stream_seed(seed, stream):
    """A stateless-RNG seed pair for one independent random stream."""
    return tf.stack([tf.cast(seed, tf.int64), tf.cast(stream, tf.int64)])


def uniform_start(x, *, eps, seed, stream, clip_min, clip_max):
    """A uniform random point of the eps-ball around `x`, within the bounds."""
    noise = tf.random.stateless_uniform(
        tf.shape(x), seed=stream_seed(seed, stream), minval=-eps, maxval=eps, dtype=x.dtype
    )
    return project(x + noise, x, eps, clip_min, clip_max)


# ---------------------------------------------------------------------------
# Steps and the most damaging point.


def loss_and_gradient(model_fn, x_adv, y, loss_fn):
    """Per-example losses, fooled mask and d(sum of losses)/dx at `x_adv`."""
    losses, logits, gradient = loss_gradient(model_fn, x_adv, y, loss_fn)
    return losses, misclassified(logits, y), gradient


def gradient_step(model_fn, loss_fn):
    """`loss_and_gradient` as a function call that TensorFlow does not inline.

    Used inside the attack loops. Inlined into a `tf.while_loop`, the forward
    and backward ops of a step become one cycle of the lowered loop graph;
    oneDNN's graph rewrite then visits them in an order that depends on the
    trace, and when it meets a MaxPoolGrad before its MaxPool it leaves it on
    the generic kernel (measured 2 ms instead of 0.14 ms per MaxPoolGrad on
    100 images in bfloat16, so some traced attacks ran ~1.4x slower than
    others of the same graph). A separate
    function body has no cycle, so every trace gets the same kernels.
    """
    return tf.function(
        lambda x_adv, y: loss_and_gradient(model_fn, x_adv, y, loss_fn),
        reduce_retracing=True,  # Restarts call it on shrinking batches.
        experimental_attributes={"_noinline": True},
    )


def loss_and_fooled(model_fn, x_adv, y, loss_fn):
    """Per-example losses and fooled mask at `x_adv`, without a gradient."""
    logits = tf.cast(model_fn(x_adv), tf.float32)
    fooled = misclassified(logits, y)
    return loss_fn(logits, y), fooled


def running(step, num_steps, fooled, stop_when_all_fooled):
    """Loop condition of an iterative attack: steps left, and with
    `stop_when_all_fooled` an example of the batch not yet fooled."""
    more = step < num_steps
    if stop_when_all_fooled:
        return tf.logical_and(more, tf.logical_not(tf.reduce_all(fooled)))
    return more


def initial_best(x):
    """The `(x, fooled, loss)` bookkeeping before any point was visited."""
    batch = tf.shape(x)[0]
    return (x, tf.zeros([batch], tf.bool), tf.fill([batch], -float("inf")))


def keep_more_damaging(best, candidate):
    """Per example, keeps a misclassified point if any, else the highest loss.

    `best` and `candidate` are `(x, fooled, loss)` triples.
    """
    best_x, best_fooled, best_loss = best
    x, fooled, loss = candidate
    better = (fooled & ~best_fooled) | ((fooled == best_fooled) & (loss > best_loss))
    mask = tf.reshape(better, [-1] + [1] * (x.shape.rank - 1))
    return (
        tf.where(mask, x, best_x),
        best_fooled | fooled,
        tf.where(better, loss, best_loss),
    )


def score_and_keep(best, model_fn, x_adv, y, loss_fn):
    """Scores the final iterate `x_adv` and keeps it where more damaging."""
    losses, fooled = loss_and_fooled(model_fn, x_adv, y, loss_fn)
    return keep_more_damaging(best, (x_adv, fooled, losses))
