"""l-inf adversarial attacks on pixel-space classifiers.

Every attack is a pure function of a `model_fn` that maps images in [0, 1]
(float32, channels last) to logits, the clean images `x` and their true labels
`y`. Hyper-parameters are keyword-only. The result is `tf.stop_gradient`-ed and
always lies inside the l-inf ball of radius `eps` around `x` and inside
`[clip_min, clip_max]`. `eps` is in pixel units of the [0, 1] range (MNIST's
standard 0.3 is 76.5 grey levels out of 255).

```python
import tensorflow as tf
from sq_keras import attacks

model_fn = lambda images: model(images, training=False)   # a keras.Model

x_adv = attacks.fgsm(model_fn, x, y, eps=0.3)
x_adv = attacks.pgd(model_fn, x, y, eps=0.3, step_size=0.01, num_steps=100,
                    restarts=5, loss="margin", seed=0)
x_adv = attacks.apgd(model_fn, x, y, eps=0.3, num_steps=100, loss="dlr")
x_adv, queries = attacks.square(model_fn, x, y, eps=0.3, max_queries=5000)

# Craft on a surrogate (e.g. a naturally trained model), score on the target.
x_adv = attacks.transfer(surrogate_fn, x, y, eps=0.3, step_size=0.01,
                         num_steps=100)

# BPDA: forward pass through the real defence, backward pass through a
# stand-in of every SoftQuantization layer; then any gradient attack applies.
x_adv = attacks.pgd(attacks.bpda(model, stand_in="identity"), x, y,
                    eps=0.3, step_size=0.01, num_steps=100)

accuracy = attacks.accuracy(model_fn, x_adv, y)
```

All attacks work eagerly and inside `tf.function` (wrap the call, not the
model: `tf.function(lambda x, y: attacks.pgd(model_fn, x, y, ...))`); loops are
written so that AutoGraph turns them into `tf.while_loop`s. Randomness is
stateless and derived from the integer `seed`, so a call is reproducible.

Gradient attacks keep, per example, the most damaging iterate they visited
(a misclassified one if any, else the one with the highest loss), over all
steps and restarts. Hence, with a fixed `seed`, more steps or more restarts can
never raise the robust accuracy they report.
"""

import functools

import keras
import tensorflow as tf

from sq_keras.layers import SoftQuantization
from sq_keras.layers import quantization_layers

LOSSES = ("ce", "margin", "dlr")
STAND_INS = ("identity", "smooth")


# ---------------------------------------------------------------------------
# Small helpers.


def project_linf(x_adv, x, eps):
    """Projects `x_adv` onto the l-inf ball of radius `eps` around `x`."""
    return tf.clip_by_value(x_adv, x - eps, x + eps)


def clip_to_bounds(x, clip_min=0.0, clip_max=1.0):
    """Clips `x` to the valid pixel range `[clip_min, clip_max]`."""
    return tf.clip_by_value(x, clip_min, clip_max)


def _project(x_adv, x, eps, clip_min, clip_max):
    return clip_to_bounds(project_linf(x_adv, x, eps), clip_min, clip_max)


def predictions(model_fn, x):
    """Arg-max class of `model_fn(x)` as int64."""
    return tf.argmax(model_fn(x), axis=-1, output_type=tf.int64)


def accuracy(model_fn, x, y):
    """Share of `x` that `model_fn` classifies as `y`, a float in [0, 1]."""
    correct = tf.equal(predictions(model_fn, x), tf.cast(y, tf.int64))
    return float(tf.reduce_mean(tf.cast(correct, tf.float32)))


def _other_max(logits, y, num_classes):
    """Largest logit among the wrong classes."""
    one_hot = tf.one_hot(y, num_classes, dtype=logits.dtype)
    return tf.reduce_max(logits - one_hot * 1e9, axis=-1)


def cross_entropy_loss(logits, y):
    """Per-example softmax cross-entropy; attacks maximise it."""
    return tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y, logits=logits)


def margin_loss(logits, y):
    """Per-example Carlini-Wagner margin `max_{j != y} z_j - z_y`.

    Carlini and Wagner 2017, "Towards Evaluating the Robustness of Neural
    Networks", loss f_6. Positive exactly when the example is misclassified.
    It does not saturate like the cross-entropy on confident examples.
    """
    num_classes = logits.shape[-1]
    true = tf.reduce_sum(tf.one_hot(y, num_classes, dtype=logits.dtype) * logits, -1)
    return _other_max(logits, y, num_classes) - true


def dlr_loss(logits, y):
    """Per-example Difference of Logits Ratio of Croce and Hein 2020.

    `-(z_y - max_{j != y} z_j) / (z_pi1 - z_pi3 + 1e-12)` with `z_pi1 >= z_pi2
    >= z_pi3` the sorted logits ("Reliable evaluation of adversarial robustness
    with an ensemble of diverse parameter-free attacks", eq. 5). Invariant to
    shifting and scaling the logits; needs at least 3 classes.
    """
    num_classes = logits.shape[-1]
    if num_classes is not None and num_classes < 3:
        raise ValueError(
            f"The DLR loss needs at least 3 classes. Received: num_classes={num_classes}"
        )
    top = tf.math.top_k(logits, k=3).values
    return margin_loss(logits, y) / (top[:, 0] - top[:, 2] + 1e-12)


_LOSS_FNS = {"ce": cross_entropy_loss, "margin": margin_loss, "dlr": dlr_loss}


def _loss_fn(loss):
    if loss not in _LOSS_FNS:
        raise ValueError(f"`loss` must be one of {LOSSES}. Received: loss={loss!r}")
    return _LOSS_FNS[loss]


def _symbolic(value):
    """A graph tensor, whose value is only known when the graph runs."""
    return tf.is_tensor(value) and not hasattr(value, "numpy")


def _check_eps(eps):
    if _symbolic(eps):
        return  # e.g. a training schedule's eps; it cannot be checked here
    if not 0.0 <= float(eps) <= 1.0:
        raise ValueError(f"`eps` must be in [0, 1]. Received: eps={eps}")


def _check_positive_int(name, value):
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"`{name}` must be a positive integer. Received: {name}={value}")


def _inputs(x, y):
    x = tf.convert_to_tensor(x, tf.float32)
    y = tf.cast(tf.convert_to_tensor(y), tf.int64)
    if y.shape.rank != 1:
        raise ValueError(f"`y` must be a vector of labels. Received shape {y.shape}")
    return x, y


def _seed(seed, stream):
    """A stateless-RNG seed pair for one independent random stream."""
    return tf.stack([tf.cast(seed, tf.int64), tf.cast(stream, tf.int64)])


def _uniform_ball(x, eps, seed):
    return tf.random.stateless_uniform(
        tf.shape(x), seed=seed, minval=-eps, maxval=eps, dtype=x.dtype
    )


def loss_gradient(model_fn, x, y, loss="ce"):
    """Per-example losses, float32 logits and the input gradient of their sum.

    The one place the input gradient of a loss is computed: attacks step
    along it, training penalises its norm (`gradnorm`, differentiable when
    called under an outer tape) and monitors it (`grad_l1`), and the
    evaluator counts examples where it vanishes.

    Args:
        model_fn: Callable mapping images to logits.
        x: Images, float tensor.
        y: True labels, int `[N]`.
        loss: A name of `LOSSES` or a callable `(float32 logits, y) -> [N]`.

    Returns:
        `(losses, logits, gradient)`; `gradient` has the shape of `x` and is
        zero when the model does not depend on its input.
    """
    loss_fn = loss if callable(loss) else _loss_fn(loss)
    x = tf.convert_to_tensor(x)
    with tf.GradientTape() as tape:
        tape.watch(x)
        logits = tf.cast(model_fn(x), tf.float32)
        losses = loss_fn(logits, y)
    gradient = tape.gradient(losses, x)
    if gradient is None:  # The model does not depend on its input at all.
        gradient = tf.zeros_like(x)
    return losses, logits, gradient


def _loss_and_gradient(model_fn, x_adv, y, loss_fn):
    """Per-example losses, fooled mask and d(sum of losses)/dx at `x_adv`."""
    losses, logits, gradient = loss_gradient(model_fn, x_adv, y, loss_fn)
    fooled = tf.not_equal(tf.argmax(logits, -1, output_type=tf.int64), y)
    return losses, fooled, gradient


def _gradient_step(model_fn, loss_fn):
    """`_loss_and_gradient` as a function call that TensorFlow does not inline.

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
        lambda x_adv, y: _loss_and_gradient(model_fn, x_adv, y, loss_fn),
        reduce_retracing=True,  # Restarts call it on shrinking batches.
        experimental_attributes={"_noinline": True},
    )


def _loss_and_fooled(model_fn, x_adv, y, loss_fn):
    logits = tf.cast(model_fn(x_adv), tf.float32)
    fooled = tf.not_equal(tf.argmax(logits, -1, output_type=tf.int64), y)
    return loss_fn(logits, y), fooled


def _keep_most_damaging(best, candidate):
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


def _initial_best(x):
    batch = tf.shape(x)[0]
    return (x, tf.zeros([batch], tf.bool), tf.fill([batch], -float("inf")))


# ---------------------------------------------------------------------------
# Gradient attacks.


def fgsm(model_fn, x, y, *, eps, loss="ce", clip_min=0.0, clip_max=1.0):
    """Fast Gradient Sign Method: one step of size `eps` along the gradient sign.

    Goodfellow, Shlens and Szegedy 2015, "Explaining and Harnessing
    Adversarial Examples": `x_adv = clip(x + eps * sign(grad_x L(x, y)))`.

    Args:
        model_fn: Callable mapping images in [clip_min, clip_max] to logits.
        x: Clean images, float `[N, H, W, C]`.
        y: True labels, int `[N]`.
        eps: l-inf radius in pixel units, in [0, 1].
        loss: "ce", "margin" or "dlr", see `LOSSES`.
        clip_min: Smallest valid pixel value.
        clip_max: Largest valid pixel value.

    Returns:
        Adversarial images, same shape as `x`, gradient stopped.

    Raises:
        ValueError: Bad `eps` or `loss`.
    """
    _check_eps(eps)
    loss_fn = _loss_fn(loss)
    x, y = _inputs(x, y)
    _, _, gradient = _loss_and_gradient(model_fn, x, y, loss_fn)
    x_adv = _project(x + eps * tf.sign(gradient), x, eps, clip_min, clip_max)
    return tf.stop_gradient(x_adv)


def pgd(
    model_fn,
    x,
    y,
    *,
    eps,
    step_size,
    num_steps,
    restarts=1,
    random_start=True,
    loss="ce",
    clip_min=0.0,
    clip_max=1.0,
    seed=0,
    keep_most_damaging=True,
):
    """l-inf Projected Gradient Descent with random restarts.

    Madry et al. 2018, "Towards Deep Learning Models Resistant to Adversarial
    Attacks": from a uniform random start in the eps-ball, repeat
    `x <- clip(proj_eps(x + step_size * sign(grad_x L(x, y))))`. Each restart
    draws a new start; per example the most damaging point visited over all
    steps and restarts is returned. Restarts after the first only attack the
    examples that are still classified correctly (a misclassified point is
    already the most damaging kind), which makes restarts cheap on weak models.

    Args:
        model_fn: Callable mapping images to logits.
        x: Clean images, float `[N, H, W, C]`.
        y: True labels, int `[N]`.
        eps: l-inf radius in pixel units, in [0, 1].
        step_size: Size of each signed-gradient step (> 0).
        num_steps: Gradient steps per restart (> 0).
        restarts: Number of random starts (> 0).
        random_start: Start from a uniform point of the eps-ball; if False
            the first restart starts at `x` (later ones are still random).
        loss: "ce" (cross-entropy) or "margin" (Carlini-Wagner), or "dlr".
        clip_min: Smallest valid pixel value.
        clip_max: Largest valid pixel value.
        seed: Integer seed (or int tensor) of the random starts.
        keep_most_damaging: Return, per example, the most damaging point
            visited over all steps and restarts (for evaluation). If False,
            return the last iterate of the most damaging restart; with one
            restart this saves the final forward pass (for adversarial
            training).

    Returns:
        Adversarial images, same shape as `x`, gradient stopped.

    Raises:
        ValueError: Bad `eps`, `step_size`, `num_steps`, `restarts` or `loss`.
    """
    _check_eps(eps)
    _check_positive_int("num_steps", num_steps)
    _check_positive_int("restarts", restarts)
    if not _symbolic(step_size) and not step_size > 0:
        raise ValueError(f"`step_size` must be > 0. Received: step_size={step_size}")
    loss_fn = _loss_fn(loss)
    x, y = _inputs(x, y)

    gradient_step = _gradient_step(model_fn, loss_fn)

    def one_restart(x, y, start, best):
        x_adv = start
        for _ in tf.range(num_steps):
            losses, fooled, gradient = gradient_step(x_adv, y)
            if keep_most_damaging:
                best = _keep_most_damaging(best, (x_adv, fooled, losses))
            x_adv = _project(x_adv + step_size * tf.sign(gradient), x, eps, clip_min, clip_max)
        return x_adv, best

    best = _initial_best(x)
    for restart in range(restarts):
        start = x
        if random_start or restart > 0:
            noise = _uniform_ball(x, eps, _seed(seed, restart))
            start = _project(x + noise, x, eps, clip_min, clip_max)
        if restart == 0:
            x_adv, best = one_restart(x, y, start, best)
            if restarts == 1 and not keep_most_damaging:
                return tf.stop_gradient(x_adv)
            losses, fooled = _loss_and_fooled(model_fn, x_adv, y, loss_fn)
            best = _keep_most_damaging(best, (x_adv, fooled, losses))
            continue
        # Later restarts only attack the examples no restart has fooled yet;
        # every example keeps its own random start, so the result does not
        # depend on which other examples share the batch.
        index = tf.where(~best[1])

        def attack_remaining(best=best, index=index, start=start):
            x_sub, y_sub, start_sub = (tf.gather_nd(t, index) for t in (x, y, start))
            best_sub = tuple(tf.gather_nd(t, index) for t in best)
            x_adv, best_sub = one_restart(x_sub, y_sub, start_sub, best_sub)
            losses, fooled = _loss_and_fooled(model_fn, x_adv, y_sub, loss_fn)
            best_sub = _keep_most_damaging(best_sub, (x_adv, fooled, losses))
            return tuple(tf.tensor_scatter_nd_update(b, index, s) for b, s in zip(best, best_sub))

        # Nothing left to attack: skip the model (convolutions on an empty
        # batch fail on some CPU kernels).
        best = tf.cond(tf.shape(index)[0] > 0, attack_remaining, lambda best=best: best)
    return tf.stop_gradient(best[0])


def apgd_checkpoints(num_steps):
    """Iterations at which APGD may halve its step size.

    Croce and Hein 2020, section 3.2: `p_0 = 0`, `p_1 = 0.22`,
    `p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06)` and `w_j = ceil(p_j *
    num_steps)`. The gaps are computed in whole iterations (first gap
    `0.22 * num_steps`, shrinking by `0.03 * num_steps` down to
    `0.06 * num_steps`, each at least 1) so that rounding never shifts a
    checkpoint.

    Returns:
        The sorted list `[0, w_1, w_2, ...]` of checkpoints below `num_steps`.
    """
    gap = max(int(0.22 * num_steps), 1)
    decrement = max(int(0.03 * num_steps), 1)
    minimum = max(int(0.06 * num_steps), 1)
    checkpoints = [0]
    while checkpoints[-1] + gap < num_steps:
        checkpoints.append(checkpoints[-1] + gap)
        gap = max(gap - decrement, minimum)
    return checkpoints


def apgd(
    model_fn,
    x,
    y,
    *,
    eps,
    num_steps,
    loss="ce",
    momentum=0.75,
    rho=0.75,
    clip_min=0.0,
    clip_max=1.0,
    seed=0,
):
    """Auto-PGD: step-size-free PGD with momentum (Croce and Hein 2020).

    "Reliable evaluation of adversarial robustness with an ensemble of
    diverse parameter-free attacks", Algorithm 1. The step size starts at
    `2 * eps`; each step is
    `z = P(x_k + eta * sign(grad))`,
    `x_{k+1} = P(x_k + momentum * (z - x_k) + (1 - momentum) * (x_k - x_{k-1}))`.
    At the checkpoints of `apgd_checkpoints` an example halves its `eta` and
    restarts from its best point when (1) the loss rose in fewer than
    `rho` of the steps since the last checkpoint, or (2) neither `eta` nor the
    best loss changed since the last checkpoint.

    Args:
        model_fn: Callable mapping images to logits.
        x: Clean images, float `[N, H, W, C]`.
        y: True labels, int `[N]`.
        eps: l-inf radius in pixel units, in [0, 1].
        num_steps: Gradient evaluations (> 0).
        loss: "ce" or "dlr" as in the paper, or "margin".
        momentum: Weight `alpha` of the new step (0.75 in the paper).
        rho: Success share of condition (1) (0.75 in the paper).
        clip_min: Smallest valid pixel value.
        clip_max: Largest valid pixel value.
        seed: Integer seed of the random start.

    Returns:
        Adversarial images, same shape as `x`, gradient stopped.

    Raises:
        ValueError: Bad `eps`, `num_steps` or `loss`.
    """
    _check_eps(eps)
    _check_positive_int("num_steps", num_steps)
    loss_fn = _loss_fn(loss)
    x, y = _inputs(x, y)
    batch = tf.shape(x)[0]
    expand = [-1] + [1] * (x.shape.rank - 1)

    checkpoints = apgd_checkpoints(num_steps)
    is_checkpoint = [False] * num_steps
    since_last = [1.0] * num_steps
    for previous, current in zip(checkpoints[:-1], checkpoints[1:]):
        is_checkpoint[current] = True
        since_last[current] = float(current - previous)
    is_checkpoint = tf.constant(is_checkpoint)
    since_last = tf.constant(since_last)

    x_cur = _project(x + _uniform_ball(x, eps, _seed(seed, 0)), x, eps, clip_min, clip_max)
    x_prev = x_cur
    eta = tf.fill([batch], tf.cast(2.0 * eps, tf.float32))
    eta_at_checkpoint = eta
    loss_max = tf.fill([batch], -float("inf"))
    loss_max_at_checkpoint = loss_max
    x_max = x_cur
    grad_max = tf.zeros_like(x)
    loss_prev = tf.fill([batch], float("inf"))  # No "increase" at the first step.
    increases = tf.zeros([batch], tf.float32)
    best = _initial_best(x)

    gradient_step = _gradient_step(model_fn, loss_fn)
    for k in tf.range(num_steps):
        losses, fooled, gradient = gradient_step(x_cur, y)
        best = _keep_most_damaging(best, (x_cur, fooled, losses))
        increases += tf.cast(losses > loss_prev, tf.float32)
        loss_prev = losses
        improved = losses > loss_max
        x_max = tf.where(tf.reshape(improved, expand), x_cur, x_max)
        grad_max = tf.where(tf.reshape(improved, expand), gradient, grad_max)
        loss_max = tf.where(improved, losses, loss_max)

        if is_checkpoint[k]:
            few_increases = increases < rho * since_last[k]
            stalled = (eta == eta_at_checkpoint) & (loss_max == loss_max_at_checkpoint)
            halve = few_increases | stalled
            eta_at_checkpoint = eta
            loss_max_at_checkpoint = loss_max
            eta = tf.where(halve, eta / 2.0, eta)
            restart = tf.reshape(halve, expand)
            x_cur = tf.where(restart, x_max, x_cur)
            x_prev = tf.where(restart, x_max, x_prev)
            gradient = tf.where(restart, grad_max, gradient)
            increases = tf.zeros_like(increases)

        step = tf.reshape(eta, expand) * tf.sign(gradient)
        z = _project(x_cur + step, x, eps, clip_min, clip_max)
        if k == 0:
            x_next = z
        else:
            x_next = _project(
                x_cur + momentum * (z - x_cur) + (1.0 - momentum) * (x_cur - x_prev),
                x,
                eps,
                clip_min,
                clip_max,
            )
        x_prev = x_cur
        x_cur = x_next

    losses, fooled = _loss_and_fooled(model_fn, x_cur, y, loss_fn)
    best = _keep_most_damaging(best, (x_cur, fooled, losses))
    return tf.stop_gradient(best[0])


# ---------------------------------------------------------------------------
# Gradient-free attack.


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
    _check_eps(eps)
    _check_positive_int("max_queries", max_queries)
    if not 0.0 < p_init <= 1.0:
        raise ValueError(f"`p_init` must be in (0, 1]. Received: p_init={p_init}")
    x, y = _inputs(x, y)
    if x.shape.rank != 4 or x.shape[-1] is None:
        raise ValueError(f"`x` must be [N, H, W, C] with a known C. Received shape {x.shape}")
    shape = tf.shape(x)
    batch, height, width = shape[0], shape[1], shape[2]
    channels = x.shape[-1]
    num_iterations = max_queries - 1

    def sign_like(stripe_shape, stream):
        bits = tf.random.stateless_uniform(
            stripe_shape, seed=_seed(seed, stream), maxval=2, dtype=tf.int32
        )
        return tf.cast(2 * bits - 1, x.dtype)

    def margin_and_fooled(images):
        logits = tf.cast(model_fn(images), tf.float32)
        fooled = tf.not_equal(tf.argmax(logits, -1, output_type=tf.int64), y)
        return -margin_loss(logits, y), fooled

    x_best = clip_to_bounds(x + eps * sign_like([batch, 1, width, channels], 0), clip_min, clip_max)
    margin, fooled = margin_and_fooled(x_best)
    queries = tf.ones([batch], tf.int32)
    rows = tf.reshape(tf.range(height), [1, -1, 1, 1])
    cols = tf.reshape(tf.range(width), [1, 1, -1, 1])
    side_max = tf.maximum(tf.minimum(height, width) - 1, 1)

    for i in tf.range(num_iterations):
        if tf.reduce_all(fooled):
            break
        active = ~fooled
        p = square_fraction(i, num_iterations, p_init)
        area = p * tf.cast(height * width, tf.float32)
        side = tf.clip_by_value(tf.cast(tf.round(tf.sqrt(area)), tf.int32), 1, side_max)
        top = tf.random.stateless_uniform(
            [batch, 1, 1, 1], seed=_seed(seed, 3 * i + 1), maxval=height - side + 1, dtype=tf.int32
        )
        left = tf.random.stateless_uniform(
            [batch, 1, 1, 1], seed=_seed(seed, 3 * i + 2), maxval=width - side + 1, dtype=tf.int32
        )
        window = (rows >= top) & (rows < top + side) & (cols >= left) & (cols < left + side)
        signs = sign_like([batch, 1, 1, channels], 3 * i + 3)
        delta = tf.where(window, eps * signs, x_best - x)
        x_new = clip_to_bounds(x + delta, clip_min, clip_max)
        margin_new, fooled_new = margin_and_fooled(x_new)
        accept = active & (margin_new < margin)
        x_best = tf.where(tf.reshape(accept, [-1, 1, 1, 1]), x_new, x_best)
        margin = tf.where(accept, margin_new, margin)
        fooled = tf.where(accept, fooled_new, fooled)
        queries += tf.cast(active, tf.int32)

    x_best = _project(x_best, x, eps, clip_min, clip_max)
    return tf.stop_gradient(x_best), queries


# ---------------------------------------------------------------------------
# Transfer and BPDA.


def transfer(source_fn, x, y, *, attack=None, **attack_kwargs):
    """Crafts adversarial examples on a source (surrogate) model.

    Papernot, McDaniel and Goodfellow 2016, "Transferability in Machine
    Learning". Score the result on the target model, which is never queried
    here: `accuracy(target_fn, transfer(source_fn, x, y, eps=...), y)`.

    Args:
        source_fn: Callable mapping images to logits of the surrogate model.
        x: Clean images, float `[N, H, W, C]`.
        y: True labels, int `[N]`.
        attack: A gradient attack of this module; `pgd` if None.
        **attack_kwargs: Keyword hyper-parameters of `attack`.

    Returns:
        Adversarial images, gradient stopped.
    """
    attack = pgd if attack is None else attack
    return attack(source_fn, x, y, **attack_kwargs)


def _stand_in_derivative(layer, inputs, stand_in, smooth_alpha):
    """d stand-in / dx for one `SoftQuantization` layer, element-wise."""
    x = tf.cast(inputs, tf.float32)
    if stand_in == "identity":
        return tf.ones_like(x)
    # Smoothed copy q_s(x) = mean_k sigmoid(a * (x - t_k)) with a small a:
    # dq_s/dx = mean_k a * s_k * (1 - s_k).
    thresholds = tf.stop_gradient(tf.cast(layer.thresholds, tf.float32))
    s = tf.sigmoid(smooth_alpha * (tf.expand_dims(x, -1) - thresholds))
    return tf.reduce_mean(smooth_alpha * s * (1.0 - s), axis=-1)


def bpda(model, *, stand_in="identity", smooth_alpha=10.0):
    """Backward Pass Differentiable Approximation of a quantized model.

    Athalye, Carlini and Wagner 2018, "Obfuscated Gradients Give a False Sense
    of Security", section 4.1: the forward pass is the real model; in the
    backward pass every `SoftQuantization` layer (soft or hard) is replaced by
    a differentiable stand-in:

    * "identity": straight-through, dq/dx := 1;
    * "smooth": a copy of the same quantizer with the small steepness
      `smooth_alpha`, whose derivative is not saturated near thresholds.

    Any gradient attack then runs on the returned function.

    Args:
        model: A functional or sequential `keras.Model` taking images in [0, 1].
        stand_in: "identity" or "smooth".
        smooth_alpha: Steepness of the "smooth" stand-in (> 0).

    Returns:
        A `model_fn(images) -> logits` with the model's exact outputs.

    Raises:
        ValueError: Unknown `stand_in`, bad `smooth_alpha`, or a model that
            contains no `SoftQuantization` layer.
    """
    if stand_in not in STAND_INS:
        raise ValueError(f"`stand_in` must be one of {STAND_INS}. Received: stand_in={stand_in!r}")
    if not smooth_alpha > 0:
        raise ValueError(f"`smooth_alpha` must be > 0. Received: smooth_alpha={smooth_alpha}")
    if not has_quantizer(model):
        raise ValueError(
            f"Model {model.name!r} contains no SoftQuantization layer; BPDA would "
            "equal a plain gradient attack."
        )

    def quantizer_backward(layer, x, outputs, upstream):
        del outputs
        derivative = _stand_in_derivative(layer, x, stand_in, smooth_alpha)
        return tf.cast(tf.cast(upstream, tf.float32) * derivative, x.dtype)

    return input_gradient_model(model, quantizer_backward=quantizer_backward)


# ---------------------------------------------------------------------------
# Faster input gradients.


def _relu_or_linear(layer):
    activation = getattr(layer, "activation", None)
    if activation is keras.activations.linear:
        return "linear"
    if activation is keras.activations.relu:
        return "relu"
    return None


def _plain_dense(layer):
    """A Dense layer whose input gradient `_dense_input_gradient` speeds up.

    Only in float32: with bfloat16 compute, TensorFlow's own gradient was
    faster on the CPUs measured.
    """
    return (
        type(layer) is keras.layers.Dense
        and layer.compute_dtype == "float32"
        and _relu_or_linear(layer) is not None
        and not getattr(layer, "lora_enabled", False)
        and getattr(layer, "quantization_mode", None) is None
        and _input_rank(layer) == 2
    )


def _input_rank(layer):
    try:
        return len(layer.input.shape)
    except (AttributeError, ValueError):  # not built, or called on several inputs
        return None


def _plain_single_channel_conv(layer):
    """A stride-1 'same' Conv2D on one input channel, odd kernel, no dilation."""
    return (
        type(layer) is keras.layers.Conv2D
        and layer.compute_dtype in ("float32", "bfloat16")
        and _relu_or_linear(layer) is not None
        and layer.data_format == "channels_last"
        and layer.padding == "same"
        and tuple(layer.strides) == (1, 1)
        and tuple(layer.dilation_rate) == (1, 1)
        and layer.groups == 1
        and layer.kernel.shape[2] == 1
        and all(k % 2 == 1 for k in layer.kernel_size)
        and not getattr(layer, "lora_enabled", False)
        and getattr(layer, "quantization_mode", None) is None
    )


def _activation_backward(layer, outputs, upstream):
    if _relu_or_linear(layer) == "relu":
        # The op TensorFlow's own ReLU gradient runs: one pass over the data.
        return tf.raw_ops.ReluGrad(gradients=tf.cast(upstream, outputs.dtype), features=outputs)
    return upstream


def _dense_input_gradient(layer, inputs, outputs, upstream):
    # d/da of act(a @ W + b) is (g @ W^T); computed as (W @ g^T)^T, which
    # CPU matmul kernels run ~2x faster than a matmul with a transposed
    # large right operand (the gradient TensorFlow registers for MatMul).
    del inputs
    g = _activation_backward(layer, outputs, upstream)
    kernel = tf.cast(layer.kernel, g.dtype)
    return tf.transpose(tf.matmul(kernel, g, transpose_b=True))


def _relu_then_max_pool(layer, model_outputs):
    """A ReLU Conv2D (channels last) whose output feeds one MaxPooling2D only.

    ReLU is monotone, so max-pooling the pre-activations and then applying
    ReLU gives exactly the model's values, and ReLU's gradient then runs on
    the pooled tensor (a quarter of the entries for 2x2 pools).
    """
    outbound = getattr(layer, "_outbound_nodes", None) or []
    inbound = getattr(layer, "_inbound_nodes", None) or []
    return (
        type(layer) is keras.layers.Conv2D
        and _relu_or_linear(layer) == "relu"
        and layer.data_format == "channels_last"
        and not getattr(layer, "lora_enabled", False)
        and getattr(layer, "quantization_mode", None) is None
        and len(inbound) == 1
        and len(outbound) == 1
        and type(outbound[0].operation) is keras.layers.MaxPooling2D
        and id(layer.output) not in model_outputs
    )


def _conv_pre_activation(layer, inputs):
    # Keras's own Conv call (BaseConv.call) without the activation.
    dtype = layer.compute_dtype
    outputs = layer.convolution_op(
        keras.ops.cast(inputs, dtype), keras.ops.cast(layer.kernel, dtype)
    )
    if layer.use_bias:
        bias_shape = (1,) * (layer.rank + 1) + (layer.filters,)
        outputs = keras.ops.add(
            outputs, keras.ops.reshape(keras.ops.cast(layer.bias, dtype), bias_shape)
        )
    return outputs


def _output_ids(model):
    """ids of the output tensors of `model` and of the models nested in it."""
    ids = {id(t) for t in keras.tree.flatten(model.outputs)}
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            ids |= _output_ids(layer)
    return ids


def _conv_input_gradient(layer, inputs, outputs, upstream, *, activation=True):
    # For one input channel and an odd k x k kernel w with 'same' padding p,
    # dx[i, j] = sum_{u, v, c} g[i - u + p, j - v + p, c] w[u, v, c]: a
    # depthwise correlation of g with the flipped kernel, summed over
    # channels. CPU kernels run it ~4x faster than the transposed
    # convolution with a single output channel that TensorFlow registers.
    del inputs
    g = _activation_backward(layer, outputs, upstream) if activation else upstream
    kernel = tf.cast(layer.kernel, g.dtype)  # [kh, kw, 1, channels]
    flipped = tf.transpose(tf.reverse(kernel, axis=[0, 1]), [0, 1, 3, 2])
    per_channel = tf.nn.depthwise_conv2d(g, flipped, strides=[1, 1, 1, 1], padding="SAME")
    return tf.reduce_sum(per_channel, axis=-1, keepdims=True)


def input_gradient_model(model, *, quantizer_backward=None):
    """A `model_fn` with the model's exact outputs and faster input gradients.

    The forward pass is the model's own. In the backward pass, float32 Dense
    layers (ReLU or linear, 2-D input) and float32 or bfloat16 stride-1
    'same' Conv2D layers on a single input channel get hand-written input
    gradients that are mathematically equal to TensorFlow's but avoid slow
    CPU kernels (a matmul with a transposed large operand; a transposed
    convolution with one output channel). A ReLU Conv2D read only by a
    MaxPooling2D applies its ReLU after the pool instead (the same values, as
    ReLU is monotone; ReLU's gradient then runs on the pooled tensor).
    Parameter gradients are not computed: the returned function is for
    attacks, which differentiate with respect to the input only.

    Args:
        model: A functional or sequential `keras.Model`.
        quantizer_backward: Optional `f(layer, inputs, outputs, upstream) -> dx` that
            replaces the backward pass of every `SoftQuantization` layer
            (see `bpda`).

    Returns:
        `model_fn(images) -> logits`.
    """

    model_outputs = _output_ids(model)
    pre_activations = set()  # ids of conv outputs whose ReLU moves after the pool

    def rewritten(layer, backward, forward_fn=None):
        def call(inputs):
            @tf.custom_gradient
            def forward(x):
                if forward_fn is None:
                    outputs = layer(x, training=False)
                else:
                    outputs = forward_fn(layer, x)

                def gradient(upstream, variables=None):
                    dx = backward(layer, x, outputs, upstream)
                    return tf.cast(dx, x.dtype), [None] * len(variables or [])

                return outputs, gradient

            return forward(inputs)

        return keras.layers.Lambda(
            call, name=f"{layer.name}_input_gradient", dtype=layer.dtype_policy
        )

    def call_function(layer, *args, **kwargs):
        if _relu_then_max_pool(layer, model_outputs):
            if _plain_single_channel_conv(layer):
                backward = functools.partial(_conv_input_gradient, activation=False)
                outputs = rewritten(layer, backward, _conv_pre_activation)(args[0])
            else:
                outputs = keras.layers.Lambda(
                    lambda x: _conv_pre_activation(layer, x),
                    name=f"{layer.name}_linear",
                    dtype=layer.dtype_policy,
                )(args[0])
            pre_activations.add(id(outputs))
            return outputs
        if type(layer) is keras.layers.MaxPooling2D and id(args[0]) in pre_activations:
            return keras.layers.Lambda(
                lambda x: keras.ops.relu(layer(x, training=False)),
                name=f"{layer.name}_relu",
                dtype=layer.dtype_policy,
            )(args[0])
        backward = None
        if isinstance(layer, SoftQuantization) and quantizer_backward is not None:
            backward = quantizer_backward
        elif _plain_dense(layer):
            backward = _dense_input_gradient
        elif _plain_single_channel_conv(layer):
            backward = _conv_input_gradient
        if backward is not None:
            return rewritten(layer, backward)(args[0])
        return layer(*args, **kwargs)

    surrogate = keras.models.clone_model(
        model,
        clone_function=lambda layer: layer,
        call_function=call_function,
        recursive=True,
    )

    def model_fn(images):
        return surrogate(images, training=False)

    return model_fn


def has_quantizer(model):
    """True if `model` (a `keras.Model`) contains a `SoftQuantization` layer."""
    return bool(quantization_layers(model))
