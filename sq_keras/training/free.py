"""Free adversarial training: the weight update's backward pass also crafts the attack.

One backward pass per step gives both the weight gradients and the input
gradient (Shafahi et al. 2019, "Adversarial training for free!"). The input
gradient moves each example's perturbation by one signed step; the
perturbation is kept per example in a memory and is the start at the
example's next visit, so it accumulates over epochs (Zheng et al. 2020,
"Efficient adversarial training with transferable adversarial examples",
ATTA). With `free_replays = m` every minibatch is trained on m times in a
row, the perturbation carried from one replay to the next (Shafahi et al.'s
free training); train m times fewer epochs for the same number of updates.

Through a `SoftQuantization` front the forward pass is exactly the model's,
the quantizer's input derivative is its BPDA stand-in (`config.stand_in`:
straight-through or a smooth copy), and the thresholds keep their true
gradient (`shared_backward_model`).

```python
step = build_free_step(model, optimizer, config, strategy, num_train=60_000)
loss_sum, correct, n = step(images, labels, indices)  # indices into the training set
step.state               # {"perturbations": the memory's tf.Variable}, to checkpoint
```

Memory cost (`config.free_memory = "example"`): one value per training
pixel, 60,000 x 784 for MNIST: 188 MB in float32, 94 MB in bfloat16, 47 MB
in int8, held by every replica and written into every checkpoint; sharded
with the data over the W workers of a multi-worker run (`shard=(w, W)`),
a W-th of it per worker, each worker checkpointing its own. With
`free_memory = "none"` there is no memory (`ReplayStart`): the step takes
`step(images, labels)` and each minibatch's perturbation lives through its
`free_replays` updates only. `sq_keras.RobustModel` runs the same update
(`free_replica_step`) inside `fit`.
"""

import dataclasses
import typing

import keras
import tensorflow as tf

from sq_keras import attacks
from sq_keras.attacks.bpda import stand_in_derivative
from sq_keras.training.fast_backward import fast_backward_model
from sq_keras.training.perturbation_memory import PerturbationMemory
from sq_keras.training.perturbation_memory import ReplayStart
from sq_keras.training.perturbation_memory import ShardedMemory
from sq_keras.training.perturbation_memory import check_memory_fits
from sq_keras.training.perturbation_memory import initial_memory
from sq_keras.training.perturbation_memory import local_memory_variable
from sq_keras.training.perturbation_memory import memory_variable
from sq_keras.training.seeding import step_seed

# The losses of the free update (`TrainConfig.free_loss`): cross-entropy on
# the perturbed batch, or the TRADES objective (`trades_loss_and_gradients`).
FREE_LOSSES = ("ce", "trades")


def shared_backward_model(model, *, stand_in="identity", smooth_alpha=10.0):
    """A copy of `model` whose one backward pass serves the update and the attack.

    Layers and weights are the model's own, and so is every output. Each
    `SoftQuantization` layer q becomes `q(sg(x)) + (x - sg(x)) * sg(d(x))`,
    with `sg` the stop-gradient and `d` the derivative of the BPDA stand-in
    (1 for "identity", see `sq_keras.attacks.bpda`): the value is exactly
    `q(x)`, the derivative in x is `d(x)`, and the thresholds get their true
    gradient. A float32 single-channel first convolution gets the fast input
    gradient of `sq_keras.training.fast_backward`.

    Args:
        model: A functional `keras.Model`.
        stand_in: One of `sq_keras.attacks.STAND_INS`.
        smooth_alpha: Steepness of the "smooth" stand-in.

    Returns:
        A `keras.Model` called like `model`. Weights read inside the
        rewritten layers are not its own: differentiate with respect to
        `model.trainable_variables`.
    """
    return fast_backward_model(
        model, quantizer_call=lambda layer: _straight_through(layer, stand_in, smooth_alpha)
    )


def _straight_through(layer, stand_in, smooth_alpha):
    """A Lambda layer: `layer`'s value, the stand-in's input derivative."""

    def forward(x, training=None):
        derivative = tf.cast(stand_in_derivative(layer, x, stand_in, smooth_alpha), x.dtype)
        through = (x - tf.stop_gradient(x)) * tf.stop_gradient(derivative)
        return layer(tf.stop_gradient(x), training=training) + through

    name = f"{layer.name}_straight_through"
    return keras.layers.Lambda(forward, name=name, dtype=layer.dtype_policy)


def loss_and_gradients(model_fn, variables, images, labels, *, scale=None, regularization=None):
    """One backward pass: the weight gradients and the input gradient together.

    Args:
        model_fn: Images -> logits, e.g. a `shared_backward_model` called
            with `training=True`.
        variables: The variables to differentiate, e.g. the model's
            trainable ones.
        images: float32 `[N, H, W, C]`.
        labels: int `[N]`.
        scale: Optional map of the summed loss to the loss to differentiate
            (the step divides by the global batch and applies the
            optimiser's loss scale); None keeps the sum.
        regularization: Optional callable returning the model's
            regularization losses (a list of scalars), read after the
            forward pass; each example carries them once.

    Returns:
        `(per_example_losses, logits, variable_gradients, input_gradient)`;
        the per-example losses include the regularization.
    """

    def loss(x):
        logits = tf.cast(model_fn(x), tf.float32)
        return attacks.cross_entropy_loss(logits, labels), logits

    return _one_backward_pass(loss, variables, images, scale=scale, regularization=regularization)


def _one_backward_pass(loss, variables, x, *, scale, regularization):
    """Differentiates `loss(x) -> (per_example, logits)` in `variables` and `x` at once.

    The regularization losses join each example's loss; `scale` maps the sum
    to what is differentiated. Returns `(per_example, logits, variable
    gradients, input gradient)`.
    """
    with tf.GradientTape() as tape:
        tape.watch(x)
        per_example, logits = loss(x)
        extra = regularization() if regularization is not None else []
        if extra:
            per_example += tf.cast(tf.add_n(extra), per_example.dtype)
        total = tf.reduce_sum(per_example)
        if scale is not None:
            total = scale(total)
    *grads, input_grad = tape.gradient(total, [*variables, x])
    return per_example, logits, grads, input_grad


def trades_loss_and_gradients(
    model_fn, variables, images, x_adv, labels, *, beta, scale=None, regularization=None
):
    """One backward pass of the TRADES objective: weight gradients and the KL's input gradient.

    The per-example loss is Zhang et al. 2019's
    `CE(f(images), y) + beta * KL(softmax f(images) || softmax f(x_adv))`.
    Clean and perturbed images run through `model_fn` as one batch (a model
    with batch statistics sees both). The input gradient is taken at `x_adv`
    only: the direction that raises the KL term, TRADES' inner maximisation.

    Args:
        model_fn, variables, labels, scale, regularization: As in
            `loss_and_gradients`.
        images: The clean batch, float32 `[N, H, W, C]`.
        x_adv: The perturbed batch, same shape.
        beta: Weight of the KL term.

    Returns:
        `(per_example_losses, adversarial_logits, variable_gradients,
        input_gradient)`.
    """
    n = tf.shape(images)[0]

    def loss(x):
        logits = tf.cast(model_fn(tf.concat([images, x], axis=0)), tf.float32)
        clean, adv = logits[:n], logits[n:]
        log_p_clean = tf.nn.log_softmax(clean)
        kl = tf.reduce_sum(tf.exp(log_p_clean) * (log_p_clean - tf.nn.log_softmax(adv)), axis=-1)
        return attacks.cross_entropy_loss(clean, labels) + beta * kl, adv

    return _one_backward_pass(loss, variables, x_adv, scale=scale, regularization=regularization)


def signed_step(x_adv, gradient, images, *, eps, step_size, skip_non_finite=True):
    """`x_adv + step_size * sign(gradient)`, back in the eps-ball and [0, 1].

    Args:
        skip_non_finite: Non-finite gradient entries move nothing: under
            mixed_float16 a loss-scale overflow makes them, and the optimiser
            skips that update too. Without loss scaling only a diverged model
            has them, and the free step leaves the guard out: its three
            element-wise ops cost about 2% of an MNIST train step on CPU.
    """
    if skip_non_finite:
        gradient = tf.where(tf.math.is_finite(gradient), gradient, tf.zeros_like(gradient))
    moved = x_adv + step_size * tf.sign(tf.cast(gradient, x_adv.dtype))
    return attacks.clip_to_bounds(attacks.project_linf(moved, images, eps))


def replay_start(config):
    """The memory-less start of `config.free_memory = "none"`."""
    return ReplayStart(eps=config.eps, init=config.free_init, seed=config.seed)


def initial_memory_value(config, *, num_train, image_shape, shard=(0, 1)):
    """The per-example memory's initial value, once it is known to fit in memory.

    Args:
        shard: `(index, count)`: only the rows of shard `index` of `count`
            (see `sq_keras.training.perturbation_memory.ShardedMemory`).

    Raises:
        MemoryBudgetError: The memory (its shard) would not fit in the
            host's memory.
    """
    check_memory_fits(num_train, image_shape, config.free_memory_dtype, shards=shard[1])
    return initial_memory(
        num_train,
        image_shape,
        eps=config.eps,
        init=config.free_init,
        dtype=config.free_memory_dtype,
        seed=config.seed,
        shard=shard,
    )


def make_memory(config, *, num_train, image_shape, shard=(0, 1)):
    """The `config.free_memory` kind of memory, its variable created in the current scope.

    Args:
        shard: `(index, count)` of this worker among those that read the
            data (`sq_keras.distribute.worker_shard`). With `count > 1` the
            memory is this worker's shard only.

    Returns:
        A `PerturbationMemory` over a new `tf.Variable` for "example" (a
        `ShardedMemory` over a variable of this worker's own when
        `count > 1`), a `ReplayStart` for "none".

    Raises:
        MemoryBudgetError: The memory would not fit in the host's memory.
        ValueError: "example" without `num_train`.
    """
    if config.free_memory == "none":
        return replay_start(config)
    if not num_train:
        raise ValueError(
            f"Method {config.method} keeps one perturbation per training example and needs "
            "`num_train`, the size of the training set (or free_memory='none')."
        )
    initial = initial_memory_value(
        config, num_train=num_train, image_shape=image_shape, shard=shard
    )
    index, count = shard
    if count == 1:
        return PerturbationMemory(memory_variable(initial), eps=config.eps)
    return ShardedMemory(
        local_memory_variable(initial),
        eps=config.eps,
        shard=index,
        shards=count,
        num_examples=num_train,
    )


@dataclasses.dataclass(frozen=True)
class FreeUpdate:
    """The free update of `variables`, run in a replica context.

    Attributes:
        model_fn: Images -> logits in training mode, from a
            `shared_backward_model`.
        optimizer: The optimiser of `variables`.
        variables: The trained variables (the model's trainable ones).
        config: A resolved `TrainConfig` (`eps`, `free_step_size`,
            `free_replays`).
        regularization: Optional callable returning the model's
            regularization losses (see `loss_and_gradients`).
        total_updates: Optimiser updates of the whole run; needed when
            `config.free_step_end` schedules the step (`step_size`).
    """

    model_fn: typing.Callable
    optimizer: keras.optimizers.Optimizer
    variables: list
    config: object
    regularization: typing.Callable = None
    total_updates: int = None

    def __post_init__(self):
        if self.config.free_step_end is not None and not self.total_updates:
            raise ValueError(
                "free_step_end schedules the per-visit step over the run's updates, whose "
                "number is unknown here (a stream that does not say its size, or a step "
                "built without it). Leave free_step_end unset for a constant step."
            )

    def step_size(self):
        """The signed step of the update the optimiser has just applied.

        `config.free_step_size`, or with `config.free_step_end` linear in the
        optimiser's updates from `free_step_size` (the first update) to
        `free_step_end` (the last of `total_updates`). A function of the
        checkpointed update counter, so a resumed run continues the schedule.
        """
        start, end = self.config.free_step_size, self.config.free_step_end
        if end is None:
            return start
        done = tf.cast(self.optimizer.iterations - 1, tf.float32)
        frac = tf.clip_by_value(done / float(max(self.total_updates - 1, 1)), 0.0, 1.0)
        return start + (end - start) * frac

    def replays(self, x_adv, images, labels):
        """`config.free_replays` updates, each on the last one's perturbed batch.

        Each update scales the summed loss by the global batch size (and the
        optimiser's loss scale) and moves `x_adv` one signed step of
        `step_size()`, back into the eps-ball around `images`.

        Returns:
            `(x_adv, per_example_losses, logits)`: the last perturbed batch,
            and every replay's losses and logits, concatenated in order.
        """
        context = tf.distribute.get_replica_context()
        global_n = tf.cast(context.all_reduce("SUM", tf.shape(labels)[0]), tf.float32)
        losses, all_logits = [], []
        for _ in range(self.config.free_replays):  # unrolled in the graph: m is a handful
            x_adv, per_example, logits = self._update(x_adv, images, labels, global_n)
            losses.append(per_example)
            all_logits.append(logits)
        return x_adv, tf.concat(losses, axis=0), tf.concat(all_logits, axis=0)

    def _update(self, x_adv, images, labels, global_n):
        optimizer = self.optimizer
        settings = dict(
            scale=lambda total: optimizer.scale_loss(total / global_n),
            regularization=self.regularization,
        )
        if self.config.free_loss == "trades":
            per_example, logits, grads, input_grad = trades_loss_and_gradients(
                self.model_fn,
                self.variables,
                images,
                x_adv,
                labels,
                beta=self.config.trades_beta,
                **settings,
            )
        else:
            per_example, logits, grads, input_grad = loss_and_gradients(
                self.model_fn, self.variables, x_adv, labels, **settings
            )
        optimizer.apply_gradients(zip(grads, self.variables))
        with tf.name_scope("free_signed_step"):
            x_next = signed_step(
                x_adv,
                input_grad,
                images,
                eps=self.config.eps,
                step_size=self.step_size(),
                skip_non_finite=isinstance(optimizer, keras.optimizers.LossScaleOptimizer),
            )
        return x_next, per_example, logits

    def replica_step(self, memory, images, labels, indices=None):
        """One replica's free step: start from `memory`, update, store.

        Args:
            memory: A `PerturbationMemory` or `ReplayStart`.
            indices: The examples' indices in the training set (None
                without a memory).

        Returns:
            `(per_example_losses, logits)` of every replay, concatenated.
        """
        seed = step_seed(self.optimizer)
        images = tf.cast(images, tf.float32)
        with tf.name_scope("free_memory_start"):  # the scopes name the ops in profiles
            x_adv = memory.start(images, indices, seed)
        x_adv, per_example, logits = self.replays(x_adv, images, labels)
        with tf.name_scope("free_memory_store"):
            memory.store(indices, x_adv, images)
        return per_example, logits


class FreeStep:
    """The free train step: `step(images, labels, indices)`.

    Returns `(loss_sum, num_correct, num_examples)` summed over replicas and
    replays (each replay counts its examples once more). Without a memory
    (`free_memory="none"`) `indices` may be left out.

    Attributes:
        memory: The `PerturbationMemory` or `ReplayStart`.
        state: What a checkpoint must hold besides model and optimiser.
    """

    def __init__(self, memory, step):
        self.memory = memory
        self.state = dict(memory.state)
        self._step = step

    def __call__(self, images, labels, indices=None):
        return self._step(images, labels, indices)


def build_free_step(
    model, optimizer, config, strategy, *, num_train=None, shard=(0, 1), total_updates=None
):
    """Free adversarial training of `model` on a training set of `num_train` examples.

    Uses `config.eps`, `config.free_step_size`, `config.free_step_end`, `config.free_replays`,
    `config.free_init`, `config.free_memory`, `config.free_memory_dtype`,
    `config.stand_in` and `config.seed`. Call under `strategy.scope()`.

    Args:
        shard: `(index, count)`: this worker reads only the examples with
            `index % count == shard index` and keeps only their memory
            (`ShardedMemory`); `(0, 1)` keeps the whole memory, mirrored.
        total_updates: Optimiser updates of the whole run; needed with
            `config.free_step_end`.

    Returns:
        A `FreeStep`.

    Raises:
        MemoryBudgetError: The memory would not fit in the host's memory.
        ValueError: `config.free_step_end` without `total_updates`.
    """
    model_fn = shared_backward_model(model, stand_in=config.stand_in)
    memory = make_memory(
        config, num_train=num_train, image_shape=model.input_shape[1:], shard=shard
    )
    update = FreeUpdate(
        lambda x: model_fn(x, training=True),
        optimizer,
        model.trainable_variables,
        config,
        total_updates=total_updates,
    )

    def replica_step(images, labels, indices):
        per_example, logits = update.replica_step(memory, images, labels, indices)
        predicted = tf.argmax(logits, axis=-1, output_type=labels.dtype)
        replayed = tf.tile(labels, [config.free_replays])
        correct = tf.reduce_sum(tf.cast(tf.equal(predicted, replayed), tf.int32))
        return tf.reduce_sum(per_example), correct, tf.shape(per_example)[0]

    @tf.function(jit_compile=False, reduce_retracing=True)
    def step(images, labels, indices):
        outputs = strategy.run(replica_step, args=(images, labels, indices))
        return tuple(strategy.reduce("SUM", value, axis=None) for value in outputs)

    return FreeStep(memory, step)
