"""Running one attack of the registry over all examples at one eps.

Batches go through a `tf.function` of the attack (split across replicas
under a `tf.distribute` strategy of several), with one progress line per
batch (`sq_keras.progress`: a live bar on a terminal, plain lines in a log)
that counts the examples misclassified so far.
"""

import time
import typing

import numpy as np
import tensorflow as tf

from sq_keras import attacks
from sq_keras import progress as progress_lib
from sq_keras.evaluation.registry import REGISTRY


class AttackOutcome(typing.NamedTuple):
    """What one attack at one eps left.

    Attributes:
        adversarial: The adversarial images of the attacked examples whose
            index is below `keep_adversarial` (all by default).
        predictions: The target's predictions on the attacked examples.
        queries: Their model queries, or None when not counted.
        seconds: Wall time of the attack.
        indices: The attacked examples (`[K]`, ascending), or None: all.
    """

    adversarial: np.ndarray
    predictions: np.ndarray
    queries: typing.Optional[np.ndarray]
    seconds: float
    indices: typing.Optional[np.ndarray] = None


def batches(num, batch_size):
    """`(start, stop)` of consecutive batches covering `num` examples."""
    return [(start, min(start + batch_size, num)) for start in range(0, num, batch_size)]


def predict(model_fn, images, batch_size):
    """Predicted classes (int64) of `images`, batch by batch."""
    predict_fn = tf.function(lambda x: tf.argmax(model_fn(x), -1, output_type=tf.int64))
    return np.concatenate(
        [predict_fn(images[a:b]).numpy() for a, b in batches(len(images), batch_size)]
    )


def batch_attack(spec, eps, settings, target, source):
    """A tf.function mapping `(x, y)` to `(x_adv, queries or -1)`."""
    kwargs = spec.kwargs(eps, settings)
    model_fn = spec.model.model_fn(target, source, settings)
    attack = spec.attack

    @tf.function(reduce_retracing=True)
    def run(x, y):
        if spec.returns_queries:
            return attack(model_fn, x, y, eps=eps, **kwargs)
        x_adv = attack(model_fn, x, y, eps=eps, **kwargs)
        return x_adv, -tf.ones([tf.shape(x)[0]], tf.int32)

    return run


def distributed(run, strategy):
    """`run(x, y)` with the batch split across the strategy's replicas."""
    if strategy is None or strategy.num_replicas_in_sync == 1:
        return run
    replicas = strategy.num_replicas_in_sync

    def distributed_run(x, y):
        x_parts = np.array_split(x.numpy(), replicas)
        y_parts = np.array_split(y.numpy(), replicas)
        xs = strategy.experimental_distribute_values_from_function(
            lambda ctx: tf.constant(x_parts[ctx.replica_id_in_sync_group])
        )
        ys = strategy.experimental_distribute_values_from_function(
            lambda ctx: tf.constant(y_parts[ctx.replica_id_in_sync_group])
        )
        x_adv, used = strategy.run(run, args=(xs, ys))
        gather = strategy.experimental_local_results
        return (
            tf.concat([tf.identity(t) for t in gather(x_adv)], axis=0),
            tf.concat([tf.identity(t) for t in gather(used)], axis=0),
        )

    return distributed_run


def _kept(indices, keep):
    """How many leading entries of ascending `indices` are below `keep`."""
    return len(indices) if keep is None else int(np.searchsorted(indices, keep))


def _identity_outcome(target, images, batch_size, indices, keep):
    """Every attack is the identity at eps = 0: only the clean predictions."""
    start = time.perf_counter()
    selected = images if indices is None else images[indices]
    predictions = predict(target.model_fn, selected, batch_size)
    kept = _kept(np.arange(len(images)) if indices is None else indices, keep)
    return AttackOutcome(selected[:kept], predictions, None, time.perf_counter() - start, indices)


def _attack_batch(run, predict_fn, images, labels, indices, keep):
    """Attacks the examples `indices`; returns the batch record of `BatchStore`."""
    start = time.perf_counter()
    x_adv, used = run(tf.constant(images[indices]), tf.constant(labels[indices]))
    predictions = predict_fn(x_adv).numpy()
    return {
        "indices": indices,
        "predictions": predictions,
        "queries": used.numpy(),
        "adversarial": x_adv.numpy()[: _kept(indices, keep)],
        "seconds": time.perf_counter() - start,
    }


def _stored(store, label, eps, index, indices):
    """Batch `index` from `store` if finished there (and on the same examples)."""
    record = None if store is None else store.load(label, eps, index)
    if record is not None and not np.array_equal(record["indices"], indices):
        raise ValueError(
            f"Stored batch {index} of {label} at eps={eps:g} attacked other examples: "
            f"the store {store.directory} is inconsistent; discard it (overwrite)."
        )
    return record


def _misclassified_so_far(records, labels):
    """Progress text: how many finished examples are misclassified after the attack."""
    done = [r for r in records if r is not None]
    attacked = sum(len(r["indices"]) for r in done)
    wrong = sum(int(np.sum(r["predictions"] != labels[r["indices"]])) for r in done)
    return f"{wrong} of {attacked} attacked misclassified"


def _outcome(records, indices, image_shape):
    """An `AttackOutcome` from the batch records, in order."""

    def joined(field, empty):
        return np.concatenate([r[field] for r in records]) if records else empty

    queries = joined("queries", np.zeros([0], np.int32))
    return AttackOutcome(
        joined("adversarial", np.zeros([0, *image_shape], np.float32)),
        joined("predictions", np.zeros([0], np.int64)),
        None if np.all(queries < 0) else queries,
        sum(r["seconds"] for r in records),
        indices,
    )


def run_attack(
    name,
    eps,
    target,
    images,
    labels,
    *,
    settings,
    source=None,
    batch_size=250,
    progress=True,
    description=None,
    strategy=None,
    registry=REGISTRY,
    indices=None,
    store=None,
    keep_adversarial=None,
):
    """Runs one attack of the suite over the examples at one eps.

    With a `tf.distribute` strategy of several replicas, each batch is split
    across the replicas and attacked under `strategy.run`. Every batch gets
    the same settings and seed, so its result does not depend on which
    batches ran before it: a resumed run equals an uninterrupted one.

    Args:
        name: Attack name in `registry`.
        eps: l-inf radius.
        target: The `Target` to attack.
        images: float32 `[N, H, W, C]` in [0, 1].
        labels: int64 `[N]`.
        settings: `AttackSettings`.
        source: `Target` a transfer attack is crafted on.
        batch_size: Examples per batch.
        progress: Report each finished batch.
        description: Progress text before the eps, and the entry in `store`;
            default `name`.
        strategy: Optional `tf.distribute` strategy.
        registry: The attack `Registry`.
        indices: Ascending indices of the examples to attack (the cascade's
            survivors); None: all.
        store: Optional `BatchStore`: finished batches are read from it and
            new ones written to it.
        keep_adversarial: Keep (and store) the adversarial images of the
            examples with a lower index only; None keeps all.

    Returns:
        An `AttackOutcome` of the attacked examples.
    """
    if eps == 0.0:
        return _identity_outcome(target, images, batch_size, indices, keep_adversarial)
    label = description or name
    run = distributed(batch_attack(registry[name], eps, settings, target, source), strategy)
    predict_fn = tf.function(lambda x: tf.argmax(target.model_fn(x), -1, output_type=tf.int64))
    selected = np.arange(len(images)) if indices is None else np.asarray(indices, np.int64)
    spans = [selected[a:b] for a, b in batches(len(selected), batch_size)]
    records = [_stored(store, label, eps, i, span) for i, span in enumerate(spans)]
    pending = [i for i, record in enumerate(records) if record is None]
    if progress and len(pending) < len(spans):
        print(
            f"{label} eps={eps:g}: {len(spans) - len(pending)}/{len(spans)} batches "
            f"read from {store.directory}",
            flush=True,
        )
    batch_lines = progress_lib.items(
        pending,
        f"{label} eps={eps:g}",
        enabled=progress,
        status=lambda: _misclassified_so_far(records, labels),
    )
    for i in batch_lines:
        records[i] = _attack_batch(run, predict_fn, images, labels, spans[i], keep_adversarial)
        if store is not None:
            store.save(label, eps, i, records[i])
    return _outcome(records, indices, images.shape[1:])


def zero_gradient_shares(model_fn, images, labels, *, batch_size=250):
    """Shares (percent) of examples and of input entries with a zero gradient.

    The gradient is that of the margin loss at the clean input; an example
    counts when its whole gradient is below 1e-12 in absolute value.
    """

    @tf.function
    def gradient(x, y):
        return attacks.loss_gradient(model_fn, x, y, "margin")[2]

    zero_examples, zero_entries, entries = 0, 0, 0
    for a, b in batches(len(images), batch_size):
        g = np.abs(gradient(tf.constant(images[a:b]), tf.constant(labels[a:b])).numpy())
        g = g.reshape(len(g), -1)
        zero_examples += int(np.sum(g.max(axis=1) < 1e-12))
        zero_entries += int(np.sum(g == 0.0))
        entries += g.size
    return 100.0 * zero_examples / len(images), 100.0 * zero_entries / entries
