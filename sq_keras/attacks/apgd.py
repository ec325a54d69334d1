"""Auto-PGD (Croce and Hein 2020): step-size-free l-inf PGD with momentum.

`apgd` maximises one loss (APGD-CE, APGD-DLR); `apgd_targeted` (APGD-T)
runs it once per likely wrong class on the targeted DLR loss.
"""

import functools

import tensorflow as tf

from sq_keras.attacks.linf import check_eps
from sq_keras.attacks.linf import check_positive_int
from sq_keras.attacks.linf import gradient_step
from sq_keras.attacks.linf import initial_best
from sq_keras.attacks.linf import inputs
from sq_keras.attacks.linf import keep_more_damaging
from sq_keras.attacks.linf import misclassified
from sq_keras.attacks.linf import project
from sq_keras.attacks.linf import running
from sq_keras.attacks.linf import score_and_keep
from sq_keras.attacks.linf import uniform_start
from sq_keras.attacks.losses import loss_by_name
from sq_keras.attacks.losses import targeted_loss


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
    stop_when_all_fooled=True,
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
        stop_when_all_fooled: End a run's steps once every example it attacks
            has been misclassified at a visited point; which examples are
            fooled cannot change after that, so robust accuracy is the same
            as with all steps.

    Returns:
        Adversarial images, same shape as `x`, gradient stopped.

    Raises:
        ValueError: Bad `eps`, `num_steps` or `loss`.
    """
    check_eps(eps)
    check_positive_int("num_steps", num_steps)
    loss_fn = loss_by_name(loss)
    x, y = inputs(x, y)
    start = uniform_start(x, eps=eps, seed=seed, stream=0, clip_min=clip_min, clip_max=clip_max)
    x_last, best = _apgd_run(
        gradient_step(model_fn, loss_fn),
        x,
        y,
        start,
        initial_best(x),
        settings=(eps, num_steps, momentum, rho, clip_min, clip_max),
        stop_when_all_fooled=stop_when_all_fooled,
    )
    best = score_and_keep(best, model_fn, x_last, y, loss_fn)
    return tf.stop_gradient(best[0])


def apgd_targeted(
    model_fn,
    x,
    y,
    *,
    eps,
    num_steps,
    num_targets=9,
    momentum=0.75,
    rho=0.75,
    loss="dlr_targeted",
    clip_min=0.0,
    clip_max=1.0,
    seed=0,
    stop_when_all_fooled=True,
):
    """APGD-T: one targeted Auto-PGD run per likely wrong class (Croce and Hein 2020).

    The targeted attack of AutoAttack ("Reliable evaluation of adversarial
    robustness with an ensemble of diverse parameter-free attacks", section
    4; 100 steps and 9 targets in its standard version). For `k = 1 ..
    num_targets`, the target of an example is its wrong class with the
    k-th largest logit at the clean input, and one APGD run of `num_steps`
    maximises the targeted DLR loss towards it, with the step-size schedule
    and "loss increased" counting of `apgd` on that loss (from `2 * eps`
    again, with its own random start). Any misclassification is a success:
    examples misclassified at the clean input are not attacked, and each
    run attacks only the examples no earlier run has misclassified. Per
    example the result is a misclassified point if any run found one, else
    the point with the highest targeted loss over all runs (the targeted
    DLR losses of different targets share one scale).

    Args:
        model_fn: Callable mapping images to logits.
        x: Clean images, float `[N, H, W, C]`.
        y: True labels, int `[N]`.
        eps: l-inf radius in pixel units, in [0, 1].
        num_steps: Gradient evaluations per target (> 0).
        num_targets: Target classes per example, at most `num_classes - 1`.
        momentum: Weight `alpha` of the new step (0.75 in the paper).
        rho: Success share of the step-size condition (0.75 in the paper).
        loss: A name of `TARGETED_LOSSES`.
        clip_min: Smallest valid pixel value.
        clip_max: Largest valid pixel value.
        seed: Integer seed of the random starts (target `k` uses stream
            `k - 1`, so the first target starts where `apgd` starts).
        stop_when_all_fooled: End a run's steps once every example it attacks
            has been misclassified at a visited point; which examples are
            fooled cannot change after that, so robust accuracy is the same
            as with all steps.

    Returns:
        Adversarial images, same shape as `x`, gradient stopped.

    Raises:
        ValueError: Bad `eps`, `num_steps`, `num_targets` or `loss`, or fewer
            than 4 classes.
    """
    check_eps(eps)
    check_positive_int("num_steps", num_steps)
    check_positive_int("num_targets", num_targets)
    targeted_loss(loss, target=None)  # Raises early on an unknown name.
    x, y = inputs(x, y)
    logits = tf.cast(model_fn(x), tf.float32)
    targets = ranked_targets(logits, y, num_targets)
    targeted_loss(loss, targets[:, 0])(logits, y)  # Raises early on too few classes.
    attack_target = functools.partial(
        _attack_target,
        model_fn,
        loss,
        settings=(eps, num_steps, momentum, rho, clip_min, clip_max),
        stop=stop_when_all_fooled,
    )
    batch = tf.shape(x)[0]
    best = (x, misclassified(logits, y), tf.fill([batch], -float("inf")))
    for k in tf.range(num_targets):
        start = uniform_start(x, eps=eps, seed=seed, stream=k, clip_min=clip_min, clip_max=clip_max)
        best = attack_target((x, y, tf.gather(targets, k, axis=1), start), best)
    return tf.stop_gradient(best[0])


def ranked_targets(logits, y, num_targets):
    """Per example, the `num_targets` wrong classes with the largest logits.

    Args:
        logits: Float logits `[N, num_classes]`.
        y: True labels, int `[N]`.
        num_targets: How many classes, at most `num_classes - 1`.

    Returns:
        Int64 `[N, num_targets]`; column `k - 1` holds the wrong class with
        the k-th largest logit.

    Raises:
        ValueError: `num_targets` exceeds the number of wrong classes.
    """
    num_classes = logits.shape[-1]
    if num_classes is not None and num_targets > num_classes - 1:
        raise ValueError(
            "`num_targets` must be at most the number of wrong classes, "
            f"num_classes - 1 = {num_classes - 1}. Received: num_targets={num_targets}"
        )
    is_true = tf.cast(tf.one_hot(y, tf.shape(logits)[-1]), tf.bool)
    wrong = tf.where(is_true, tf.constant(-float("inf"), logits.dtype), logits)
    return tf.cast(tf.math.top_k(wrong, k=num_targets).indices, tf.int64)


def _attack_target(model_fn, loss, examples, best, *, settings, stop):
    """One APGD-T run on the examples no earlier run has misclassified.

    Args:
        model_fn: Callable mapping images to logits.
        loss: A name of `TARGETED_LOSSES`.
        examples: `(x, y, target, start)` of the whole batch; every example
            keeps its own start, so the result does not depend on which
            other examples share the batch.
        best: `(x, fooled, loss)` of the whole batch, see `keep_more_damaging`.
        settings: See `_apgd_run`.
        stop: `stop_when_all_fooled` of `_apgd_run`.

    Returns:
        The updated `best`. With nothing left to attack the model is skipped
        (convolutions on an empty batch fail on some CPU kernels).
    """
    index = tf.where(~best[1])

    def attack():
        x, y, target, start = (tf.gather_nd(t, index) for t in examples)
        best_sub = tuple(tf.gather_nd(t, index) for t in best)
        loss_fn = targeted_loss(loss, target)
        step = gradient_step(model_fn, loss_fn)
        x_last, best_sub = _apgd_run(
            step, x, y, start, best_sub, settings=settings, stop_when_all_fooled=stop
        )
        best_sub = score_and_keep(best_sub, model_fn, x_last, y, loss_fn)
        return tuple(tf.tensor_scatter_nd_update(b, index, s) for b, s in zip(best, best_sub))

    return tf.cond(tf.shape(index)[0] > 0, attack, lambda: best)


def _apgd_run(step, x, y, start, best, *, settings, stop_when_all_fooled):
    """One APGD run of Algorithm 1 from `start`: its last iterate and `best`.

    Args:
        step: `gradient_step` of the model and the loss to maximise.
        x: Clean images.
        y: True labels.
        start: The first iterate, inside the eps-ball.
        best: `(x, fooled, loss)` bookkeeping, see `keep_more_damaging`; it
            sees every iterate before its step.
        settings: `(eps, num_steps, momentum, rho, clip_min, clip_max)`.
        stop_when_all_fooled: End the steps once `best` fools every example.

    Returns:
        `(x_last, best)`: the iterate after the last step (not yet scored)
        and the updated bookkeeping.
    """
    eps, num_steps, momentum, rho, clip_min, clip_max = settings
    batch = tf.shape(x)[0]
    expand = [-1] + [1] * (x.shape.rank - 1)
    is_checkpoint, since_last = _checkpoint_schedule(num_steps)
    project_fn = functools.partial(project, x=x, eps=eps, clip_min=clip_min, clip_max=clip_max)

    x_cur = start
    x_prev = x_cur
    eta = tf.fill([batch], tf.cast(2.0 * eps, tf.float32))
    loss_max = tf.fill([batch], -float("inf"))
    at_checkpoint = (eta, loss_max)
    x_max = x_cur
    grad_max = tf.zeros_like(x)
    loss_prev = tf.fill([batch], float("inf"))  # No "increase" at the first step.
    increases = tf.zeros([batch], tf.float32)

    k = tf.constant(0)
    while running(k, num_steps, best[1], stop_when_all_fooled):
        losses, fooled, gradient = step(x_cur, y)
        best = keep_more_damaging(best, (x_cur, fooled, losses))
        increases += tf.cast(losses > loss_prev, tf.float32)
        loss_prev = losses
        loss_max, x_max, grad_max = _track_max(
            losses, x_cur, gradient, (loss_max, x_max, grad_max), expand
        )
        if is_checkpoint[k]:
            halve = _should_halve(increases, rho * since_last[k], (eta, loss_max), at_checkpoint)
            at_checkpoint = (eta, loss_max)
            eta, x_cur, x_prev, gradient = _halve_and_restart(
                halve, eta, (x_max, grad_max), (x_cur, x_prev, gradient), expand
            )
            increases = tf.zeros_like(increases)
        x_next = _next_iterate(
            k, x_cur, x_prev, tf.reshape(eta, expand) * tf.sign(gradient), project_fn, momentum
        )
        x_prev = x_cur
        x_cur = x_next
        k += 1
    return x_cur, best


def _checkpoint_schedule(num_steps):
    """Per step, whether it is a checkpoint and the steps since the previous one.

    Returns:
        `(is_checkpoint, since_last)`: a bool and a float32 constant of shape
        `[num_steps]`; `since_last` is 1 where `is_checkpoint` is False.
    """
    checkpoints = apgd_checkpoints(num_steps)
    is_checkpoint = [False] * num_steps
    since_last = [1.0] * num_steps
    for previous, current in zip(checkpoints[:-1], checkpoints[1:]):
        is_checkpoint[current] = True
        since_last[current] = float(current - previous)
    return tf.constant(is_checkpoint), tf.constant(since_last)


def _track_max(losses, x_cur, gradient, maxima, expand):
    """Per example, the highest loss so far with its point and gradient.

    Args:
        losses: Losses at `x_cur`, `[N]`.
        x_cur: The current iterate.
        gradient: The loss gradient at `x_cur`.
        maxima: `(loss_max, x_max, grad_max)` so far.
        expand: Shape that broadcasts an `[N]` mask over the images.

    Returns:
        The updated `(loss_max, x_max, grad_max)`.
    """
    loss_max, x_max, grad_max = maxima
    improved = losses > loss_max
    x_max = tf.where(tf.reshape(improved, expand), x_cur, x_max)
    grad_max = tf.where(tf.reshape(improved, expand), gradient, grad_max)
    loss_max = tf.where(improved, losses, loss_max)
    return loss_max, x_max, grad_max


def _should_halve(increases, min_increases, current, at_checkpoint):
    """Per example, whether APGD halves its step size at this checkpoint.

    Condition (1): the loss rose in fewer than `min_increases` (`rho` times
    the steps since the last checkpoint) steps; condition (2): neither `eta`
    nor the best loss changed since the last checkpoint. `current` and
    `at_checkpoint` are `(eta, loss_max)` pairs, now and at that checkpoint.
    """
    few_increases = increases < min_increases
    stalled = (current[0] == at_checkpoint[0]) & (current[1] == at_checkpoint[1])
    return few_increases | stalled


def _halve_and_restart(halve, eta, maxima, iterates, expand):
    """Where `halve`, halves `eta` and restarts from the best point found.

    Args:
        halve: Bool `[N]`, see `_should_halve`.
        eta: Step sizes `[N]`.
        maxima: `(x_max, grad_max)`, the best point and its gradient.
        iterates: `(x_cur, x_prev, gradient)`.
        expand: Shape that broadcasts an `[N]` mask over the images.

    Returns:
        The new `(eta, x_cur, x_prev, gradient)`.
    """
    x_max, grad_max = maxima
    x_cur, x_prev, gradient = iterates
    eta = tf.where(halve, eta / 2.0, eta)
    restart = tf.reshape(halve, expand)
    x_cur = tf.where(restart, x_max, x_cur)
    x_prev = tf.where(restart, x_max, x_prev)
    gradient = tf.where(restart, grad_max, gradient)
    return eta, x_cur, x_prev, gradient


def _next_iterate(k, x_cur, x_prev, step, project_fn, momentum):
    """`z = P(x_k + step)`, then the momentum average of Algorithm 1 after step 0."""
    z = project_fn(x_cur + step)
    if k == 0:
        x_next = z
    else:
        x_next = project_fn(x_cur + momentum * (z - x_cur) + (1.0 - momentum) * (x_cur - x_prev))
    return x_next
