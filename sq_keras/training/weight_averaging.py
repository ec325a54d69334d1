"""The moving average of a model's weights, put in place where a run reads its model.

With `TrainConfig.ema_decay`, Adam keeps an exponential moving average of
every trainable weight (Keras's `use_ema`: after each update,
`average = decay * average + (1 - decay) * weight`; the first update copies
the weight). Training keeps updating the weights themselves; what the run
evaluates after each epoch, saves as its model and exports is the average.
Checkpoints hold both (the averages are optimizer variables), so a resumed
run continues both exactly.

Non-trainable variables (a quantizer's alpha, batch-norm statistics) are not
averaged: the model keeps their current values.

```python
with averaged_weights(model, optimizer):
    accuracy = evaluate_accuracy(model, batches)   # the average's
# the weights training left are back
```
"""

import contextlib

import tensorflow as tf


def _inner(optimizer):
    """The optimizer that keeps the averages (inside a loss-scale wrapper)."""
    return getattr(optimizer, "inner_optimizer", optimizer)


def keeps_average(optimizer):
    """Whether `optimizer` keeps a moving average that has seen an update."""
    inner = _inner(optimizer)
    return bool(getattr(inner, "use_ema", False)) and int(inner.iterations.numpy()) > 0


@contextlib.contextmanager
def averaged_weights(model, optimizer):
    """Within the block `model`'s trainable weights are `optimizer`'s averages.

    The weights are put back when the block ends, also on an exception. With
    an optimizer that keeps no average, or before its first update (when the
    averages hold nothing yet), the model is left as it is.

    Args:
        model: The model the optimizer was built for.
        optimizer: A Keras optimizer, possibly loss-scaled.
    """
    if optimizer is None or not keeps_average(optimizer):
        yield model
        return
    variables = model.trainable_variables
    saved = [tf.identity(v.value) for v in variables]
    _inner(optimizer).finalize_variable_values(variables)
    try:
        yield model
    finally:
        for variable, value in zip(variables, saved):
            variable.assign(value)
