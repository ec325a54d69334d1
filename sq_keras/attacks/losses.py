"""Per-example attack losses on logits and the input gradient of a loss.

Attacks maximise these losses; `LOSSES` names them for every `loss=`
argument, and `loss_gradient` is the one place their input gradient is
computed.
"""

import tensorflow as tf


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
LOSSES = tuple(_LOSS_FNS)


def loss_by_name(loss):
    """The loss function named `loss`, one of `LOSSES`.

    Raises:
        ValueError: `loss` is not a name of `LOSSES`.
    """
    if loss not in _LOSS_FNS:
        raise ValueError(f"`loss` must be one of {LOSSES}. Received: loss={loss!r}")
    return _LOSS_FNS[loss]


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
