r"""Evaluates a classifier's l-inf robustness with a suite of strong attacks.

Usage:
  python -m apps.evaluate --model=runs/mnist_sq_free --num_examples=500
  python -m apps.evaluate --model=runs/mnist_sq_free/model.keras \
      --attacks=strong --eps=0.3 --pgd_steps=100 --restarts=5 \
      --square_queries=5000 --source_model=runs/mnist_natural \
      --output=results/sq_free.json --logdir=results/tb

--model is a .keras file or a training --model_dir (all attacks, BPDA
included), or a SavedModel directory or training --export_dir of numbered
versions (every attack but BPDA). The sweep
appends eps=0.5, where no classifier can beat chance, unless
--noadd_large_eps. Writes the JSON report at --output with
<stem>_sweep.png and <stem>_examples.png beside it, prints a table and
warns about every failed gradient-masking check.

Every finished attack batch is written to <stem>_batches/ beside the report:
rerunning the same command after a crash skips the finished batches and
gives the same report. A run with other settings there is refused (the
differences are listed) unless --overwrite.

  python -m apps.evaluate --model=runs/mnist_sq_free --attacks=autoattack

runs AutoAttack's attacks as a cascade (through BPDA on a quantized model);
--worst_case_only runs any attack list that way.
"""

import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402
from absl import app  # noqa: E402
from absl import flags  # noqa: E402
from absl import logging  # noqa: E402

from sq_keras import data  # noqa: E402
from sq_keras import distribute  # noqa: E402
from sq_keras import evaluation  # noqa: E402
from sq_keras import precision  # noqa: E402
from sq_keras import provenance  # noqa: E402

_DEFAULTS = evaluation.AttackSettings()

_MODEL = flags.DEFINE_string(
    "model", None, "A .keras file, a training model_dir, or a SavedModel (or --export_dir)."
)
_DATASET = flags.DEFINE_enum(
    "dataset",
    None,
    sorted(data.DATASETS),
    "Dataset; default: the model's config.json, else mnist.",
)
_SPLIT = flags.DEFINE_string("split", "test", "Split to evaluate, e.g. test or test[:1000].")
_NUM_EXAMPLES = flags.DEFINE_integer(
    "num_examples", 1000, "First N examples of the split; 0 = all."
)
_EPS = flags.DEFINE_string(
    "eps",
    None,
    "l-inf radius in [0, 1], or a comma list for a sweep (the first is "
    "the primary eps); default: the dataset's (0.3 for mnist).",
)
_ADD_LARGE_EPS = flags.DEFINE_boolean(
    "add_large_eps", True, f"Append eps={evaluation.LARGE_EPS} to the sweep for the chance check."
)
_ATTACKS = flags.DEFINE_string(
    "attacks",
    "strong",
    evaluation.REGISTRY.help(),
)
_PGD_STEPS = flags.DEFINE_integer(
    "pgd_steps", _DEFAULTS.pgd_steps, "Steps of PGD/APGD/BPDA/transfer."
)
_RESTARTS = flags.DEFINE_integer(
    "restarts", _DEFAULTS.restarts, "Random restarts of PGD-type attacks."
)
_SQUARE_QUERIES = flags.DEFINE_integer(
    "square_queries",
    _DEFAULTS.square_queries,
    "Square Attack queries per example; presets with their own budget (autoattack: 5000) "
    "use it unless this flag is given.",
)
_WORST_CASE_ONLY = flags.DEFINE_boolean(
    "worst_case_only",
    False,
    "Cascade: each attack runs only on the examples every earlier one failed on; per-attack "
    "entries are then the accuracy robust after that attack, the per-attack masking checks "
    "are not run. Always on for presets that ask for it (autoattack).",
)
_OVERWRITE = flags.DEFINE_boolean(
    "overwrite",
    False,
    "Discard the finished batches of a run with other settings in <output stem>_batches/ "
    "instead of refusing to start.",
)
_SOURCE_MODEL = flags.DEFINE_string(
    "source_model", None, "Surrogate model for the transfer attack (same formats as --model)."
)
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 250, "Examples per attack batch.")
_SEED = flags.DEFINE_integer("seed", _DEFAULTS.seed, "Seed of the random starts.")
_STRATEGY = flags.DEFINE_enum(
    "strategy",
    "default",
    list(distribute.STRATEGIES),
    "default: one device; mirrored: attack batches split over all local GPUs; "
    "multi_worker (TF_CONFIG) and tpu as in apps.train.",
)
_MIXED_PRECISION = flags.DEFINE_enum(
    "mixed_precision",
    "float32",
    list(precision.POLICIES),
    "Dtype policy of a .keras model's hidden layers; quantizers and logits stay float32.",
)
_OUTPUT = flags.DEFINE_string(
    "output", None, "JSON report path; default: evaluation.json beside the model."
)
_DATA_DIR = flags.DEFINE_string(
    "data_dir", None, "Directory with <dataset>/ files; default: $SQ_KERAS_DATA_DIR, else tfds."
)
_LOGDIR = flags.DEFINE_string("logdir", None, "Write TensorBoard summaries here.")
_PROGRESS = flags.DEFINE_boolean(
    "progress",
    True,
    "Show progress per attack batch: a live bar on a terminal, one plain line per batch "
    "in a log file.",
)
_INTER_OP_THREADS = flags.DEFINE_integer(
    "inter_op_threads",
    1,
    "TensorFlow inter-op threads (0: TensorFlow's default, one per core). An attack is a chain "
    "of dependent ops; on 2 CPU cores one inter-op thread was as fast or up to 1.3x faster "
    "(docs/evaluation.md, Attack speed).",
)


def _parse_eps(text, default):
    if text is None or not text.strip():
        return [default]
    try:
        values = [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise SystemExit(
            f"Error: --eps must be numbers in [0, 1] separated by commas. Received: {text!r}"
        ) from None
    for eps in values:
        if not 0.0 <= eps <= 1.0:
            raise SystemExit(
                f"Error: --eps values must be in [0, 1] (pixel units). Received: {eps}"
            )
    if not values:
        raise SystemExit("Error: --eps is empty.")
    return values


def _check_positive(flag):
    if flag.value is None or flag.value <= 0:
        raise SystemExit(f"Error: --{flag.name} must be a positive integer. Received: {flag.value}")


def _default_output(model_path):
    directory = model_path if os.path.isdir(model_path) else os.path.dirname(model_path)
    return os.path.join(directory or ".", "evaluation.json")


def _configure_tensorflow():
    """Quiet logs, inter-op threads, no TF32; returns the dtype policy set."""
    logging.set_verbosity(logging.WARNING)
    tf.get_logger().setLevel("ERROR")
    if _INTER_OP_THREADS.value < 0:
        raise SystemExit(f"Error: --inter_op_threads must be >= 0, got {_INTER_OP_THREADS.value}.")
    if _INTER_OP_THREADS.value:
        tf.config.threading.set_inter_op_parallelism_threads(_INTER_OP_THREADS.value)
    # NVIDIA GPUs since Ampere run float32 matmuls and convolutions in
    # TensorFloat-32 (10-bit mantissa) unless told not to: the attacks and the
    # robustness check of float32 layers (quantizers, logits) run in float32.
    tf.config.experimental.enable_tensor_float_32_execution(False)
    return precision.set_policy(_MIXED_PRECISION.value)


def _validated_flags():
    """Fails fast on bad flags; returns the eps values (or [None])."""
    if not _MODEL.value:
        raise SystemExit(
            "Error: --model is required (a .keras file, model_dir or SavedModel directory)."
        )
    if not os.path.exists(_MODEL.value):
        raise SystemExit(f"Error: --model path {_MODEL.value!r} does not exist.")
    if _SOURCE_MODEL.value and not os.path.exists(_SOURCE_MODEL.value):
        raise SystemExit(f"Error: --source_model path {_SOURCE_MODEL.value!r} does not exist.")
    for flag in (_PGD_STEPS, _RESTARTS, _SQUARE_QUERIES, _BATCH_SIZE):
        _check_positive(flag)
    if _NUM_EXAMPLES.value < 0:
        raise SystemExit(f"Error: --num_examples must be >= 0. Received: {_NUM_EXAMPLES.value}")
    try:
        evaluation.resolve_attacks(_ATTACKS.value.split(","))
    except ValueError as e:
        raise SystemExit(f"Error: {e}") from None
    return _parse_eps(_EPS.value, None)


def _load_models(strategy, policy):
    """`(target, source or None)` loaded under the strategy's scope."""
    with strategy.scope():
        target = evaluation.load_target(_MODEL.value, policy=policy)
        source = evaluation.load_target(_SOURCE_MODEL.value) if _SOURCE_MODEL.value else None
    return target, source


def _check_shapes(dataset, info, target, source):
    for name, loaded in (("--model", target), ("--source_model", source)):
        shape = getattr(loaded, "input_shape", None)
        if shape is not None and tuple(shape) != tuple(info.image_shape):
            raise ValueError(
                f"{name} takes images of shape {tuple(shape)} but {dataset} images are "
                f"{tuple(info.image_shape)}: pass the --dataset the model was trained on."
            )


def _plan(target):
    """The attacks, settings and mode: presets' defaults yield to flags given."""
    settings = evaluation.AttackSettings(
        pgd_steps=_PGD_STEPS.value,
        restarts=_RESTARTS.value,
        square_queries=_SQUARE_QUERIES.value,
        seed=_SEED.value,
    )
    explicit = [f.name for f in (_PGD_STEPS, _RESTARTS, _SQUARE_QUERIES, _SEED) if f.present]
    return evaluation.REGISTRY.plan(
        _ATTACKS.value.split(","),
        settings,
        target=target,
        explicit=explicit,
        worst_case_only=_WORST_CASE_ONLY.value,
    )


def _model_run(dataset, policy, target):
    """What the app adds to a run: model digests, dataset, split, precision."""
    return evaluation.model_run(
        target,
        dataset=dataset,
        split=_SPLIT.value,
        policy=policy,
        strategy=_STRATEGY.value,
        source_path=_SOURCE_MODEL.value,
    )


def _store(output, run):
    """The `BatchStore` beside `output`, describing what the app adds to the run."""
    return evaluation.BatchStore(
        evaluation.batches_dir(output),
        run=run,
        overwrite=_OVERWRITE.value,
        hint="rerun with --overwrite to discard them, or give another --output",
    )


def _run_record():
    """This run's command, start date, git commit and machine, taken when it
    starts: a checkout that moves on during a long run does not change it."""
    return {
        "command": " ".join(["python -m apps.evaluate", *sys.argv[1:]]),
        "date": time.strftime("%Y-%m-%d %H:%M %Z"),
        **provenance.environment(),
    }


def _metadata(dataset, policy, target, run, evaluated):
    """The app's top-level keys of the JSON report.

    The model files' sha256 identify the model wherever the report is read,
    e.g. when `apps.merge_reports` merges shards evaluated on other machines;
    `evaluated` records this run (`_run_record`) and when it finished.
    """
    return {
        "dataset": dataset,
        "split": _SPLIT.value,
        "seed": _SEED.value,
        "mixed_precision": policy,
        "tensor_float_32": tf.config.experimental.tensor_float_32_execution_enabled(),
        "model_sha256": run["model_sha256"],
        "source_model": _SOURCE_MODEL.value,
        "source_model_sha256": run["source_model_sha256"],
        "training_config": target.config,
        "versions": {"tensorflow": tf.__version__, "keras": keras.__version__},
        "evaluated": {**evaluated, "finished": time.strftime("%Y-%m-%d %H:%M %Z")},
    }


def _load_examples(dataset):
    """The first --num_examples of --split; says so when that cuts a sliced split short."""
    images, labels = evaluation.load_examples(dataset, _SPLIT.value, data_dir=_DATA_DIR.value)
    wanted = _NUM_EXAMPLES.value
    if wanted and wanted < len(labels):
        if data.split_slice(_SPLIT.value)[1:] != (None, None):
            print(
                f"Note: --num_examples={wanted} attacks the first {wanted} of the "
                f"{len(labels)} images of --split={_SPLIT.value}; --num_examples=0 attacks all.",
                flush=True,
            )
        images, labels = images[:wanted], labels[:wanted]
    return images, labels


def _evaluate(eps_values, policy):
    """Loads models and examples, runs the suite and writes the report.

    Returns:
        `(report, the JSON as written)`.
    """
    evaluated = _run_record()
    strategy = distribute.make_strategy(_STRATEGY.value)
    target, source = _load_models(strategy, policy)
    dataset = _DATASET.value or target.config.get("dataset") or "mnist"
    info = data.get_info(dataset)
    _check_shapes(dataset, info, target, source)
    if eps_values == [None]:
        eps_values = [float(target.config.get("eps", info.eps))]
    images, labels = _load_examples(dataset)
    output = _OUTPUT.value or _default_output(_MODEL.value)
    plan = _plan(target)
    run = _model_run(dataset, policy, target)
    report = evaluation.evaluate(
        target,
        images,
        labels,
        attacks=plan.attacks,
        eps_values=eps_values,
        settings=plan.settings,
        source=source,
        num_classes=info.num_classes,
        batch_size=_BATCH_SIZE.value,
        progress=_PROGRESS.value,
        add_large_eps=_ADD_LARGE_EPS.value,
        strategy=strategy,
        worst_case_only=plan.worst_case_only,
        store=_store(output, run),
    )
    report.metadata.update(_metadata(dataset, policy, target, run, evaluated))
    written = evaluation.write_report(
        report, output, class_names=list(info.class_names), logdir=_LOGDIR.value
    )
    return report, written


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
    policy = _configure_tensorflow()
    eps_values = _validated_flags()
    try:
        report, written = _evaluate(eps_values, policy)
    except (ValueError, FileNotFoundError, data.DataError) as e:
        raise SystemExit(f"Error: {e}") from None
    print(evaluation.format_table(report))
    for name, message in evaluation.failed_checks(report):
        logging.warning("Masking check %s failed: %s", name, message)
    print(f"Report: {written['files']['json']}")


if __name__ == "__main__":
    app.run(main)
