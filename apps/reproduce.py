r"""Trains the comparison's methods side by side, attacks each, writes the table.

Usage:
  python -m apps.reproduce --dataset=mnist --epochs=10 --num_examples=10000
  python -m apps.reproduce --variants=natural,sq_noisy,pgd_at --epochs=2 \
      --num_examples=500 --output_dir=results

Writes <output_dir>/<dataset>.json, <dataset>.md and the figures; runs live in
--runs_dir, one directory per variant. A stopped reproduction resumes where
it stopped when rerun with the same flags.
"""

import dataclasses
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402
from absl import app  # noqa: E402
from absl import flags  # noqa: E402
from absl import logging  # noqa: E402

from sq_keras import data  # noqa: E402
from sq_keras import precision  # noqa: E402
from sq_keras import reproduce  # noqa: E402
from sq_keras import training  # noqa: E402

_DATASET = flags.DEFINE_enum("dataset", "mnist", sorted(reproduce.VARIANTS), "Dataset.")
_VARIANTS = flags.DEFINE_list(
    "variants", None, "Variants to run (default: all of the dataset's), in order."
)
_EPOCHS = flags.DEFINE_integer("epochs", 10, "Training epochs of every variant.")
_TRAIN_EXAMPLES = flags.DEFINE_integer("train_examples", None, "Use the first N training examples.")
_NUM_EXAMPLES = flags.DEFINE_integer("num_examples", 10_000, "Test images attacked per variant.")
_HOLDOUT_EXAMPLES = flags.DEFINE_integer(
    "holdout_examples",
    0,
    "With --train_examples: attack the candidate recipes on this many held-out training "
    "images (those after the first --train_examples) and select the best one.",
)
_CURVE_EXAMPLES = flags.DEFINE_integer(
    "curve_examples",
    None,
    "Test images scoring pgd_at after each epoch (default --num_examples; 0 skips).",
)
_ATTACKS = flags.DEFINE_list(
    "attacks", list(reproduce.DEFAULT_ATTACKS), "Attacks or presets of apps.evaluate."
)
_EPS = flags.DEFINE_list(
    "eps",
    [str(e) for e in reproduce.DEFAULT_EPS_VALUES],
    "Radii of the sweep; the first is the table's.",
)
_PGD_STEPS = flags.DEFINE_integer(
    "pgd_steps", reproduce.DEFAULT_SETTINGS.pgd_steps, "Steps of PGD-type attacks."
)
_RESTARTS = flags.DEFINE_integer(
    "restarts", reproduce.DEFAULT_SETTINGS.restarts, "Restarts of PGD-type attacks."
)
_SQUARE_QUERIES = flags.DEFINE_integer(
    "square_queries", reproduce.DEFAULT_SETTINGS.square_queries, "Square Attack queries."
)
_SEED = flags.DEFINE_integer("seed", 0, "Training and attack seed.")
_RUNS_DIR = flags.DEFINE_string("runs_dir", "runs/reproduce", "One run directory per variant.")
_OUTPUT_DIR = flags.DEFINE_string("output_dir", "results", "Where the table and figures go.")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "Local dataset directory.")
_TRAIN_ONLY = flags.DEFINE_bool("train_only", False, "Train the variants, attack nothing.")
_TEST_UNSELECTED = flags.DEFINE_bool(
    "test_unselected",
    False,
    "With --holdout_examples: attack every candidate recipe on the test set, not only the "
    "selected one and the paper's recipe.",
)
_TIMING_STEPS = flags.DEFINE_integer(
    "timing_steps", 20, "Steps per variant and repeat of the round-robin step timing."
)
_TIMING_REPEATS = flags.DEFINE_integer(
    "timing_repeats", 5, "Repeats of the round-robin step timing (the median is kept)."
)
_SELECTION_ATTACKS = flags.DEFINE_list(
    "selection_attacks",
    None,
    "Attacks of the held-out recipe selection (default: --attacks), e.g. a cheaper screen.",
)
_SELECT_ONLY = flags.DEFINE_bool(
    "select_only",
    False,
    "With --holdout_examples: stop after the held-out selection; attack nothing on the test set.",
)
_HEADLINE_EXAMPLES = flags.DEFINE_integer(
    "headline_examples",
    0,
    "Also attack the selected recipe and pgd_at with each --headline_attacks cascade on this "
    "many test images (e.g. 10000), resuming from finished batches (0: none).",
)
_HEADLINE_ATTACKS = flags.DEFINE_list(
    "headline_attacks",
    list(reproduce.HEADLINE_ATTACKS),
    "Presets or attacks of apps.evaluate run on the --headline_examples images, each as its own "
    "cascade on its own settings (e.g. autoattack,strong).",
)
_MIXED_PRECISION = flags.DEFINE_enum(
    "mixed_precision", "auto", list(precision.POLICIES), "Training dtype policy."
)


def _chosen_variants():
    """The `--variants` of `--dataset`'s comparison, all of them by default."""
    known = {v.name: v for v in reproduce.VARIANTS[_DATASET.value]}
    names = _VARIANTS.value or list(known)
    unknown = [n for n in names if n not in known]
    if unknown:
        raise app.UsageError(f"Unknown variants {unknown}. Valid: {', '.join(known)}.")
    return [known[n] for n in names]


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
    logging.set_verbosity(logging.WARNING)
    tf.get_logger().setLevel("ERROR")
    policy = precision.set_policy(_MIXED_PRECISION.value)
    # The attacks run in float32, not TensorFloat-32 (NVIDIA GPUs since Ampere).
    tf.config.experimental.enable_tensor_float_32_execution(False)
    variants = _chosen_variants()
    try:
        eps_values = [float(e) for e in _EPS.value]
        config = reproduce.ComparisonConfig(
            dataset=_DATASET.value,
            epochs=_EPOCHS.value,
            runs_dir=_RUNS_DIR.value,
            output_dir=_OUTPUT_DIR.value,
            num_examples=_NUM_EXAMPLES.value,
            attacks=_ATTACKS.value,
            eps_values=eps_values,
            settings=dataclasses.replace(
                reproduce.DEFAULT_SETTINGS,
                pgd_steps=_PGD_STEPS.value,
                restarts=_RESTARTS.value,
                square_queries=_SQUARE_QUERIES.value,
                seed=_SEED.value,
            ),
            data_dir=_DATA_DIR.value,
            seed=_SEED.value,
            policy=policy,
            train_examples=_TRAIN_EXAMPLES.value,
            holdout_examples=_HOLDOUT_EXAMPLES.value,
            curve_examples=_CURVE_EXAMPLES.value,
            train_only=_TRAIN_ONLY.value,
            test_unselected=_TEST_UNSELECTED.value,
            timing_steps=_TIMING_STEPS.value,
            timing_repeats=_TIMING_REPEATS.value,
            selection_attacks=_SELECTION_ATTACKS.value,
            select_only=_SELECT_ONLY.value,
            headline_examples=_HEADLINE_EXAMPLES.value,
            headline_attacks=_HEADLINE_ATTACKS.value,
            command=" ".join(["python -m apps.reproduce", *sys.argv[1:]]),
        )
        payload = reproduce.run(variants, config)
    except (ValueError, data.DataError, training.TrainingError) as e:
        raise SystemExit(f"Error: {e}") from None
    if payload is None:
        print(f"Trained {', '.join(v.name for v in variants)} in {_RUNS_DIR.value}.")
        return
    print(f"Wrote {os.path.join(_OUTPUT_DIR.value, payload['dataset'])}.json/.md and figures.")


if __name__ == "__main__":
    app.run(main)
