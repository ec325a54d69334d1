"""Signed-gradient attacks: FGSM and l-inf PGD with random restarts."""

import functools

import tensorflow as tf

from sq_keras.attacks.linf import check_eps
from sq_keras.attacks.linf import check_positive_int
from sq_keras.attacks.linf import check_step_size
from sq_keras.attacks.linf import gradient_step
from sq_keras.attacks.linf import initial_best
from sq_keras.attacks.linf import inputs
from sq_keras.attacks.linf import keep_more_damaging
from sq_keras.attacks.linf import loss_and_gradient
from sq_keras.attacks.linf import project
from sq_keras.attacks.linf import running
from sq_keras.attacks.linf import score_and_keep
from sq_keras.attacks.linf import uniform_start
from sq_keras.attacks.losses import loss_by_name


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
    check_eps(eps)
    loss_fn = loss_by_name(loss)
    x, y = inputs(x, y)
    _, _, gradient = loss_and_gradient(model_fn, x, y, loss_fn)
    x_adv = project(x + eps * tf.sign(gradient), x, eps, clip_min, clip_max)
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
    stop_when_all_fooled=True,
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
        stop_when_all_fooled: With `keep_most_damaging`, end a restart's
            steps once every example of the batch has been misclassified at
            a visited point. Which examples are fooled cannot change after
            that, so robust accuracy is the same as with all steps; it saves
            most of the work on weak models and at large eps.

    Returns:
        Adversarial images, same shape as `x`, gradient stopped.

    Raises:
        ValueError: Bad `eps`, `step_size`, `num_steps`, `restarts` or `loss`.
    """
    check_eps(eps)
    check_positive_int("num_steps", num_steps)
    check_positive_int("restarts", restarts)
    check_step_size(step_size)
    loss_fn = loss_by_name(loss)
    x, y = inputs(x, y)
    one_restart = functools.partial(
        _one_restart,
        gradient_step(model_fn, loss_fn),
        eps=eps,
        step_size=step_size,
        num_steps=num_steps,
        clip_min=clip_min,
        clip_max=clip_max,
        keep_most_damaging=keep_most_damaging,
        stop_when_all_fooled=keep_most_damaging and stop_when_all_fooled,
    )

    best = initial_best(x)
    for restart in range(restarts):
        start = x
        if random_start or restart > 0:
            start = uniform_start(
                x, eps=eps, seed=seed, stream=restart, clip_min=clip_min, clip_max=clip_max
            )
        if restart == 0:
            x_adv, best = one_restart(x, y, start, best)
            if restarts == 1 and not keep_most_damaging:
                return tf.stop_gradient(x_adv)
            best = score_and_keep(best, model_fn, x_adv, y, loss_fn)
        else:
            best = _attack_remaining(one_restart, model_fn, loss_fn, x, y, start, best)
    return tf.stop_gradient(best[0])


def _one_restart(
    step,
    x,
    y,
    start,
    best,
    *,
    eps,
    step_size,
    num_steps,
    clip_min,
    clip_max,
    keep_most_damaging,
    stop_when_all_fooled,
):
    """`num_steps` PGD steps from `start`: the last iterate and the updated `best`.

    `best` (see `keep_more_damaging`) sees every iterate before its step when
    `keep_most_damaging`, and is returned unchanged otherwise. With
    `stop_when_all_fooled` the steps end early once `best` fools every example.
    """
    x_adv = start
    k = tf.constant(0)
    while running(k, num_steps, best[1], stop_when_all_fooled):
        losses, fooled, gradient = step(x_adv, y)
        if keep_most_damaging:
            best = keep_more_damaging(best, (x_adv, fooled, losses))
        x_adv = project(x_adv + step_size * tf.sign(gradient), x, eps, clip_min, clip_max)
        k += 1
    return x_adv, best


def _attack_remaining(one_restart, model_fn, loss_fn, x, y, start, best):
    """A later restart, run only on the examples no restart has fooled yet.

    Every example keeps its own random start, so the result does not depend on
    which other examples share the batch. With nothing left to attack the
    model is skipped (convolutions on an empty batch fail on some CPU kernels).
    """
    index = tf.where(~best[1])

    def attack():
        x_sub, y_sub, start_sub = (tf.gather_nd(t, index) for t in (x, y, start))
        best_sub = tuple(tf.gather_nd(t, index) for t in best)
        x_adv, best_sub = one_restart(x_sub, y_sub, start_sub, best_sub)
        best_sub = score_and_keep(best_sub, model_fn, x_adv, y_sub, loss_fn)
        return tuple(tf.tensor_scatter_nd_update(b, index, s) for b, s in zip(best, best_sub))

    return tf.cond(tf.shape(index)[0] > 0, attack, lambda: best)
