"""Choosing a `tf.distribute` strategy, and who writes files under it.

```python
strategy = make_strategy("mirrored")          # all local GPUs (else CPUs)
with strategy.scope():
    model = ...
if is_chief(strategy):
    write_results(...)
```

Under `multi_worker` the cluster comes from the `TF_CONFIG` environment
variable (`{"cluster": {"worker": ["host1:port", "host2:port"]},
"task": {"type": "worker", "index": 0}}`); worker 0 (or the task of type
"chief") is the chief and is the only one that writes the run's files.
"""

import json
import os

import tensorflow as tf

STRATEGIES = ("default", "mirrored", "multi_worker", "tpu")


def make_strategy(name, *, tpu=None):
    """Builds the strategy named `name`.

    Args:
        name: "default" (one device), "mirrored" (every local GPU, or every
            logical CPU when there is no GPU), "multi_worker"
            (`MultiWorkerMirroredStrategy`, cluster from `TF_CONFIG`) or "tpu".
        tpu: TPU name or address for "tpu" (None: the resolver's default).

    Raises:
        ValueError: Unknown name, or "multi_worker" without `TF_CONFIG`.
    """
    if name not in STRATEGIES:
        raise ValueError(f"Unknown strategy {name!r}. Valid: {', '.join(STRATEGIES)}.")
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        devices = tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("CPU")
        return tf.distribute.MirroredStrategy([d.name for d in devices])
    if name == "multi_worker":
        if "TF_CONFIG" not in os.environ:
            raise ValueError(
                "--strategy=multi_worker needs the TF_CONFIG environment variable, e.g. "
                '{"cluster": {"worker": ["host1:12345", "host2:12345"]}, '
                '"task": {"type": "worker", "index": 0}}.'
            )
        return tf.distribute.MultiWorkerMirroredStrategy()
    resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu)
    tf.config.experimental_connect_to_cluster(resolver)
    tf.tpu.experimental.initialize_tpu_system(resolver)
    return tf.distribute.TPUStrategy(resolver)


def task(strategy):
    """`(task_type, task_id)` of this process; `(None, None)` outside a cluster."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.task_type:
        return None, None
    return resolver.task_type, resolver.task_id


def is_chief(strategy):
    """True for the one process that writes the run's files."""
    task_type, task_id = task(strategy)
    if task_type is None or task_type == "chief":
        return True
    if task_type == "worker" and task_id == 0:
        cluster = json.loads(os.environ.get("TF_CONFIG", "{}")).get("cluster", {})
        return "chief" not in cluster
    return False


def worker_shard(strategy):
    """`(index, count)` of this process among the workers that read training data.

    Under `multi_worker` every worker (the "chief" task first, then the
    "worker" tasks) reads its own share of the data: the index and count
    are those of the input pipelines `tf.distribute` gives each worker
    (`tf.distribute.InputContext`). `(0, 1)` under any other strategy.

    Raises:
        ValueError: A `multi_worker` task that reads no data (e.g. an
            "evaluator" or "ps").
    """
    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return 0, 1
    task_type, task_id = task(strategy)
    if task_type is None:
        return 0, 1
    cluster = strategy.cluster_resolver.cluster_spec().as_dict()
    chiefs, workers = len(cluster.get("chief", [])), len(cluster.get("worker", []))
    if task_type == "chief":
        return int(task_id), chiefs + workers
    if task_type == "worker":
        return chiefs + int(task_id), chiefs + workers
    raise ValueError(
        f"A {task_type!r} task reads no training data; only 'chief' and 'worker' tasks train."
    )


def worker_dir(model_dir, strategy):
    """Where a non-chief process writes: `<model_dir>/workers/<type>_<id>`."""
    task_type, task_id = task(strategy)
    return os.path.join(model_dir, "workers", f"{task_type}_{task_id}")
