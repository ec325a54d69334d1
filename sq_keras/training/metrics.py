"""What the training run measures after every epoch.

Clean accuracy on the test batches, and the size of the input gradient of the
loss: its mean l1 norm (`grad_l1`, the quantity the soft-quantization method
keeps small) and the share of exactly-zero entries (a sign of gradient
masking).

```python
accuracy = evaluate_accuracy(model, source.eval_batches())
grad_l1, zero_fraction = input_gradient_stats(model, images, labels)
```
"""

import tensorflow as tf

from sq_keras import attacks


def input_gradient_stats(model, images, labels):
    """Mean l1 norm of d(cross-entropy)/d(input) per example, and zero share.

    Args:
        model: Keras model returning logits.
        images: float32 `[N, H, W, C]`.
        labels: int `[N]`.

    Returns:
        `(mean_l1, zero_fraction)`: the mean over examples of
        `||grad_x L(x, y)||_1` and the fraction of gradient entries that are
        exactly zero (a sign of saturated, gradient-masking units).
    """
    images = tf.convert_to_tensor(images, tf.float32)
    _, _, grad = attacks.loss_gradient(lambda x: model(x, training=False), images, labels)
    l1 = tf.reduce_sum(tf.abs(grad), axis=tf.range(1, tf.rank(grad)))
    zero = tf.reduce_mean(tf.cast(tf.equal(grad, 0.0), tf.float32))
    return float(tf.reduce_mean(l1)), float(zero)


def evaluate_accuracy(model, batches):
    """Clean top-1 accuracy of `model` over a dataset of `(images, labels)` batches."""

    @tf.function(reduce_retracing=True)
    def predict(x):
        return tf.argmax(model(x, training=False), axis=-1)

    correct = seen = 0
    for x, y in batches:
        correct += int(tf.reduce_sum(tf.cast(predict(x) == y, tf.int32)))
        seen += int(tf.shape(y)[0])
    return correct / seen
