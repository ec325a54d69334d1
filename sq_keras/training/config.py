"""The configuration of a training run and its checks.

Every field has a default; None means "the dataset's default", filled in by
`fill_defaults`. `validate` runs one small check per field, each failing with
a message that names the field, the requirement and the value received.
The resolved configuration is what `config.json` records.

```python
config = TrainConfig(dataset="mnist", epochs=3).resolved()
config.method, config.eps          # ("sq_free", 0.3)
TrainConfig(eps=2.0).resolved()    # ValueError: eps must be in [0, 1]. Received: 2.0
```
"""

import dataclasses
import os

from sq_keras import attacks
from sq_keras import data
from sq_keras import distribute
from sq_keras import models
from sq_keras.training.free import FREE_LOSSES
from sq_keras.training.methods import METHODS
from sq_keras.training.methods import takes_indices
from sq_keras.training.perturbation_memory import FREE_INITS
from sq_keras.training.perturbation_memory import FREE_MEMORIES
from sq_keras.training.perturbation_memory import MEMORY_DTYPES
from sq_keras.training.schedules import ALPHA_SCHEDULES
from sq_keras.training.schedules import LR_SCHEDULES

# What the exported SavedModel computes in: "training", the run's
# `mixed_precision` policy, or "float32", the graph `apps.evaluate` attacks.
EXPORT_POLICIES = ("training", "float32")


@dataclasses.dataclass
class TrainConfig:
    """Everything a run depends on. None means "the dataset's default".

    Attributes:
        dataset: Key of `sq_keras.data.DATASETS`.
        method: Key of `METHODS`; None for the dataset's (`sq_free` for
            MNIST, `sq_noisy` elsewhere).
        model: Key of `sq_keras.models.MODELS`; None for the dataset's.
        epochs: Number of passes over the training set.
        batch_size: Examples per step.
        learning_rate: Adam learning rate (the peak of a non-constant
            `lr_schedule`).
        lr_schedule: One of `LR_SCHEDULES`, over the run's optimiser steps:
            "constant", "piecewise" (x0.1 for the last `lr_drop_fraction`),
            "cosine" or "onecycle" (see `schedules.LearningRate`); None for
            the dataset's ("piecewise" for MNIST, "constant" elsewhere).
        lr_drop_fraction: "piecewise": share of the steps at the lowered rate.
        eps: Threat radius in [0, 1] pixel units; None for the dataset's.
        augment: Training augmentation, one of `sq_keras.data.AUGMENTATIONS`;
            None for the dataset's (crops and flips for CIFAR-10).
        noise: Noise kind, one of `sq_keras.data.NOISE_KINDS`.
        noise_scale: Noise size; None means `eps`.
        num_thresholds: Thresholds K of the quantizer; None for the dataset's
            (1 for MNIST-like sets, 7 for 32x32 colour, 15 for ImageNet).
        per_channel: One threshold set per input channel.
        threshold_margin: The quantizer's thresholds start evenly inside, and
            stay in, [m, 1 - m]; m > eps keeps inputs at exactly 0 or 1 from
            crossing one (see `SoftQuantization`).
        alpha_start: Quantizer steepness in the first epoch.
        alpha_end: Quantizer steepness in the last epoch (kept at export).
        alpha_schedule: "geometric", "linear" or "constant".
        pgd_steps: Attack steps of `pgd_at`.
        pgd_step_size: Attack step size of `pgd_at`.
        fgsm_step_size: Step of `fgsm_rs` / `sq_fgsm`; None means 1.25 * eps.
        adv_fraction: Share of each batch that `pgd_at`, `fgsm_rs` and
            `sq_fgsm` attack; the rest gets `noise`.
        stand_in: BPDA stand-in of the quantizer for training attacks,
            "identity" (straight-through) or "smooth".
        gradnorm_weight: Weight of the gradient penalty of `gradnorm`.
        free_step_size: Signed-gradient step of `free` / `sq_free` per visit
            (and replay); None for the dataset's multiple of `eps` (1.25 eps
            for MNIST, eps elsewhere).
        free_step_end: `free` / `sq_free`: the per-visit step of the run's
            last update; the step moves linearly over the optimiser's
            updates from `free_step_size` to it. None keeps
            `free_step_size` throughout.
        free_replays: `free` / `sq_free`: updates on each minibatch in a row,
            the perturbation carried from one to the next.
        free_init: Initial perturbation of `free` / `sq_free` (of the memory,
            or of each minibatch without one), "uniform" in [-eps, eps] or
            "zeros".
        free_memory: "example" (one perturbation per training example, kept
            across epochs; needs a dataset held in memory) or "none" (each
            minibatch's perturbation carried across its `free_replays`
            updates only; any dataset).
        free_memory_dtype: "float32", "bfloat16" (half the memory) or "int8"
            (a quarter: whole steps of eps / 127) for the perturbation memory.
        free_loss: The loss of `free` / `sq_free`, one of `FREE_LOSSES`:
            "ce" (cross-entropy on the perturbed batch) or "trades" (Zhang et
            al. 2019's TRADES objective: cross-entropy on the clean batch plus
            `trades_beta` times the KL divergence from the clean to the
            perturbed outputs; the perturbation then climbs the KL. Clean and
            perturbed batches run as one batch of twice the size: about twice
            the step cost).
        trades_beta: Weight of the KL term of `free_loss="trades"`.
        hard_inference: Export with the exact staircase at inference.
        train_examples: Use only the first N training examples (None: all).
        seed: Seeds weights, shuffling and noise.
        deterministic: Enable TensorFlow's deterministic ops.
        model_dir: Where checkpoints, logs, config and results go.
        export_dir: Base directory of the SavedModel versions (TensorFlow
            Serving layout, `<export_dir>/<version>/`); None for no export.
        export_policy: Dtype policy of the export, one of `EXPORT_POLICIES`:
            "training" (the `mixed_precision` policy) or "float32" (the graph
            `sq_keras.evaluation` attacks, so that served predictions equal
            the evaluated ones, at float32's serving cost).
        data_dir: Local dataset directory (a relative one is made absolute
            by `fill_defaults`); None for $SQ_KERAS_DATA_DIR/tfds.
        mixed_precision: The resolved Keras dtype policy name in force.
        strategy: `tf.distribute` strategy, one of
            `sq_keras.distribute.STRATEGIES`.
        grad_examples: Test examples used for the `grad_l1` curve.
        eval_examples: Test examples scored after each epoch (None: all).
        init_weights: Weights file for the model's pretrained part (see
            `sq_keras.models.build`), e.g. ImageNet weights of ResNet50.
        overwrite: Start afresh if `model_dir` holds a different run.
        eps_warmup_steps: `pgd_at`, `fgsm_rs`, `sq_fgsm`: ramp the training
            attack's eps (and step size) linearly from 0 over this many
            optimizer steps (0: full eps from the start, as Madry et al.);
            refused for the other methods, which have no such attack.
        keep_epoch_weights: Also save the weights after every epoch as
            `<model_dir>/epochs/epoch_<NNN>.weights.h5` (e.g. to measure how
            robustness grows during training).
        ema_decay: Keep an exponential moving average of the trainable
            weights with this decay per optimizer update (0: none). The
            average, not the last weights, is what the run evaluates after
            every epoch, saves as `model.keras`, keeps per epoch and exports;
            checkpoints hold both, so a resumed run continues both.
    """

    dataset: str = "mnist"
    method: str = None
    model: str = None
    epochs: int = 10
    batch_size: int = 128
    learning_rate: float = 1e-3
    lr_schedule: str = None
    lr_drop_fraction: float = 0.5
    eps: float = None
    augment: str = None
    noise: str = "uniform"
    noise_scale: float = None
    num_thresholds: int = None
    per_channel: bool = False
    threshold_margin: float = 0.0
    alpha_start: float = 10.0
    alpha_end: float = 100.0
    alpha_schedule: str = "geometric"
    pgd_steps: int = 40
    pgd_step_size: float = 0.01
    fgsm_step_size: float = None
    adv_fraction: float = 1.0
    stand_in: str = "identity"
    gradnorm_weight: float = 1.0
    free_step_size: float = None
    free_step_end: float = None
    free_replays: int = 1
    free_init: str = "uniform"
    free_memory: str = "example"
    free_memory_dtype: str = "float32"
    free_loss: str = "ce"
    trades_beta: float = 6.0
    hard_inference: bool = False
    train_examples: int = None
    seed: int = 0
    deterministic: bool = False
    model_dir: str = "runs/default"
    export_dir: str = None
    export_policy: str = "training"
    data_dir: str = None
    mixed_precision: str = "float32"
    strategy: str = "default"
    grad_examples: int = 256
    eval_examples: int = None
    init_weights: str = None
    overwrite: bool = False
    keep_epoch_weights: bool = False
    eps_warmup_steps: int = 0
    ema_decay: float = 0.0

    def fill_defaults(self):
        """A copy with the dataset's defaults in place of None, `data_dir` absolute."""
        info = data.get_info(self.dataset)
        eps = info.eps if self.eps is None else float(self.eps)
        method = self.method or info.method
        return dataclasses.replace(
            self,
            method=method,
            lr_schedule=self.lr_schedule or info.lr_schedule,
            model=self.model or info.model,
            eps=eps,
            augment=info.augment if self.augment is None else self.augment,
            num_thresholds=(
                info.num_thresholds if self.num_thresholds is None else self.num_thresholds
            ),
            noise_scale=eps if self.noise_scale is None else float(self.noise_scale),
            fgsm_step_size=1.25 * eps if self.fgsm_step_size is None else self.fgsm_step_size,
            free_step_size=self._free_step_size(method, eps, info.free_step_scale),
            # Recorded and read as an absolute path: the same files from any
            # directory a resumed run or a later evaluation starts in.
            data_dir=os.path.abspath(self.data_dir) if self.data_dir else None,
        )

    def _free_step_size(self, method, eps, scale):
        """`scale * eps` for the free methods when unset; other methods keep None."""
        if self.free_step_size is not None:
            return self.free_step_size
        spec = METHODS.get(method)
        return scale * eps if spec is not None and spec.step == "free" else None

    @property
    def exported_policy(self):
        """The Keras dtype policy name the exported SavedModel computes in."""
        if self.export_policy == "training":
            return self.mixed_precision
        return self.export_policy

    def validate(self):
        """Returns `self` if every check passes.

        Raises:
            ValueError: The first failing check, naming field and value.
        """
        for check in _CHECKS:
            problem = check(self)
            if problem:
                raise ValueError(problem)
        return self

    def resolved(self):
        """Returns a copy with dataset defaults filled in, after validation."""
        return self.fill_defaults().validate()


def _known(field, registry, plural):
    """The field names a key of `registry`."""

    def check(config):
        value = getattr(config, field)
        if value not in registry:
            return f"Unknown {field} {value!r}. Valid {plural}: {', '.join(sorted(registry))}."
        return None

    return check


def _check(field, ok, requirement):
    """`ok(value)` holds for the field's value."""

    def check(config):
        value = getattr(config, field)
        if not ok(value):
            return f"{field} {requirement}. Received: {value!r}"
        return None

    return check


def _at_least(field, low, *, optional=False):
    return _check(field, lambda v: (optional and v is None) or v >= low, f"must be >= {low}")


def _positive(field):
    return _check(field, lambda v: v > 0, "must be > 0")


def _one_of(field, choices):
    return _check(field, lambda v: v in choices, f"must be one of {', '.join(choices)}")


def _in_unit_interval(field):
    return _check(field, lambda v: 0 <= v <= 1, "must be in [0, 1]")


def _per_example_state_fits(config):
    """A method with per-example state needs a dataset held in memory."""
    if takes_indices(config) and data.get_info(config.dataset).streaming:
        return (
            f"method {config.method} keeps one perturbation per training example and "
            f"needs a dataset held in memory; {config.dataset} is streamed (or pass "
            f"free_memory='none' to keep none). Received: {config.method!r}"
        )
    return None


# Step kinds whose training attack `eps_warmup_steps` ramps up.
_WARMED_UP_STEPS = ("pgd", "fgsm_rs")


def _warmup_has_an_attack_to_ramp(config):
    """`eps_warmup_steps` is refused where it would be silently ignored."""
    if config.eps_warmup_steps and METHODS[config.method].step not in _WARMED_UP_STEPS:
        ramped = sorted(n for n, m in METHODS.items() if m.step in _WARMED_UP_STEPS)
        return (
            f"eps_warmup_steps ramps the training attack of {', '.join(ramped)}; method "
            f"{config.method} has none to ramp. Received: {config.eps_warmup_steps!r}"
        )
    return None


def _step_schedule_has_a_free_step(config):
    """`free_step_end` is refused where there is no free step to schedule."""
    if config.free_step_end is not None and METHODS[config.method].step != "free":
        free = sorted(n for n, m in METHODS.items() if m.step == "free")
        return (
            f"free_step_end schedules the per-visit step of {', '.join(free)}; method "
            f"{config.method} has none. Received: {config.free_step_end!r}"
        )
    return None


# In the order the checks run: the first failing one is reported.
_CHECKS = (
    _known("method", METHODS, "methods"),
    _known("model", models.MODELS, "models"),
    _at_least("epochs", 1),
    _at_least("batch_size", 1),
    _positive("learning_rate"),
    _one_of("lr_schedule", LR_SCHEDULES),
    _check("lr_drop_fraction", lambda v: 0 < v < 1, "must be in (0, 1)"),
    _in_unit_interval("eps"),
    _in_unit_interval("noise_scale"),
    _at_least("num_thresholds", 1),
    _check("threshold_margin", lambda v: 0 <= v < 0.5, "must be in [0, 0.5)"),
    _at_least("eval_examples", 1, optional=True),
    _positive("alpha_start"),
    _positive("alpha_end"),
    _at_least("eps_warmup_steps", 0),
    _check("ema_decay", lambda v: 0 <= v < 1, "must be in [0, 1)"),
    _at_least("grad_examples", 1),
    _at_least("pgd_steps", 1),
    _positive("pgd_step_size"),
    _positive("fgsm_step_size"),
    _check("adv_fraction", lambda v: 0 < v <= 1, "must be in (0, 1]"),
    _at_least("gradnorm_weight", 0),
    _check("free_step_size", lambda v: v is None or v > 0, "must be > 0"),
    _check("free_step_end", lambda v: v is None or v > 0, "must be > 0"),
    _at_least("free_replays", 1),
    _one_of("free_init", FREE_INITS),
    _one_of("free_memory", FREE_MEMORIES),
    _one_of("free_memory_dtype", MEMORY_DTYPES),
    _one_of("free_loss", FREE_LOSSES),
    _at_least("trades_beta", 0),
    _per_example_state_fits,
    _warmup_has_an_attack_to_ramp,
    _step_schedule_has_a_free_step,
    _one_of("stand_in", attacks.STAND_INS),
    _at_least("train_examples", 1, optional=True),
    _one_of("strategy", distribute.STRATEGIES),
    _one_of("export_policy", EXPORT_POLICIES),
    _one_of("augment", data.AUGMENTATIONS),
    _one_of("noise", data.NOISE_KINDS),
    _check(
        "alpha_schedule",
        lambda v: v in ALPHA_SCHEDULES,
        f"must be {', '.join(ALPHA_SCHEDULES[:-1])} or {ALPHA_SCHEDULES[-1]}",
    ),
)
