"""Per-example attack losses on logits and the input gradient of a loss.

Attacks maximise these losses; `LOSSES` names them for every `loss=`
argument, and `loss_gradient` is the one place their input gradient is
computed. Targeted losses (`TARGETED_LOSSES`) also need a target class per
example: `targeted_loss` binds the targets and returns a loss of the same
`(logits, y)` form, so every attack loop can use it unchanged.
"""

import functools

import tensorflow as tf


def _other_max(logits, y, num_classes):
    """Largest logit among the wrong classes."""
    one_hot = tf.one_hot(y, num_classes, dtype=logits.dtype)
    return tf.reduce_max(logits - one_hot * 1e9, axis=-1)


def _logit_of(logits, labels, num_classes):
    """Per example, the logit of class `labels`."""
    return tf.reduce_sum(tf.one_hot(labels, num_classes, dtype=logits.dtype) * logits, -1)


def _check_num_classes(name, num_classes, minimum):
    """Raises ValueError when the static `num_classes` is below `minimum`."""
    if num_classes is not None and num_classes < minimum:
        raise ValueError(
            f"The {name} loss needs at least {minimum} classes. Received: num_classes={num_classes}"
        )


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
    _check_num_classes("DLR", logits.shape[-1], 3)
    top = tf.math.top_k(logits, k=3).values
    return margin_loss(logits, y) / (top[:, 0] - top[:, 2] + 1e-12)


def dlr_targeted_loss(logits, y, target):
    """Per-example targeted Difference of Logits Ratio of Croce and Hein 2020.

    `-(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2 + 1e-12)` with `t` the
    target class and `z_pi1 >= ... >= z_pi4` the sorted logits ("Reliable
    evaluation of adversarial robustness with an ensemble of diverse
    parameter-free attacks", section 4, the loss of APGD-T). Maximising it
    pushes the target logit above the true one. Invariant to shifting and scaling the logits; needs
    at least 4 classes.

    Args:
        logits: Float logits `[N, num_classes]`.
        y: True labels, int `[N]`.
        target: Target labels, int `[N]`.

    Returns:
        The losses, float `[N]`.

    Raises:
        ValueError: Fewer than 4 classes.
    """
    num_classes = logits.shape[-1]
    _check_num_classes("targeted DLR", num_classes, 4)
    top = tf.math.top_k(logits, k=4).values
    difference = _logit_of(logits, y, num_classes) - _logit_of(logits, target, num_classes)
    return -difference / (top[:, 0] - 0.5 * (top[:, 2] + top[:, 3]) + 1e-12)


_LOSS_FNS = {"ce": cross_entropy_loss, "margin": margin_loss, "dlr": dlr_loss}
LOSSES = tuple(_LOSS_FNS)
_TARGETED_LOSS_FNS = {"dlr_targeted": dlr_targeted_loss}
TARGETED_LOSSES = tuple(_TARGETED_LOSS_FNS)


def loss_by_name(loss):
    """The loss function named `loss`, one of `LOSSES`.

    Raises:
        ValueError: `loss` is not a name of `LOSSES`.
    """
    if loss not in _LOSS_FNS:
        raise ValueError(f"`loss` must be one of {LOSSES}. Received: loss={loss!r}")
    return _LOSS_FNS[loss]


def targeted_loss(loss, target):
    """The targeted loss named `loss` towards `target`, as a `(logits, y)` loss.

    Args:
        loss: A name of `TARGETED_LOSSES`.
        target: Target class per example, int `[N]`, same order as the `y`
            the returned loss will receive.

    Returns:
        A callable `(logits, y) -> [N]`, usable wherever a loss function is.

    Raises:
        ValueError: `loss` is not a name of `TARGETED_LOSSES`.
    """
    if loss not in _TARGETED_LOSS_FNS:
        raise ValueError(f"`loss` must be one of {TARGETED_LOSSES}. Received: loss={loss!r}")
    return functools.partial(_TARGETED_LOSS_FNS[loss], target=target)


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
    loss_fn = loss if callable(loss) else loss_by_name(loss)
    x = tf.convert_to_tensor(x)
    with tf.GradientTape() as tape:
        tape.watch(x)
        logits = tf.cast(model_fn(x), tf.float32)
        losses = loss_fn(logits, y)
    gradient = tape.gradient(losses, x)
    if gradient is None:  # The model does not depend on its input at all.
        gradient = tf.zeros_like(x)
    return losses, logits, gradient
