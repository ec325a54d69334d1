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

Memory cost: one value per training pixel, 60,000 x 784 for MNIST: 188 MB
in float32 (94 MB in bfloat16), held by every replica and written into every
checkpoint.
"""

import keras
import tensorflow as tf

from sq_keras import attacks
from sq_keras.attacks.bpda import stand_in_derivative
from sq_keras.training.fast_backward import fast_backward_model

FREE_INITS = ("uniform", "zeros")
MEMORY_DTYPES = ("float32", "bfloat16")


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


def loss_and_gradients(model_fn, variables, images, labels, *, scale=None):
    """One backward pass: the weight gradients and the input gradient together.

    Args:
        model_fn: Images -> logits, e.g. a `shared_backward_model` called
            with `training=True`.
        variables: The variables to differentiate, e.g. the model's
            trainable ones.
        images: float32 `[N, H, W, C]`.
        labels: int `[N]`.
        scale: Optional map of the summed cross-entropy to the loss to
            differentiate (the step divides by the global batch and applies
            the optimiser's loss scale); None keeps the sum.

    Returns:
        `(per_example_losses, logits, variable_gradients, input_gradient)`.
    """
    with tf.GradientTape() as tape:
        tape.watch(images)
        logits = tf.cast(model_fn(images), tf.float32)
        per_example = attacks.cross_entropy_loss(logits, labels)
        total = tf.reduce_sum(per_example)
        if scale is not None:
            total = scale(total)
    *grads, input_grad = tape.gradient(total, [*variables, images])
    return per_example, logits, grads, input_grad


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


class PerturbationMemory:
    """One l-inf perturbation per training example, kept across epochs.

    A non-trainable `tf.Variable` `[num_train, H, W, C]` (float32 or
    bfloat16). Created under a `tf.distribute` strategy's scope it is a
    mirrored variable, one copy per replica, with no aggregation: each
    replica gathers the whole global batch's indices and perturbations
    (`all_gather`) and applies the same scatter to its own copy, so the
    copies stay identical and a step over several replicas writes what a
    single-device step writes.

    Args:
        num_train: Training examples (the indices run over `[0, num_train)`).
        image_shape: `(H, W, C)`.
        eps: Radius; "uniform" draws the initial perturbations in [-eps, eps].
        init: "uniform" or "zeros".
        dtype: "float32" or "bfloat16".
        seed: Integer seed of the uniform initialisation.
    """

    def __init__(self, num_train, image_shape, *, eps, init="uniform", dtype="float32", seed=0):
        if init not in FREE_INITS:
            raise ValueError(f"`init` must be one of {FREE_INITS}. Received: init={init!r}")
        if dtype not in MEMORY_DTYPES:
            raise ValueError(f"`dtype` must be one of {MEMORY_DTYPES}. Received: dtype={dtype!r}")
        shape = (int(num_train), *image_shape)
        if init == "zeros":
            initial = tf.zeros(shape, dtype)
        else:
            seed = tf.constant([seed, 7_919], tf.int64)
            initial = tf.cast(tf.random.stateless_uniform(shape, seed, -eps, eps), dtype)
        self.variable = tf.Variable(
            initial,
            trainable=False,
            name="perturbations",
            synchronization=tf.VariableSynchronization.ON_WRITE,
            aggregation=tf.VariableAggregation.NONE,
        )

    def start(self, images, indices, *, eps):
        """The examples' stored perturbed images, projected into the eps-ball and [0, 1]."""
        delta = tf.cast(tf.gather(self.variable, indices), images.dtype)
        return attacks.clip_to_bounds(attacks.project_linf(images + delta, images, eps))

    def store(self, indices, x_adv, images):
        """Keeps `x_adv - images` for the examples `indices` (in replica context)."""
        context = tf.distribute.get_replica_context()
        delta = tf.cast(x_adv - images, self.variable.dtype)
        all_indices = context.all_gather(indices, axis=0)
        all_deltas = context.all_gather(delta, axis=0)
        self.variable.scatter_update(tf.IndexedSlices(all_deltas, all_indices))


class FreeStep:
    """The free train step: `step(images, labels, indices)`.

    Returns `(loss_sum, num_correct, num_examples)` summed over replicas and
    replays (each replay counts its examples once more).

    Attributes:
        memory: The `PerturbationMemory`.
        state: What a checkpoint must hold besides model and optimiser.
    """

    def __init__(self, memory, step):
        self.memory = memory
        self.state = {"perturbations": memory.variable}
        self._step = step

    def __call__(self, images, labels, indices):
        return self._step(images, labels, indices)


def build_free_step(model, optimizer, config, strategy, *, num_train):
    """Free adversarial training of `model` on a training set of `num_train` examples.

    Uses `config.eps`, `config.free_step_size`, `config.free_replays`,
    `config.free_init`, `config.free_memory_dtype`, `config.stand_in` and
    `config.seed`. Call under `strategy.scope()`.

    Returns:
        A `FreeStep`.
    """
    model_fn = shared_backward_model(model, stand_in=config.stand_in)
    memory = PerturbationMemory(
        num_train,
        model.input_shape[1:],
        eps=config.eps,
        init=config.free_init,
        dtype=config.free_memory_dtype,
        seed=config.seed,
    )
    variables = model.trainable_variables
    loss_scaled = isinstance(optimizer, keras.optimizers.LossScaleOptimizer)

    def update(x_adv, images, labels, global_n):
        """One optimiser update on `x_adv`; the next `x_adv`, loss sum and hits."""
        per_example, logits, grads, input_grad = loss_and_gradients(
            lambda x: model_fn(x, training=True),
            variables,
            x_adv,
            labels,
            scale=lambda total: optimizer.scale_loss(total / global_n),
        )
        optimizer.apply_gradients(zip(grads, variables))
        x_next = signed_step(
            x_adv,
            input_grad,
            images,
            eps=config.eps,
            step_size=config.free_step_size,
            skip_non_finite=loss_scaled,
        )
        predicted = tf.argmax(logits, axis=-1, output_type=labels.dtype)
        correct = tf.reduce_sum(tf.cast(tf.equal(predicted, labels), tf.int32))
        return x_next, tf.reduce_sum(per_example), correct

    def replica_step(images, labels, indices):
        context = tf.distribute.get_replica_context()
        local_n = tf.shape(labels)[0]
        global_n = tf.cast(context.all_reduce("SUM", local_n), tf.float32)
        images = tf.cast(images, tf.float32)
        x_adv = memory.start(images, indices, eps=config.eps)
        loss_sum, correct = tf.constant(0.0), tf.constant(0)
        for _ in range(config.free_replays):  # unrolled in the graph: m is a handful
            x_adv, batch_loss, batch_correct = update(x_adv, images, labels, global_n)
            loss_sum, correct = loss_sum + batch_loss, correct + batch_correct
        memory.store(indices, x_adv, images)
        return loss_sum, correct, local_n * config.free_replays

    @tf.function(jit_compile=False, reduce_retracing=True)
    def step(images, labels, indices):
        outputs = strategy.run(replica_step, args=(images, labels, indices))
        return tuple(strategy.reduce("SUM", value, axis=None) for value in outputs)

    return FreeStep(memory, step)
