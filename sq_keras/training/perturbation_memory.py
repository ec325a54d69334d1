"""Where free adversarial training keeps each example's perturbation between visits.

Two kinds, both with `start(images, indices, seed)` (the perturbed images an
update starts from) and `store(indices, x_adv, images)`:

- `PerturbationMemory` ("example"): one l-inf perturbation per training
  example, found by the example's index in the training set, kept across
  epochs (Zheng et al. 2020, ATTA). Its size is `examples x pixels x bytes`
  per copy: `memory_bytes` computes it and `check_memory_fits` refuses one
  that would not fit, naming the alternatives.
- `ShardedMemory`: a `PerturbationMemory` split with the data over the
  workers of a multi-worker run. Worker `w` of `W` keeps only the examples
  it reads, those with `index % W == w`, as rows `index // W` of a variable
  of its own (`local_memory_variable`): `examples x pixels x bytes / W` per
  worker, written without any communication.
- `ReplayStart` ("none"): no memory at all. Each minibatch starts from a
  fresh random (or zero) perturbation, carried only across its
  `free_replays` updates (Shafahi et al. 2019's minibatch replay); for
  training sets too large to keep one value per pixel.

```python
variable = tf.Variable(initial_memory(60_000, (28, 28, 1), eps=0.3, dtype="int8"), ...)
memory = PerturbationMemory(variable, eps=0.3)
x_adv = memory.start(images, indices, seed)      # inside the eps-ball and [0, 1]
memory.store(indices, x_adv, images)             # in a replica context
```

The "int8" dtype keeps each perturbation as a whole number of steps of
`eps / 127`: a quarter of float32's memory, exact to that grid (a stored
perturbation is rounded to it).
"""

import os

import numpy as np
import tensorflow as tf
from tensorflow.python.ops import resource_variable_ops

from sq_keras import attacks

FREE_INITS = ("uniform", "zeros")
FREE_MEMORIES = ("example", "none")
MEMORY_DTYPES = ("float32", "bfloat16", "int8")
# int8 memory: a perturbation is a whole number of steps of eps / INT8_LEVELS.
INT8_LEVELS = 127
# The memory may take at most this share of the host's available memory.
MEMORY_BUDGET_FRACTION = 0.5


class MemoryBudgetError(ValueError):
    """A perturbation memory larger than the memory this host can give it."""


def memory_bytes(num_examples, image_shape, dtype, *, shards=1):
    """Bytes of one shard of a memory of `num_examples` perturbations.

    Args:
        num_examples: Training examples.
        image_shape: `(H, W, C)`.
        dtype: One of `MEMORY_DTYPES`.
        shards: Parts the examples are split into (one per worker); each
            holds `ceil(num_examples / shards)` of them.
    """
    per_shard = -(-int(num_examples) // int(shards))
    return per_shard * int(np.prod(image_shape)) * np.dtype(_numpy_dtype(dtype)).itemsize


def _numpy_dtype(dtype):
    return np.float16 if dtype == "bfloat16" else dtype  # same itemsize as bfloat16


def describe_memory(num_examples, image_shape, dtype, *, shards=1):
    """One line: the memory's shape, dtype and size, e.g. for a run's log."""
    size = memory_bytes(num_examples, image_shape, dtype, shards=shards)
    where = f" per shard of {shards}" if shards > 1 else ""
    return (
        f"Perturbation memory: {num_examples} x {'x'.join(map(str, image_shape))} {dtype} "
        f"= {size / 1e6:.1f} MB{where}."
    )


def available_host_bytes():
    """Memory the host can still give (`MemAvailable`), else its physical memory."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def check_memory_fits(num_examples, image_shape, dtype, *, shards=1, available=None):
    """Raises `MemoryBudgetError` if the memory would take over half the available memory.

    Args:
        available: Bytes available; default `available_host_bytes()`.

    Raises:
        MemoryBudgetError: With the memory's size and the ways to shrink or
            avoid it.
    """
    size = memory_bytes(num_examples, image_shape, dtype, shards=shards)
    available = available_host_bytes() if available is None else available
    if size <= MEMORY_BUDGET_FRACTION * available:
        return
    smaller = [
        f"{d}: {memory_bytes(num_examples, image_shape, d, shards=shards) / 1e9:.2f} GB"
        for d in MEMORY_DTYPES
        if d != dtype
    ]
    raise MemoryBudgetError(
        f"The perturbation memory would need {size / 1e9:.2f} GB ({num_examples} examples of "
        f"{'x'.join(map(str, image_shape))} in {dtype}), more than "
        f"{MEMORY_BUDGET_FRACTION:.0%} of the {available / 1e9:.2f} GB available. Use a "
        f"smaller memory dtype (free_memory_dtype {', '.join(smaller)}), shard it over more "
        "workers, or keep no memory (free_memory='none': each minibatch's perturbation "
        "carried across its free_replays updates only)."
    )


def _uniform(shape, eps, seed):
    """Uniform in [-eps, eps], keyed by an int64 `[2]` seed."""
    return tf.random.stateless_uniform(shape, seed, -eps, eps)


# The rows of a uniform initial memory drawn at once: 64 MiB of float32 at most
# (and a multiple of 4 rows), so that a worker's peak is its own shard plus one
# chunk, not the whole memory.
INIT_CHUNK_BYTES = 64 * 2**20
_PHILOX = tf.random.Algorithm.PHILOX.value  # The stateless generator of CPUs and GPUs.


def _uniform_rows(num_rows, image_shape, eps, seed, rows, chunk_rows, encode=None):
    """Rows `rows` (ascending) of `_uniform((num_rows, *image_shape), eps, seed)`,
    drawn `chunk_rows` rows (a multiple of 4) at a time, each chunk's rows
    passed through `encode` (float32 -> the stored dtype) as it is drawn.

    The stateless draw is a Philox counter stream: element `i` of the whole
    tensor is output `i % 4` of counter `counter + i // 4`, so a chunk that
    starts at a multiple of 4 elements is drawn with its counter advanced by
    its offset, and the rows are the whole draw's, bit for bit.
    """
    encode = encode or (lambda delta: delta)
    row_size = int(np.prod(image_shape))
    key, counter = tf.raw_ops.StatelessRandomGetKeyCounter(seed=seed)
    alg = tf.raw_ops.StatelessRandomGetAlg()
    if int(alg) != _PHILOX:  # Another generator's counter is not advanced this way.
        chunk_rows = int(num_rows)
    low, high = tf.constant(-eps, tf.float32), tf.constant(eps, tf.float32)
    parts = []
    for first in range(0, int(num_rows), chunk_rows):
        last = min(first + chunk_rows, int(num_rows))
        wanted = rows[(rows >= first) & (rows < last)]
        if not len(wanted):
            continue
        unit = tf.raw_ops.StatelessRandomUniformV2(
            shape=(last - first, *image_shape),
            key=key,
            counter=counter + tf.constant([first * row_size // 4, 0], counter.dtype),
            alg=alg,
            dtype=tf.float32,
        )
        # As `tf.random.stateless_uniform`: unit * (max - min) + min, in float32.
        delta = unit * (high - low) + low
        if len(wanted) < last - first:
            delta = tf.gather(delta, wanted - first)
        parts.append(encode(delta))
    if not parts:
        return encode(tf.zeros((0, *image_shape), tf.float32))
    return parts[0] if len(parts) == 1 else tf.concat(parts, axis=0)


def _encode(delta, dtype, eps):
    """float32 perturbations -> the memory's dtype (int8: steps of eps / 127)."""
    if dtype == "int8":
        steps = tf.round(delta * (INT8_LEVELS / eps))
        return tf.cast(tf.clip_by_value(steps, -INT8_LEVELS, INT8_LEVELS), tf.int8)
    return tf.cast(delta, dtype)


def _decode(stored, eps):
    """The memory's values -> float32 perturbations."""
    if stored.dtype == tf.int8:
        return tf.cast(stored, tf.float32) * (eps / INT8_LEVELS)
    return tf.cast(stored, tf.float32)


def shard_examples(num_examples, shard, shards):
    """The training examples worker `shard` of `shards` keeps: `index % shards == shard`.

    Returns:
        int64 indices, in order: example `i` is the shard's row `i // shards`.
    """
    return np.arange(shard, int(num_examples), shards, dtype=np.int64)


def initial_memory(
    num_train, image_shape, *, eps, init="uniform", dtype="float32", seed=0, shard=(0, 1)
):
    """The memory's initial value: `[num_train, *image_shape]` in `dtype`.

    Args:
        init: "uniform" (in [-eps, eps], keyed by `seed`) or "zeros".
        shard: `(index, count)`: only the rows of the examples of shard
            `index` of `count` (`shard_examples`), the same values as the
            whole memory's rows. A uniform start draws the memory in chunks
            of `INIT_CHUNK_BYTES` of float32 and keeps the shard's rows, so
            a worker never holds more than its shard and one chunk.

    Raises:
        ValueError: An unknown `init` or `dtype`.
    """
    if init not in FREE_INITS:
        raise ValueError(f"`init` must be one of {FREE_INITS}. Received: init={init!r}")
    if dtype not in MEMORY_DTYPES:
        raise ValueError(f"`dtype` must be one of {MEMORY_DTYPES}. Received: dtype={dtype!r}")
    index, count = shard
    rows = shard_examples(num_train, index, count)
    if init == "zeros":
        return tf.zeros((len(rows), *image_shape), dtype)
    row_bytes = 4 * int(np.prod(image_shape))
    chunk_rows = max(4, INIT_CHUNK_BYTES // row_bytes // 4 * 4)
    seed = tf.constant([seed, 7_919], tf.int64)
    return _uniform_rows(
        num_train,
        image_shape,
        eps,
        seed,
        rows,
        chunk_rows,
        encode=lambda delta: _encode(delta, dtype, eps),
    )


def memory_variable(initial):
    """A non-trainable `tf.Variable` holding `initial`, mirrored without aggregation.

    Created under a `tf.distribute` strategy's scope it has one copy per
    replica; `PerturbationMemory.store` keeps the copies identical.
    """
    return tf.Variable(
        initial,
        trainable=False,
        name="perturbations",
        synchronization=tf.VariableSynchronization.ON_WRITE,
        aggregation=tf.VariableAggregation.NONE,
    )


def local_memory_variable(initial):
    """A non-trainable `tf.Variable` holding `initial`, this process's own.

    Even under a `tf.distribute` strategy's scope it is one plain variable
    on this worker, neither mirrored nor synchronised: a `ShardedMemory`'s
    shard, which no other worker holds.
    """
    # tf.Variable(...) would go through the strategy's variable creator,
    # which makes every variable distributed (and refuses synchronization
    # NONE); the class itself makes a plain one.
    return resource_variable_ops.ResourceVariable(initial, trainable=False, name="perturbations")


def _start_from(images, delta, eps):
    return attacks.clip_to_bounds(attacks.project_linf(images + delta, images, eps))


class PerturbationMemory:
    """One l-inf perturbation per training example, kept across epochs.

    Wraps a variable `[num_train, H, W, C]` (float32, bfloat16 or int8, see
    `initial_memory`; a `tf.Variable` or a Keras variable). Under a
    `tf.distribute` strategy the variable is mirrored, one copy per replica,
    with no aggregation: each replica gathers the whole global batch's
    indices and perturbations (`all_gather`) and applies the same scatter to
    its own copy, so the copies stay identical and a step over several
    replicas writes what a single-device step writes.

    Args:
        variable: The memory.
        eps: Radius of the perturbations (and of int8's grid).
    """

    takes_indices = True

    def __init__(self, variable, *, eps):
        self.variable = variable
        self.eps = eps
        self.state = {"perturbations": variable}

    def describe(self):
        """One line: the memory's shape, dtype and size."""
        shape = tuple(self.variable.shape)
        return describe_memory(shape[0], shape[1:], self._tf_variable().dtype.name)

    def _tf_variable(self):
        # A Keras variable keeps its tf.Variable as `.value`.
        value = getattr(self.variable, "value", self.variable)
        return value if isinstance(value, tf.Variable) else self.variable

    def _rows(self, indices):
        """The memory's rows of the examples `indices`."""
        return indices

    def start(self, images, indices, seed=None):
        """The examples' stored perturbed images, projected into the eps-ball and [0, 1]."""
        del seed
        delta = _decode(tf.gather(self._tf_variable(), self._rows(indices)), self.eps)
        return _start_from(images, tf.cast(delta, images.dtype), self.eps)

    def store(self, indices, x_adv, images):
        """Keeps `x_adv - images` for the examples `indices` (in replica context)."""
        context = tf.distribute.get_replica_context()
        variable = self._tf_variable()
        delta = _encode(tf.cast(x_adv - images, tf.float32), variable.dtype.name, self.eps)
        all_indices = context.all_gather(indices, axis=0)
        all_deltas = context.all_gather(delta, axis=0)
        variable.scatter_update(tf.IndexedSlices(all_deltas, all_indices))


class ShardedMemory(PerturbationMemory):
    """This worker's shard of the memory: the examples it reads, and no others.

    Worker `shard` of `shards` reads only the examples with
    `index % shards == shard` (the input pipeline's `shard`), so it keeps only
    theirs, example `i` as row `i // shards` of a variable of its own
    (`local_memory_variable`, `initial_memory(..., shard=...)`). `store`
    writes a replica's own examples without gathering the other replicas':
    the memory is `examples x pixels x bytes / shards` per worker and costs
    no communication. The shard is not part of the run's shared checkpoint
    (`state` is empty): each worker checkpoints its own (`shard_state`).

    Args:
        variable: The shard, `[len(shard_examples(N, shard, shards)), H, W, C]`.
        eps: Radius of the perturbations (and of int8's grid).
        shard: This worker's index.
        shards: Workers.
        num_examples: Training examples N of the whole memory.
    """

    def __init__(self, variable, *, eps, shard, shards, num_examples):
        super().__init__(variable, eps=eps)
        self.shard, self.shards, self.num_examples = shard, shards, num_examples
        self.state = {}
        self.shard_state = {"perturbations": variable}

    def describe(self):
        """One line: the whole memory and this worker's shard of it."""
        shape = tuple(self.variable.shape)
        dtype = self._tf_variable().dtype.name
        return describe_memory(self.num_examples, shape[1:], dtype, shards=self.shards) + (
            f" This worker (shard {self.shard}) keeps examples i % {self.shards} == "
            f"{self.shard}: {shape[0]} of them."
        )

    def _rows(self, indices):
        return indices // self.shards

    def store(self, indices, x_adv, images):
        """Keeps `x_adv - images` for this replica's examples `indices`."""
        variable = self._tf_variable()
        delta = _encode(tf.cast(x_adv - images, tf.float32), variable.dtype.name, self.eps)
        variable.scatter_update(tf.IndexedSlices(delta, self._rows(indices)))


class ReplayStart:
    """No memory: each minibatch starts afresh, carried across its replays only.

    Args:
        eps: Radius.
        init: "uniform" (in [-eps, eps], keyed by `seed` and the step's
            seed) or "zeros".
        seed: Integer seed of the run.
    """

    takes_indices = False
    state = {}

    def __init__(self, *, eps, init="uniform", seed=0):
        if init not in FREE_INITS:
            raise ValueError(f"`init` must be one of {FREE_INITS}. Received: init={init!r}")
        self.eps, self.init, self.seed = eps, init, seed

    def describe(self):
        """One line: there is no memory."""
        return (
            "Perturbation memory: none (each minibatch's perturbation lives through its replays)."
        )

    def start(self, images, indices=None, seed=None):
        """`images` plus the initial perturbation; `seed`: the step's int64 seed."""
        del indices
        if self.init == "zeros":
            return images
        key = tf.stack([tf.constant(self.seed, tf.int64), tf.cast(seed, tf.int64)])
        delta = tf.cast(_uniform(tf.shape(images), self.eps, key), images.dtype)
        return _start_from(images, delta, self.eps)

    def store(self, indices, x_adv, images):
        """Keeps nothing."""
        del indices, x_adv, images
