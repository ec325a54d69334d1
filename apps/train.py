r"""Trains a robust classifier: a soft-quantization recipe or a baseline.

Usage:
  python -m apps.train --dataset=mnist
  python -m apps.train --dataset=mnist --method=natural --epochs=3 \
      --model_dir=runs/natural --data_dir=../shared/data

Outputs go to --model_dir (checkpoints, TensorBoard logs, config.json,
results.json, model.keras) and --export_dir (a SavedModel). Rerunning the
same command resumes from the last finished epoch.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402
from absl import app  # noqa: E402
from absl import flags  # noqa: E402
from absl import logging  # noqa: E402

from sq_keras import attacks  # noqa: E402
from sq_keras import data  # noqa: E402
from sq_keras import distribute  # noqa: E402
from sq_keras import precision  # noqa: E402
from sq_keras import training  # noqa: E402

_DEFAULTS = training.TrainConfig()

_DATASET = flags.DEFINE_enum("dataset", "mnist", sorted(data.DATASETS), "Dataset to train on.")
_METHOD = flags.DEFINE_enum(
    "method",
    None,
    sorted(training.METHODS),
    "Default: the dataset's (sq_free for MNIST, chosen on held-out data; sq_noisy elsewhere). "
    + "; ".join(f"{k}: {m.description}" for k, m in sorted(training.METHODS.items()))
    + ".",
)
_MODEL = flags.DEFINE_string("model", None, "Model name; default: the dataset's.")
_EPOCHS = flags.DEFINE_integer("epochs", _DEFAULTS.epochs, "Training epochs.")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", _DEFAULTS.batch_size, "Batch size.")
_LEARNING_RATE = flags.DEFINE_float(
    "learning_rate", _DEFAULTS.learning_rate, "Adam learning rate (a schedule's peak)."
)
_LR_SCHEDULE = flags.DEFINE_enum(
    "lr_schedule",
    _DEFAULTS.lr_schedule,
    list(training.LR_SCHEDULES),
    "Learning rate per optimizer step: constant; piecewise (x0.1 for the last "
    "--lr_drop_fraction of the steps); cosine (to 0); onecycle (linear 0 -> "
    "--learning_rate at 40% -> 0, Wong et al. 2020); default: the dataset's (piecewise "
    "for MNIST, constant elsewhere).",
)
_LR_DROP_FRACTION = flags.DEFINE_float(
    "lr_drop_fraction",
    _DEFAULTS.lr_drop_fraction,
    "piecewise: share of the steps trained at 0.1 x --learning_rate.",
)
_EPS = flags.DEFINE_float(
    "eps", None, "Threat radius in [0, 1] pixel units; default: the dataset's (0.3 for MNIST)."
)
_AUGMENT = flags.DEFINE_enum(
    "augment",
    None,
    list(data.AUGMENTATIONS),
    "Training augmentation before the noise; default: the dataset's (crop_flip for cifar10, "
    "crop for svhn_cropped, none for MNIST-like sets).",
)
_NOISE = flags.DEFINE_enum("noise", _DEFAULTS.noise, list(data.NOISE_KINDS), "Noise kind.")
_NOISE_SCALE = flags.DEFINE_float("noise_scale", None, "Noise size; default: --eps.")
_NUM_THRESHOLDS = flags.DEFINE_integer(
    "num_thresholds",
    None,
    "Quantizer thresholds K; default: the dataset's (1 for MNIST and Fashion-MNIST, "
    "7 for CIFAR-10 and SVHN, 15 for ImageNet).",
)
_PER_CHANNEL = flags.DEFINE_boolean(
    "per_channel", _DEFAULTS.per_channel, "One threshold set per input channel."
)
_THRESHOLD_MARGIN = flags.DEFINE_float(
    "threshold_margin",
    _DEFAULTS.threshold_margin,
    "Quantizer thresholds start evenly inside, and stay in, [m, 1 - m].",
)
_ALPHA_START = flags.DEFINE_float("alpha_start", _DEFAULTS.alpha_start, "Steepness, first epoch.")
_ALPHA_END = flags.DEFINE_float("alpha_end", _DEFAULTS.alpha_end, "Steepness, last epoch.")
_ALPHA_SCHEDULE = flags.DEFINE_enum(
    "alpha_schedule",
    _DEFAULTS.alpha_schedule,
    list(training.ALPHA_SCHEDULES),
    "How steepness moves from --alpha_start to --alpha_end over epochs.",
)
_PGD_STEPS = flags.DEFINE_integer("pgd_steps", _DEFAULTS.pgd_steps, "Attack steps of pgd_at.")
_PGD_STEP_SIZE = flags.DEFINE_float(
    "pgd_step_size", _DEFAULTS.pgd_step_size, "Attack step size of pgd_at."
)
_EPS_WARMUP_STEPS = flags.DEFINE_integer(
    "eps_warmup_steps",
    _DEFAULTS.eps_warmup_steps,
    "pgd_at, fgsm_rs, sq_fgsm: ramp the training attack's eps (and step) linearly from 0 "
    "over this many optimizer steps; 0 attacks at full eps from the start. Refused for the "
    "other methods.",
)
_KEEP_EPOCH_WEIGHTS = flags.DEFINE_bool(
    "keep_epoch_weights",
    _DEFAULTS.keep_epoch_weights,
    "Also save the weights after every epoch to <model_dir>/epochs/.",
)
_EMA_DECAY = flags.DEFINE_float(
    "ema_decay",
    _DEFAULTS.ema_decay,
    "Decay of an exponential moving average of the weights, per update (0: none); the "
    "average is evaluated, saved and exported instead of the last weights.",
)
_FGSM_STEP_SIZE = flags.DEFINE_float(
    "fgsm_step_size", None, "Step of fgsm_rs and sq_fgsm; default: 1.25 * --eps."
)
_ADV_FRACTION = flags.DEFINE_float(
    "adv_fraction",
    _DEFAULTS.adv_fraction,
    "Share of each batch attacked by pgd_at/fgsm_rs/sq_fgsm; the rest gets --noise.",
)
_STAND_IN = flags.DEFINE_enum(
    "stand_in",
    _DEFAULTS.stand_in,
    list(attacks.STAND_INS),
    "BPDA stand-in of the quantizer used by training attacks (sq_fgsm, sq_free).",
)
_FREE_STEP_SIZE = flags.DEFINE_float(
    "free_step_size",
    None,
    "free, sq_free: signed-gradient step of each example's kept perturbation per visit "
    "(and replay); default: the dataset's multiple of --eps (1.25 for MNIST, 1 elsewhere).",
)
_FREE_STEP_END = flags.DEFINE_float(
    "free_step_end",
    None,
    "free, sq_free: per-visit step of the run's last update; the step moves linearly "
    "over the updates from --free_step_size to it (default: --free_step_size throughout).",
)
_FREE_REPLAYS = flags.DEFINE_integer(
    "free_replays",
    _DEFAULTS.free_replays,
    "free, sq_free: updates on each minibatch in a row, the perturbation carried across "
    "them (train this many times fewer epochs for the same number of updates).",
)
_FREE_INIT = flags.DEFINE_enum(
    "free_init",
    _DEFAULTS.free_init,
    list(training.FREE_INITS),
    "free, sq_free: initial perturbations, uniform in [-eps, eps] or zeros.",
)
_FREE_MEMORY = flags.DEFINE_enum(
    "free_memory",
    _DEFAULTS.free_memory,
    list(training.FREE_MEMORIES),
    "free, sq_free: 'example' keeps each example's perturbation across epochs (under "
    "--strategy=multi_worker each worker keeps its own examples' only); 'none' keeps "
    "none (each minibatch's perturbation lives through its --free_replays updates only).",
)
_FREE_MEMORY_DTYPE = flags.DEFINE_enum(
    "free_memory_dtype",
    _DEFAULTS.free_memory_dtype,
    list(training.MEMORY_DTYPES),
    "free, sq_free: dtype of the perturbation memory (MNIST: 188 MB float32, 94 MB bfloat16, "
    "47 MB int8 in steps of eps/127).",
)
_FREE_LOSS = flags.DEFINE_enum(
    "free_loss",
    _DEFAULTS.free_loss,
    list(training.FREE_LOSSES),
    "free / sq_free: ce (cross-entropy on the perturbed batch) or trades (clean "
    "cross-entropy + --trades_beta x KL(clean || perturbed); about twice the step cost).",
)
_TRADES_BETA = flags.DEFINE_float(
    "trades_beta", _DEFAULTS.trades_beta, "Weight of the KL term of --free_loss=trades."
)
_GRADNORM_WEIGHT = flags.DEFINE_float(
    "gradnorm_weight", _DEFAULTS.gradnorm_weight, "Weight of the gradnorm penalty."
)
_HARD_INFERENCE = flags.DEFINE_boolean(
    "hard_inference", _DEFAULTS.hard_inference, "Exact staircase at inference time."
)
_TRAIN_EXAMPLES = flags.DEFINE_integer(
    "train_examples", None, "Use only the first N training examples."
)
_EVAL_EXAMPLES = flags.DEFINE_integer(
    "eval_examples", None, "Test examples scored after each epoch; default: all."
)
_INIT_WEIGHTS = flags.DEFINE_string(
    "init_weights",
    None,
    "Weights file for the model's pretrained part, e.g. Keras's ResNet50 ImageNet .h5 "
    "for --dataset=imagenet2012 (fine-tuning).",
)
_SEED = flags.DEFINE_integer("seed", _DEFAULTS.seed, "Random seed.")
_DETERMINISTIC = flags.DEFINE_boolean(
    "deterministic", _DEFAULTS.deterministic, "Use TensorFlow's deterministic ops (slower)."
)
_MODEL_DIR = flags.DEFINE_string(
    "model_dir", None, "Run directory; default: runs/<dataset>_<method>."
)
_EXPORT_DIR = flags.DEFINE_string(
    "export_dir", None, "SavedModel directory; default: saved_models/<dataset>_<method>."
)
_EXPORT_POLICY = flags.DEFINE_enum(
    "export_policy",
    _DEFAULTS.export_policy,
    list(training.EXPORT_POLICIES),
    "Dtype policy of the SavedModel: training (the --mixed_precision policy) or float32 "
    "(the graph apps.evaluate attacks: served predictions equal the evaluated ones).",
)
_DATA_DIR = flags.DEFINE_string(
    "data_dir",
    None,
    "Directory with <dataset>/ holding the canonical files; default: "
    "$SQ_KERAS_DATA_DIR, else tensorflow-datasets.",
)
_MIXED_PRECISION = flags.DEFINE_enum(
    "mixed_precision",
    "auto",
    list(precision.POLICIES),
    "auto: mixed_float16 on GPU, mixed_bfloat16 on a CPU with native bf16, else float32.",
)
_STRATEGY = flags.DEFINE_enum(
    "strategy",
    "default",
    list(distribute.STRATEGIES),
    "default: one device; mirrored: all local GPUs; multi_worker: "
    "MultiWorkerMirroredStrategy with the cluster in $TF_CONFIG; tpu: TPUStrategy.",
)
_OVERWRITE = flags.DEFINE_boolean(
    "overwrite", _DEFAULTS.overwrite, "Discard a different run found in --model_dir."
)


def _train_config(policy):
    """The flags as a `TrainConfig`; `policy` is the dtype policy in force."""
    method = _METHOD.value or data.get_info(_DATASET.value).method
    name = f"{_DATASET.value}_{method}"
    return training.TrainConfig(
        dataset=_DATASET.value,
        method=method,
        model=_MODEL.value,
        epochs=_EPOCHS.value,
        batch_size=_BATCH_SIZE.value,
        learning_rate=_LEARNING_RATE.value,
        lr_schedule=_LR_SCHEDULE.value,
        lr_drop_fraction=_LR_DROP_FRACTION.value,
        eps=_EPS.value,
        augment=_AUGMENT.value,
        noise=_NOISE.value,
        noise_scale=_NOISE_SCALE.value,
        num_thresholds=_NUM_THRESHOLDS.value,
        per_channel=_PER_CHANNEL.value,
        threshold_margin=_THRESHOLD_MARGIN.value,
        alpha_start=_ALPHA_START.value,
        alpha_end=_ALPHA_END.value,
        alpha_schedule=_ALPHA_SCHEDULE.value,
        pgd_steps=_PGD_STEPS.value,
        pgd_step_size=_PGD_STEP_SIZE.value,
        fgsm_step_size=_FGSM_STEP_SIZE.value,
        eps_warmup_steps=_EPS_WARMUP_STEPS.value,
        keep_epoch_weights=_KEEP_EPOCH_WEIGHTS.value,
        ema_decay=_EMA_DECAY.value,
        adv_fraction=_ADV_FRACTION.value,
        stand_in=_STAND_IN.value,
        gradnorm_weight=_GRADNORM_WEIGHT.value,
        free_step_size=_FREE_STEP_SIZE.value,
        free_step_end=_FREE_STEP_END.value,
        free_replays=_FREE_REPLAYS.value,
        free_init=_FREE_INIT.value,
        free_memory=_FREE_MEMORY.value,
        free_memory_dtype=_FREE_MEMORY_DTYPE.value,
        free_loss=_FREE_LOSS.value,
        trades_beta=_TRADES_BETA.value,
        hard_inference=_HARD_INFERENCE.value,
        train_examples=_TRAIN_EXAMPLES.value,
        eval_examples=_EVAL_EXAMPLES.value,
        init_weights=_INIT_WEIGHTS.value,
        seed=_SEED.value,
        deterministic=_DETERMINISTIC.value,
        model_dir=_MODEL_DIR.value or os.path.join("runs", name),
        export_dir=_EXPORT_DIR.value or os.path.join("saved_models", name),
        export_policy=_EXPORT_POLICY.value,
        data_dir=_DATA_DIR.value,
        mixed_precision=policy,
        strategy=_STRATEGY.value,
        overwrite=_OVERWRITE.value,
    )


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
    logging.set_verbosity(logging.WARNING)
    tf.get_logger().setLevel("ERROR")
    config = _train_config(precision.set_policy(_MIXED_PRECISION.value))
    try:
        training.train(config)
    except (ValueError, data.DataError, training.TrainingError) as e:
        raise SystemExit(f"Error: {e}") from None


if __name__ == "__main__":
    app.run(main)
