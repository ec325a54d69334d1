"""Per-step seeds for the stateless randomness of the train steps.

```python
seed = step_seed(optimizer)   # in a replica context: distinct per step and replica
```
"""

import tensorflow as tf


def step_seed(optimizer):
    """An int64 seed distinct per optimizer step and per replica.

    Called in a replica context (under `strategy.run`, or anywhere under the
    default strategy).
    """
    context = tf.distribute.get_replica_context()
    return tf.cast(optimizer.iterations, tf.int64) * 1024 + tf.cast(
        context.replica_id_in_sync_group, tf.int64
    )
