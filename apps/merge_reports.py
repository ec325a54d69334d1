r"""Merges the reports of shards of one evaluation into one report, or
combines evaluations of the same images into their per-image worst case.

Usage:
  python -m apps.merge_reports --reports=shard0.json,shard1.json \
      --output=results/merged.json
  python -m apps.merge_reports --reports='results/shard*.json' --output=results/merged.json
  python -m apps.merge_reports --combine --reports=merged.json,transfer.json \
      --output=results/combined.json

Each shard is an apps.evaluate run on consecutive images of one split
(--split=test[0:2500] --num_examples=0, then test[2500:5000], ...) with the
same model, attacks, eps, settings and seed. The merged report is the one a
single run over all their images would have written: accuracies from the
summed counts, one worst case, robust indices in the merged range, masking
checks on the merged numbers (failing where any shard failed). Shards that
cannot be merged (another model file, settings, overlapping or missing
images) are refused with the files named. Writes the JSON report and
<stem>_sweep.png at --output and prints the table.

--combine takes reports of the same model and images from separate
evaluations (other attacks, e.g. a transfer attack run after a merged
cascade) and writes the worst case per image over all of them: an image
counts as robust only if every report lists it as robust. It covers the
images every report covers, and names the images each report alone broke.
"""

import glob
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app  # noqa: E402
from absl import flags  # noqa: E402
from absl import logging  # noqa: E402

from sq_keras import evaluation  # noqa: E402

_REPORTS = flags.DEFINE_list(
    "reports", None, "Shard reports: comma list of JSON files or glob patterns (quote them)."
)
_OUTPUT = flags.DEFINE_string("output", None, "Path of the merged JSON report.")
_LOGDIR = flags.DEFINE_string("logdir", None, "Write TensorBoard summaries here.")
_COMBINE = flags.DEFINE_bool(
    "combine",
    False,
    "The reports evaluate the same images with other attacks: write the worst case per "
    "image over all of them instead of merging shards.",
)


def _report_paths(patterns):
    """The files of `patterns` (each a path or glob), sorted, without repeats."""
    paths = []
    for pattern in patterns:
        found = sorted(glob.glob(pattern)) if glob.has_magic(pattern) else [pattern]
        if not found:
            raise SystemExit(f"Error: --reports pattern {pattern!r} matches no file.")
        paths += [p for p in found if p not in paths]
    return paths


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
    if not _REPORTS.value or not _OUTPUT.value:
        raise SystemExit(
            "Error: give --reports=a.json,b.json (or a glob) and --output=merged.json."
        )
    paths = _report_paths(_REPORTS.value)
    if os.path.abspath(_OUTPUT.value) in map(os.path.abspath, paths):
        raise SystemExit(f"Error: --output {_OUTPUT.value} is one of the shards: pick another.")
    if _COMBINE.value:
        _combine(paths)
        return
    try:
        report = evaluation.merge_report_files(paths)
    except (ValueError, OSError) as e:
        raise SystemExit(f"Error: {e}") from None
    written = evaluation.write_report(report, _OUTPUT.value, logdir=_LOGDIR.value)
    print(evaluation.format_table(report))
    for name, message in evaluation.failed_checks(report):
        logging.warning("Masking check %s failed: %s", name, message)
    print(
        f"Merged {len(paths)} reports ({report.num_examples} examples): {written['files']['json']}"
    )


def _combine(paths):
    """Writes and prints the per-image worst case over the reports at `paths`."""
    try:
        combined = evaluation.combine_report_files(paths)
    except (ValueError, OSError) as e:
        raise SystemExit(f"Error: {e}") from None
    evaluation.write_combined(combined, _OUTPUT.value)
    for entry in combined["evaluations"]:
        attacks = len(entry["attacks"])
        print(
            f"{entry['report']}: worst case {entry['worst_case_accuracy']:.2f}% "
            f"({attacks} attack{'' if attacks == 1 else 's'}), broke "
            f"{len(entry['breaks_alone'])} image(s) no other report broke"
        )
    print(
        f"Per image over {len(paths)} reports, {combined['split']} "
        f"({combined['num_examples']} examples): worst case "
        f"{combined['worst_case_accuracy']:.2f}% -> {_OUTPUT.value}"
    )


if __name__ == "__main__":
    app.run(main)
