"""FAB: the Fast Adaptive Boundary attack (Croce and Hein 2020), l-inf.

"Minimally distorted adversarial examples with a fast adaptive boundary
attack", ICML 2020. FAB looks for the smallest l-inf perturbation that
changes the class. Each step linearises the model at the current point `x_k`
and projects both `x_k` and the clean image `x` onto the linearised decision
hyperplane inside the pixel box (an exact l-inf projection, see
`project_onto_hyperplane`); the next point mixes the two projections, leaning
towards the one from `x` so that the perturbation stays small. A step that
crosses the boundary is pulled back towards `x` (the backward step `beta`).

`fab_targeted` is FAB-T as AutoAttack's standard suite runs it: one run per
target class (the 2nd, 3rd, ... most likely class of the clean image), each
from `x` itself, only on the examples no earlier run fooled within `eps`.
`fab` without `num_targets` is the untargeted FAB:

```python
x_adv = attacks.fab_targeted(model_fn, x, y, eps=0.3)           # 9 targets
x_adv, norms = attacks.fab_targeted(model_fn, x, y, eps=0.3, return_norms=True)
x_adv = attacks.fab(model_fn, x, y, eps=0.3, restarts=5)         # untargeted
```

`eps` does not steer the steps; it bounds the random starts of restarts after
the first and decides success: an example counts as fooled when a
misclassified point within `eps` of `x` was found (AutoAttack's criterion).
"""

import functools

import tensorflow as tf

from sq_keras.attacks.linf import check_eps
from sq_keras.attacks.linf import check_positive_int
from sq_keras.attacks.linf import clip_to_bounds
from sq_keras.attacks.linf import inputs
from sq_keras.attacks.linf import misclassified
from sq_keras.attacks.linf import running
from sq_keras.attacks.linf import stream_seed
from sq_keras.attacks.losses import loss_gradient


def fab(
    model_fn,
    x,
    y,
    *,
    eps,
    num_steps=100,
    num_targets=None,
    restarts=1,
    alpha_max=0.1,
    eta=1.05,
    beta=0.9,
    clip_min=0.0,
    clip_max=1.0,
    seed=0,
    return_norms=False,
    stop_when_all_fooled=False,
):
    """l-inf FAB, untargeted or targeted (FAB-T), with AutoAttack's protocol.

    Untargeted (`num_targets=None`), every step linearises all the
    differences `z_k - z_y` and heads for the class `k` whose hyperplane is
    nearest, `|z_k - z_y| / ||grad (z_k - z_y)||_1` (its l-inf distance
    under linearisation): one gradient per class, so a step costs about
    `num_classes` times a targeted one. Targeted, for each of the `num_targets` most likely
    wrong classes of the clean image in turn, the steps head for the
    boundary between the true class and that target (one gradient of
    `z_t - z_y` per step). Each run does `num_steps` steps on the examples
    no earlier run fooled within `eps`; per target (or once, untargeted)
    there are `restarts` runs, the first from `x`, later ones from a random
    point at l-inf distance `eps / 2`. A run keeps the misclassified point
    (of any wrong class) nearest to `x` that it visited.

    Args:
        model_fn: Callable mapping images to logits.
        x: Clean images, float `[N, H, W, C]`.
        y: True labels, int `[N]`.
        eps: l-inf radius in pixel units, in [0, 1]: success criterion and
            bound of the random starts.
        num_steps: FAB steps per run (> 0); 100 in AutoAttack.
        num_targets: None for untargeted FAB, else the target classes tried
            (> 0, below the number of classes); FAB-T uses 9.
        restarts: Runs per target (> 0); 1 in AutoAttack's standard FAB-T,
            5 in its untargeted FAB.
        alpha_max: Largest weight of the projection from `x` (0.1).
        eta: Overshoot of the projections (1.05).
        beta: Backward step towards `x` after a success (0.9).
        clip_min: Smallest valid pixel value.
        clip_max: Largest valid pixel value.
        seed: Integer seed of the random starts of later restarts.
        return_norms: Also return the per-example norms, see Returns.
        stop_when_all_fooled: End a run's steps once every example it
            attacks has a misclassified point within `eps`. Which examples
            are fooled within `eps` cannot change after that, so robust
            accuracy is the same, but the norms are then the smallest found up
            to that step rather than the smallest FAB reaches: off here, on in
            `fab_targeted` (the evaluator's FAB-T, which counts successes).

    Returns:
        Images, same shape as `x`, gradient stopped: where a misclassified
        point within `eps` was found, that point, else `x` itself (as in
        the reference implementation), clipped to the bounds. With
        `return_norms`, also a float32 `[N]`: 0 where `x` is misclassified
        already, else the smallest l-inf norm of a misclassified point found
        by the runs that attacked the example (`inf` if none). An example is
        fooled exactly where its norm is <= `eps`; runs stop attacking it
        then, so its norm is the smallest found up to that run, not over all
        targets.

    Raises:
        ValueError: Bad `eps`, `num_steps`, `num_targets`, `restarts`,
            `alpha_max`, `eta` or `beta`, or untargeted logits of unknown
            width.
    """
    _check_arguments(eps, num_steps, restarts, (alpha_max, eta, beta))
    x, y = inputs(x, y)
    logits = tf.cast(model_fn(x), tf.float32)
    if num_targets is None:
        step, label_sets = _closest_boundary(model_fn, logits.shape[-1]), y[None]
    else:
        check_positive_int("num_targets", num_targets)
        step = _difference_gradient(model_fn)
        label_sets = _target_pairs(logits, y, num_targets)
    x_adv, norms = _search(
        step,
        model_fn,
        (x, y, logits),
        label_sets,
        eps=eps,
        restarts=restarts,
        seed=seed,
        bounds=(clip_min, clip_max),
        settings={
            "num_steps": num_steps,
            "constants": (alpha_max, eta, beta),
            "stop_within": eps if stop_when_all_fooled else None,
        },
    )
    return (x_adv, norms) if return_norms else x_adv


def fab_targeted(model_fn, x, y, *, eps, num_targets=9, stop_when_all_fooled=True, **kwargs):
    """FAB-T as AutoAttack's standard suite runs it: `fab` with 9 targets.

    Args:
        model_fn: Callable mapping images to logits.
        x: Clean images, float `[N, H, W, C]`.
        y: True labels, int `[N]`.
        eps: l-inf radius in pixel units, in [0, 1], see `fab`.
        num_targets: Target classes tried (> 0, below the number of classes).
        stop_when_all_fooled: See `fab`; on by default here, where only
            success within `eps` counts. Pass False for minimal norms.
        **kwargs: The other keyword arguments of `fab`: `num_steps` (100),
            `restarts` (1), `alpha_max` (0.1), `eta` (1.05), `beta` (0.9),
            `clip_min`, `clip_max`, `seed`, `return_norms`.

    Returns:
        As `fab`.
    """
    if num_targets is None:
        raise ValueError("`fab_targeted` needs a number of targets; for untargeted FAB call `fab`.")
    return fab(
        model_fn,
        x,
        y,
        eps=eps,
        num_targets=num_targets,
        stop_when_all_fooled=stop_when_all_fooled,
        **kwargs,
    )


def project_onto_hyperplane(points, w, b, *, clip_min=0.0, clip_max=1.0):
    """Smallest l-inf move from each point onto `w . z = b` within the box.

    Solves `min ||d||_inf` subject to `w . (p + d) = b` and
    `clip_min <= p + d <= clip_max`, per row, exactly, as FAB needs (Croce
    and Hein 2020). Moving every coordinate by `lambda` against the side of the
    hyperplane, as far as the box lets it, changes `w . z` by a piecewise
    linear, monotone function of `lambda` whose kinks are the distances to
    the box; sorting them gives the segment where the hyperplane is reached
    and `lambda` in closed form. When the box does not reach the hyperplane
    the result is the box corner nearest to it, as in the paper.

    Args:
        points: Float `[N, D]`, inside the box.
        w: Hyperplane normals, float `[N, D]`.
        b: Offsets, float `[N]`.
        clip_min: Smallest valid coordinate.
        clip_max: Largest valid coordinate.

    Returns:
        The moves `d`, float `[N, D]`; `d` is 0 where `w` is 0.
    """
    excess = tf.reduce_sum(w * points, axis=1) - b
    w = w * tf.where(excess >= 0, 1.0, -1.0)[:, None]  # Then w . d must be -|excess|.
    excess = tf.abs(excess)
    room = tf.where(w > 0, points - clip_min, clip_max - points)
    room = tf.maximum(room, 0.0)
    order = tf.argsort(room, axis=1)
    room_sorted = tf.gather(room, order, batch_dims=1)
    weight_sorted = tf.gather(tf.abs(w), order, batch_dims=1)
    saturated = _exclusive_cumsum(weight_sorted * room_sorted)  # Sum of |w| r below kink k.
    free = tf.reduce_sum(weight_sorted, 1, keepdims=True) - _exclusive_cumsum(weight_sorted)
    # Decrease of w . z when lambda reaches each kink r_k.
    at_kinks = saturated[:, :-1] + room_sorted * free[:, :-1]
    segment = tf.reduce_sum(tf.cast(at_kinks < excess[:, None], tf.int32), axis=1)
    lam = tf.math.divide_no_nan(
        excess - tf.gather(saturated, segment, batch_dims=1),
        tf.gather(free, segment, batch_dims=1),
    )
    lam = tf.where(segment < tf.shape(w)[1], lam, tf.reduce_max(room, axis=1))
    return -tf.sign(w) * tf.minimum(lam[:, None], room)


def _exclusive_cumsum(values):
    """`[0, v_0, v_0 + v_1, ...]`: one more column than `values`."""
    return tf.pad(tf.cumsum(values, axis=1), [[0, 0], [1, 0]])


def _check_arguments(eps, num_steps, restarts, constants):
    """Raises ValueError on a bad argument shared by `fab` and `fab_targeted`.

    `constants` is `(alpha_max, eta, beta)`: `0 <= alpha_max <= 1`,
    `eta >= 1` (an overshoot) and `0 < beta < 1`.
    """
    check_eps(eps)
    check_positive_int("num_steps", num_steps)
    check_positive_int("restarts", restarts)
    alpha_max, eta, beta = constants
    if not 0.0 <= alpha_max <= 1.0:
        raise ValueError(f"`alpha_max` must be in [0, 1]. Received: alpha_max={alpha_max}")
    if not eta >= 1.0:
        raise ValueError(f"`eta` must be >= 1 (an overshoot). Received: eta={eta}")
    if not 0.0 < beta < 1.0:
        raise ValueError(f"`beta` must be in (0, 1). Received: beta={beta}")


def _target_pairs(logits, y, num_targets):
    """`(y, t)` label pairs, t the 2nd to `num_targets + 1`-th most likely class.

    Returns:
        Int64 `[num_targets, N, 2]`, one set of pairs per target rank.

    Raises:
        ValueError: `num_targets` is not below the number of classes.
    """
    num_classes = logits.shape[-1]
    if num_classes is not None and num_targets >= num_classes:
        raise ValueError(
            "`num_targets` must be below the number of classes "
            f"({num_classes}). Received: num_targets={num_targets}"
        )
    ranked = tf.math.top_k(logits, k=num_targets + 1).indices
    targets = tf.transpose(tf.cast(ranked[:, 1:], tf.int64))
    return tf.stack([tf.broadcast_to(y, tf.shape(targets)), targets], axis=2)


def _random_start(x, eps, seed, stream, bounds):
    """A random point at l-inf distance `eps / 2` from `x`, within the bounds.

    The restarts of the reference: uniform noise rescaled so that its
    largest coordinate is `eps / 2`.
    """
    noise = tf.random.stateless_uniform(
        tf.shape(x), seed=stream_seed(seed, stream), minval=-1.0, maxval=1.0, dtype=x.dtype
    )
    largest = tf.reduce_max(tf.abs(noise), axis=tf.range(1, tf.rank(x)), keepdims=True)
    return clip_to_bounds(x + 0.5 * eps * noise / largest, *bounds)


def _logit_difference(logits, pairs):
    """`z_target - z_true` per example; `pairs` holds `(true, target)` rows."""
    num_classes = logits.shape[-1]
    true = tf.reduce_sum(tf.one_hot(pairs[:, 0], num_classes) * logits, axis=-1)
    target = tf.reduce_sum(tf.one_hot(pairs[:, 1], num_classes) * logits, axis=-1)
    return target - true


def _difference_gradient(model_fn):
    """`(z_t - z_y, its input gradient)` for `(y, t)` pairs, not inlined.

    Not inlined into the step loop for the reason given in
    `linf.gradient_step`.
    """

    def difference(x_cur, pairs):
        gap, _, gradient = loss_gradient(model_fn, x_cur, pairs, _logit_difference)
        return gap, gradient

    return tf.function(
        difference,
        reduce_retracing=True,  # Later runs attack shrinking batches.
        experimental_attributes={"_noinline": True},
    )


def _closest_boundary(model_fn, num_classes):
    """`(z_k - z_y, its input gradient)` for the nearest linearised class `k`.

    One gradient per class; the nearest boundary minimises
    `|z_k - z_y| / ||grad (z_k - z_y)||_1` over `k != y`. Not inlined, as
    `_difference_gradient`.

    Raises:
        ValueError: The number of classes is unknown.
    """
    if num_classes is None:
        raise ValueError(
            "Untargeted `fab` needs logits with a known number of classes; "
            "pass `num_targets` for FAB-T."
        )

    def closest(x_cur, y):
        gaps, gradients = [], []
        for k in range(num_classes):
            pairs = tf.stack([y, tf.fill(tf.shape(y), tf.constant(k, tf.int64))], axis=1)
            gap, _, gradient = loss_gradient(model_fn, x_cur, pairs, _logit_difference)
            gaps.append(gap)
            gradients.append(gradient)
        gaps, gradients = tf.stack(gaps, axis=1), tf.stack(gradients, axis=1)
        steepness = tf.reduce_sum(
            tf.abs(tf.reshape(gradients, [tf.shape(y)[0], num_classes, -1])), -1
        )
        distances = tf.abs(gaps) / (steepness + 1e-12)
        distances = tf.where(tf.one_hot(y, num_classes) > 0, float("inf"), distances)
        nearest = tf.argmin(distances, axis=1)
        return tf.gather(gaps, nearest, batch_dims=1), tf.gather(gradients, nearest, batch_dims=1)

    return tf.function(
        closest,
        reduce_retracing=True,  # Later runs attack shrinking batches.
        experimental_attributes={"_noinline": True},
    )


def _search(step, model_fn, clean, label_sets, *, eps, restarts, seed, bounds, settings):
    """FAB runs for each label set and restart, each on the survivors.

    Args:
        step: `_difference_gradient` or `_closest_boundary` of the model.
        model_fn: Callable mapping images to logits.
        clean: `(x, y, logits)` of the clean images.
        label_sets: The labels `step` takes, stacked: `[num_sets, N, ...]`.
        eps: Success radius and bound of the random starts.
        restarts: Runs per label set; later ones start at random.
        seed: Integer seed of the random starts.
        bounds: `(clip_min, clip_max)`.
        settings: `num_steps`, `constants` and `stop_within` of `_fab_run`.

    Returns:
        `(x_adv, norms)`, see `fab`.
    """
    x, y, logits = clean
    found = (x, tf.where(misclassified(logits, y), 0.0, float("inf")))
    run = functools.partial(_fab_run, step, model_fn, bounds=bounds, **settings)
    # One loop over all runs rather than one traced copy per run: the graph,
    # and its tracing time, do not grow with the number of targets.
    for index in tf.range(tf.shape(label_sets)[0] * restarts):
        start = x
        if restarts > 1:
            random_start = _random_start(x, eps, seed, index, bounds)
            start = tf.where(index % restarts > 0, random_start, x)
        labels = tf.gather(label_sets, index // restarts)
        found = _attack_survivors(run, (x, y, labels, start), found, eps)
    x_adv, norms = found
    return tf.stop_gradient(clip_to_bounds(x_adv, *bounds)), norms


def _attack_survivors(run, per_example, found, eps):
    """One run on the examples not yet fooled within `eps`; updates `found`.

    `per_example` is `(x, y, labels, start)`, `found` is `(x_adv, norms)`.
    Every example keeps its own start, so the result does not depend on
    which other examples share the batch; with nothing left to attack the
    model is skipped.
    """
    x_adv, norms = found
    index = tf.where(norms > eps)

    def attack():
        adv_sub, norm_sub = run(*(tf.gather_nd(t, index) for t in per_example))
        fooled = tf.reshape(norm_sub <= eps, [-1] + [1] * (x_adv.shape.rank - 1))
        adv_sub = tf.where(fooled, adv_sub, tf.gather_nd(x_adv, index))
        return (
            tf.tensor_scatter_nd_update(x_adv, index, adv_sub),
            tf.tensor_scatter_nd_update(
                norms, index, tf.minimum(tf.gather_nd(norms, index), norm_sub)
            ),
        )

    return tf.cond(tf.shape(index)[0] > 0, attack, lambda: found)


def _fab_run(step, model_fn, x, y, labels, start, *, num_steps, constants, bounds, stop_within):
    """`num_steps` FAB steps from `start` towards the boundary `step` picks.

    Args:
        step: `_difference_gradient` or `_closest_boundary` of the model.
        model_fn: Callable mapping images to logits.
        x: Clean images.
        y: True labels, int64 `[N]`.
        labels: What `step` takes besides the iterate.
        start: First iterate.
        num_steps: FAB steps.
        constants: `(alpha_max, eta, beta)`.
        bounds: `(clip_min, clip_max)`.
        stop_within: None, or end the steps once every example has a
            misclassified point within this l-inf distance.

    Returns:
        `(x_adv, norms)`: per example the misclassified iterate nearest to
        `x` (else `x`) and its l-inf distance (else `inf`).
    """
    beta = constants[2]
    expand = [-1] + [1] * (x.shape.rank - 1)
    x_cur = start
    best_x = x
    best_norm = tf.fill([tf.shape(x)[0]], float("inf"))
    stop = stop_within is not None
    within = stop_within if stop else 0.0
    k = tf.constant(0)
    while running(k, num_steps, best_norm <= within, stop):
        gap, gradient = step(x_cur, labels)
        x_cur = _fab_step(x_cur, x, gap, gradient, constants, bounds)
        fooled = misclassified(tf.cast(model_fn(x_cur), tf.float32), y)
        norm = _linf_norm(x_cur - x)
        better = fooled & (norm < best_norm)
        best_x = tf.where(tf.reshape(better, expand), x_cur, best_x)
        best_norm = tf.where(better, norm, best_norm)
        x_cur = tf.where(tf.reshape(fooled, expand), x + beta * (x_cur - x), x_cur)
        k += 1
    return best_x, best_norm


def _fab_step(x_cur, x, gap, gradient, constants, bounds):
    """One FAB step: project `x_cur` and `x` on the linearised boundary, mix.

    The boundary `gap + gradient . (z - x_cur) = 0` linearises
    `z_k - z_y` at `x_cur`. With `d_cur`, `d_orig` the projections' moves,
    the step is `(x_cur + eta d_cur) (1 - a) + (x + eta d_orig) a`, with
    `a = min(|d_cur| / (|d_cur| + |d_orig|), alpha_max)` (Croce and Hein
    2020; l-inf norms, floored at 1e-8 as in the reference code).
    """
    alpha_max, eta, _ = constants
    batch = tf.shape(x)[0]
    w = tf.reshape(gradient, [batch, -1])
    flat_cur = tf.reshape(x_cur, [batch, -1])
    b = tf.reduce_sum(w * flat_cur, axis=1) - gap
    project = functools.partial(project_onto_hyperplane, clip_min=bounds[0], clip_max=bounds[1])
    d_cur = tf.reshape(project(flat_cur, w, b), tf.shape(x))
    d_orig = tf.reshape(project(tf.reshape(x, [batch, -1]), w, b), tf.shape(x))
    size_cur = tf.maximum(_linf_norm(d_cur), 1e-8)
    size_orig = tf.maximum(_linf_norm(d_orig), 1e-8)
    alpha = tf.minimum(size_cur / (size_cur + size_orig), alpha_max)
    alpha = tf.reshape(alpha, [-1] + [1] * (x.shape.rank - 1))
    x_next = (x_cur + eta * d_cur) * (1.0 - alpha) + (x + eta * d_orig) * alpha
    return clip_to_bounds(x_next, *bounds)


def _linf_norm(images):
    """Per-example l-inf norm of a batch."""
    return tf.reduce_max(tf.abs(tf.reshape(images, [tf.shape(images)[0], -1])), axis=1)
