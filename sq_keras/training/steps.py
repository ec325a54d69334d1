"""The train steps: one `tf.function` per kind of step, sharing the update.

A step builder takes `(model, optimizer, config, strategy)` and returns
`step(images, labels) -> (loss_sum, num_correct, num_examples)`, summed over
replicas. Every builder differs only in the per-example loss it hands to
`_train_step`; the gradient update (`apply_update`: the loss scaling under
mixed precision and the scaling by the global batch) and the reduction over
replicas are shared.

Each kind's per-example loss is an `Objective` built by `OBJECTIVES[kind]`
from `(model, optimizer, config)`: the examples it trains on (`craft`: the
clean batch, or adversarial examples) and their loss. `sq_keras.RobustModel`
runs the same objectives inside `keras.Model.fit`.

```python
step = STEP_BUILDERS["fgsm_rs"](model, optimizer, config, strategy)
loss_sum, correct, n = step(images, labels)

objective = OBJECTIVES["fgsm_rs"](model, optimizer, config)
x_train = objective.craft(images, labels, seed)      # inside the eps-ball
per_example, logits = objective.loss(x_train, labels)
```
"""

import dataclasses
import typing

import tensorflow as tf

from sq_keras import attacks
from sq_keras import data
from sq_keras import layers
from sq_keras.training.fast_backward import fast_backward_model
from sq_keras.training.fast_backward import speeds_up
from sq_keras.training.free import build_free_step
from sq_keras.training.seeding import step_seed


@dataclasses.dataclass(frozen=True)
class Objective:
    """What one kind of step minimises.

    Attributes:
        craft: `(images, labels, seed) -> images`: the examples the step
            trains on, gradient-stopped (the batch itself, or adversarial
            examples crafted on the current model). `seed` is an int64
            scalar tensor for stateless randomness.
        loss: `(images, labels) -> (per_example_losses, logits)` on the
            crafted examples, differentiable in the model's weights.
    """

    craft: typing.Callable
    loss: typing.Callable

    def compute_loss(self, images, labels, seed):
        """`loss(craft(images, labels, seed), labels)`."""
        return self.loss(self.craft(images, labels, seed), labels)


def apply_update(model, optimizer, compute_loss, images, labels):
    """One replica's gradient step on the global batch mean of `compute_loss`.

    Each replica scales its summed loss by the global batch size, so that
    gradients summed over replicas are those of the global batch mean; under
    `mixed_float16` the optimizer's `scale_loss` scales it further (and
    `apply_gradients` unscales). Called in a replica context.

    Args:
        model: The trained `keras.Model`.
        optimizer: Its `keras.optimizers.Optimizer`.
        compute_loss: `(images, labels, seed) -> (per_example_losses, logits)`.
        images: This replica's images.
        labels: This replica's int labels.

    Returns:
        `(per_example_losses, logits)` of this replica's examples.
    """
    context = tf.distribute.get_replica_context()
    seed = step_seed(optimizer)
    local_n = tf.shape(labels)[0]
    global_n = context.all_reduce("SUM", local_n)
    with tf.GradientTape() as tape:
        per_example, logits = compute_loss(images, labels, seed)
        loss = tf.reduce_sum(per_example) / tf.cast(global_n, tf.float32)
        scaled = optimizer.scale_loss(loss)
    grads = tape.gradient(scaled, model.trainable_variables)
    optimizer.apply_gradients(zip(grads, model.trainable_variables))
    return per_example, logits


def _train_step(model, optimizer, compute_loss, strategy):
    """A `tf.function` step minimising the batch mean of `compute_loss`.

    `compute_loss(images, labels, seed)` returns `(per_example_losses,
    logits)`; `seed` is an integer tensor for stateless randomness, distinct
    per step and per replica. The step runs under `strategy.run`: each replica
    scales its loss by the global batch size, so gradients summed over
    replicas are those of the global batch mean.

    Returns:
        `step(images, labels) -> (loss_sum, num_correct, num_examples)`, each
        summed over replicas; `images`/`labels` may be distributed values.
    """

    def replica_step(images, labels):
        per_example, logits = apply_update(model, optimizer, compute_loss, images, labels)
        predicted = tf.argmax(logits, axis=-1, output_type=labels.dtype)
        correct = tf.reduce_sum(tf.cast(tf.equal(predicted, labels), tf.int32))
        return tf.reduce_sum(per_example), correct, tf.shape(labels)[0]

    @tf.function(jit_compile=False, reduce_retracing=True)
    def step(images, labels):
        outputs = strategy.run(replica_step, args=(images, labels))
        return tuple(strategy.reduce("SUM", value, axis=None) for value in outputs)

    return step


def _cross_entropy(labels, logits):
    return attacks.cross_entropy_loss(tf.cast(logits, tf.float32), labels)


def _clean(images, labels, seed):
    """The `craft` of objectives that train on the batch as it comes."""
    del labels, seed
    return images


def _cross_entropy_loss(model):
    """`loss(images, labels)`: the model's cross-entropy in training mode.

    The thresholds of a `SoftQuantization` front are differentiated through
    the first convolution's input gradient; where TensorFlow's is slow, the
    loss runs through `fast_backward_model` (same values and gradients).
    """
    forward = model
    if layers.quantization_layers(model) and speeds_up(model):
        forward = fast_backward_model(model)

    def loss(images, labels):
        logits = forward(images, training=True)
        return _cross_entropy(labels, logits), logits

    return loss


def standard_objective(model, optimizer, config):
    """Cross-entropy on the batch as it comes from the pipeline."""
    del optimizer, config
    return Objective(craft=_clean, loss=_cross_entropy_loss(model))


def build_standard_step(model, optimizer, config, strategy):
    """Cross-entropy on the batch as it comes from the pipeline."""
    objective = standard_objective(model, optimizer, config)
    return _train_step(model, optimizer, objective.compute_loss, strategy)


def _attack_model_fn(model, config):
    """What the training attack differentiates: the model, or its BPDA copy."""
    if layers.quantization_layers(model):
        return attacks.bpda(model, stand_in=config.stand_in)
    return lambda images: model(images, training=False)


def _attack_radius(config, optimizer, step_size):
    """`(eps, step_size)` of the training attack at the optimizer's current step."""
    if not config.eps_warmup_steps:
        return config.eps, step_size
    # Linear ramp of the radius (and, in proportion, of the step) over the
    # first optimizer steps: at full eps from the first step, adversarial
    # training of a fresh MNIST model can stall at chance (Wong and Kolter
    # 2018, appendix B.2).
    done = tf.cast(optimizer.iterations + 1, tf.float32)
    ramp = tf.minimum(1.0, done / float(config.eps_warmup_steps))
    return config.eps * ramp, step_size * ramp


def adversarial_objective(model, optimizer, config, *, num_steps, step_size):
    """Cross-entropy on l-inf PGD examples (random start) crafted every step.

    With `config.adv_fraction < 1` only the first part of each batch is
    attacked; the rest gets `config.noise` of size `config.noise_scale`.
    """
    model_fn = _attack_model_fn(model, config)

    def craft(images, labels, seed):
        batch = tf.cast(tf.shape(images)[0], tf.float32)
        n_adv = tf.cast(tf.math.ceil(config.adv_fraction * batch), tf.int32)
        eps, size = _attack_radius(config, optimizer, step_size)
        x_adv = attacks.pgd(
            model_fn,
            images[:n_adv],
            labels[:n_adv],
            eps=eps,
            step_size=size,
            num_steps=num_steps,
            seed=seed + config.seed * 1_000_003,
            # The last iterate, as in Madry et al. and Wong et al.; skips the
            # evaluator's bookkeeping forward pass.
            keep_most_damaging=False,
        )
        rest = data.noise_batch(
            images[n_adv:],
            kind=config.noise,
            scale=config.noise_scale,
            seed=tf.stack([tf.constant(config.seed, tf.int64), seed]),
        )
        return tf.concat([x_adv, rest], axis=0)

    return Objective(craft=craft, loss=_cross_entropy_loss(model))


def pgd_objective(model, optimizer, config):
    """PGD adversarial training (Madry et al. 2018)."""
    return adversarial_objective(
        model, optimizer, config, num_steps=config.pgd_steps, step_size=config.pgd_step_size
    )


def fgsm_rs_objective(model, optimizer, config):
    """One signed-gradient step of `config.fgsm_step_size` from a random start.

    Wong, Rice and Kolter 2020, "Fast is better than free". Through the
    quantizer's BPDA stand-in when the model has one.
    """
    return adversarial_objective(
        model, optimizer, config, num_steps=1, step_size=config.fgsm_step_size
    )


def build_pgd_step(model, optimizer, config, strategy):
    """PGD adversarial training (Madry et al. 2018)."""
    objective = pgd_objective(model, optimizer, config)
    return _train_step(model, optimizer, objective.compute_loss, strategy)


def build_fgsm_rs_step(model, optimizer, config, strategy):
    """One signed-gradient step of `config.fgsm_step_size` from a random start.

    Wong, Rice and Kolter 2020, "Fast is better than free". Through the
    quantizer's BPDA stand-in when the model has one.
    """
    objective = fgsm_rs_objective(model, optimizer, config)
    return _train_step(model, optimizer, objective.compute_loss, strategy)


def gradnorm_objective(model, optimizer, config):
    """The first-order objective computed directly by double backpropagation.

    `CE + weight * eps * ||grad_x CE(x, y)||_1` per example, the linearisation
    of `max_{||d||_inf <= eps} L(x + d)` that the soft-quantization method
    minimises implicitly (Zheng, Chen and Ren, arXiv 1810.05665).
    """
    del optimizer

    def loss(images, labels):
        per_example, logits, _ = gradnorm_loss(
            model, images, labels, eps=config.eps, weight=config.gradnorm_weight
        )
        return per_example, logits

    return Objective(craft=_clean, loss=loss)


def build_gradnorm_step(model, optimizer, config, strategy):
    """The gradient-norm penalty of `gradnorm_objective`, by double backprop."""
    objective = gradnorm_objective(model, optimizer, config)
    return _train_step(model, optimizer, objective.compute_loss, strategy)


def gradnorm_loss(model, images, labels, *, eps, weight, training=True):
    """Per-example `CE + weight * eps * ||grad_x CE||_1`, by double backprop.

    Returns:
        `(per_example_loss, logits, l1)`, with `l1` the per-example l1 norm
        of the input gradient of the cross-entropy (differentiable).
    """
    per_example, logits, grad = attacks.loss_gradient(
        lambda x: model(x, training=training), images, labels
    )
    l1 = tf.reduce_sum(tf.abs(grad), axis=tf.range(1, tf.rank(grad)))
    l1 = tf.cast(l1, per_example.dtype)
    return per_example + weight * eps * l1, logits, l1


# The per-example objective of each step kind that has one, by the same keys
# as `STEP_BUILDERS`: what `sq_keras.RobustModel` trains with.
OBJECTIVES = {
    "standard": standard_objective,
    "pgd": pgd_objective,
    "fgsm_rs": fgsm_rs_objective,
    "gradnorm": gradnorm_objective,
}

STEP_BUILDERS = {
    "standard": build_standard_step,
    "pgd": build_pgd_step,
    "fgsm_rs": build_fgsm_rs_step,
    "gradnorm": build_gradnorm_step,
    "free": build_free_step,
}
